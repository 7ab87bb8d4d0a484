// Large buffers mapped straight from the kernel, 2 MiB-aligned and advised to
// use transparent huge pages: random probes into hundreds of MB of table
// would otherwise miss the TLB on nearly every access. Freed buffers go back
// to the kernel at once (malloc would keep them in its heap and inflate RSS).
#ifndef MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_
#define MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_

#include <cstddef>
#include <memory>

namespace monolith {

// Maps `bytes` of zeroed memory, 2 MiB-aligned when at least that large.
// Pages are committed on first touch. Throws std::bad_alloc on failure.
void* MapHugePageBuffer(size_t bytes);
void UnmapHugePageBuffer(void* p, size_t bytes);

struct HugePageUnmap {
  size_t bytes = 0;
  void operator()(void* p) const { UnmapHugePageBuffer(p, bytes); }
};

template <typename T>
using HugePageArray = std::unique_ptr<T[], HugePageUnmap>;

template <typename T>
HugePageArray<T> MakeHugePageArray(size_t count) {
  const size_t bytes = count * sizeof(T);
  return HugePageArray<T>(static_cast<T*>(MapHugePageBuffer(bytes)), HugePageUnmap{bytes});
}

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_
