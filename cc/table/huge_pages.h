// Large zero-initialized-on-demand buffers backed by transparent huge pages
// where the kernel allows: random probes into hundreds of MB of table would
// otherwise miss the TLB on nearly every access.
#ifndef MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_
#define MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_

#include <cstddef>
#include <memory>

namespace monolith {

struct HugePageFree {
  void operator()(void* p) const;
};

// Allocates `bytes` aligned to 2 MiB and asks for huge pages. Pages are
// committed on first touch, so untouched tails cost no memory. Throws
// std::bad_alloc on failure.
void* AllocateHugePageBuffer(size_t bytes);

template <typename T>
using HugePageArray = std::unique_ptr<T[], HugePageFree>;

template <typename T>
HugePageArray<T> MakeHugePageArray(size_t count) {
  return HugePageArray<T>(static_cast<T*>(AllocateHugePageBuffer(count * sizeof(T))));
}

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_
