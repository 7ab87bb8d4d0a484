// Large buffers mapped straight from the kernel, 2 MiB-aligned and advised to
// use transparent huge pages: random probes into hundreds of MB of table
// would otherwise miss the TLB on nearly every access. Freed buffers go back
// to the kernel at once (malloc would keep them in its heap and inflate RSS).
#ifndef MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_
#define MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_

#include <cstddef>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

namespace monolith {

// Maps `bytes` of zeroed memory, 2 MiB-aligned when at least that large.
// Pages are committed on first touch. Throws std::bad_alloc on failure.
void* MapHugePageBuffer(size_t bytes);
void UnmapHugePageBuffer(void* p, size_t bytes);

// Commits the pages of fresh (still zero) memory [data, data + bytes) by
// writing a zero to each, so later writes there take no page faults.
void CommitPages(void* data, size_t bytes);

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

// Buffers smaller than a huge page, carved from shared 2 MiB huge-page
// slabs. Mapped one by one they would get 4 KiB pages: one fault per page
// when filled, and TLB misses on every random probe once a few MiB of them
// are in use (an index of many small partitions). Sizes are powers of two,
// each placed at a multiple of its size; a slab goes back to the kernel
// when its last buffer is released. Memory handed out is not zeroed.
// Not thread-safe: the owner serializes calls.
class HugePageSlabs {
 public:
  static constexpr size_t kSlabBytes = size_t{2} << 20;

  HugePageSlabs() = default;
  HugePageSlabs(const HugePageSlabs&) = delete;
  HugePageSlabs& operator=(const HugePageSlabs&) = delete;
  ~HugePageSlabs();

  // `bytes` is a power of two of at most kSlabBytes / 2. Throws
  // std::bad_alloc when no slab can be mapped.
  void* Allocate(size_t bytes);
  // `p` and `bytes` as returned and asked by Allocate.
  void Release(void* p, size_t bytes);
  // Maps and commits the slab that the next Allocate opening one takes, so
  // that Allocate, under the owner's lock, does not wait for fresh pages.
  // Thread-safe (the one call that is); a no-op until the slab being carved
  // is half used (a small table keeps to one slab), or while one is ready.
  void PrepareSpare();
  // Bytes of slabs mapped (for memory accounting), the spare included.
  size_t mapped_bytes() const;

 private:
  struct Slab {
    char* base;
    size_t next;  // first byte never handed out
    size_t live;  // bytes handed out and not released
  };
  std::vector<Slab> slabs_;  // the last one is carved from
  // Bytes carved from the last slab (0 while there is none).
  std::atomic<size_t> carved_{0};
  mutable std::mutex spare_mutex_;
  char* spare_ = nullptr;  // guarded by spare_mutex_
};

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_HUGE_PAGES_H_
