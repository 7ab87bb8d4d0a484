// Integer mixing shared by the cuckoo index and the keyed initializers, and
// the cache prefetch hints of the table's batch loops.
#ifndef MONOLITH_TF_CC_TABLE_HASHING_H_
#define MONOLITH_TF_CC_TABLE_HASHING_H_

#include <cstddef>
#include <cstdint>

namespace monolith {

// SplitMix64 finalizer: a bijection on 64-bit integers with full avalanche.
inline uint64_t Mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// Asks for the cache line at `p`. On x86-64 this is inline asm because GCC 12
// at -O3 drops __builtin_prefetch of some computed addresses (seen on the
// bucket probes, which then stalled on every miss).
inline void PrefetchLine(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetcht0 %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p);
#endif
}

// Asks for the cache line at `p` with intent to write it.
inline void PrefetchLineForWrite(const void* p) {
#if defined(__x86_64__)
  asm volatile("prefetchw %0" : : "m"(*static_cast<const char*>(p)));
#else
  __builtin_prefetch(p, 1);
#endif
}

// Brings every cache line of [p, p + bytes) towards the cache, writable
// when `for_write`.
inline void PrefetchSpan(const void* p, size_t bytes, bool for_write = false) {
  const uintptr_t first = reinterpret_cast<uintptr_t>(p) & ~uintptr_t{63};
  const uintptr_t last = reinterpret_cast<uintptr_t>(p) + bytes;
  for (uintptr_t line = first; line < last; line += 64) {
    const void* address = reinterpret_cast<const void*>(line);
    if (for_write) {
      PrefetchLineForWrite(address);
    } else {
      PrefetchLine(address);
    }
  }
}

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_HASHING_H_
