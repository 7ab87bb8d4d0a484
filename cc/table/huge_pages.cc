#include "cc/table/huge_pages.h"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace monolith {
namespace {
constexpr size_t kHugePageBytes = size_t{2} << 20;
}  // namespace

void* AllocateHugePageBuffer(size_t bytes) {
  if (bytes == 0) bytes = 1;
  void* p = nullptr;
  const size_t alignment = bytes >= kHugePageBytes ? kHugePageBytes : 64;
  if (posix_memalign(&p, alignment, bytes) != 0) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
  if (bytes >= kHugePageBytes) {
    // Advice only: without THP the buffer still works with small pages.
    madvise(p, bytes & ~(kHugePageBytes - 1), MADV_HUGEPAGE);
  }
#endif
  return p;
}

void HugePageFree::operator()(void* p) const { std::free(p); }

}  // namespace monolith
