// Integer mixing shared by the cuckoo index and the keyed initializers.
#ifndef MONOLITH_TF_CC_TABLE_HASHING_H_
#define MONOLITH_TF_CC_TABLE_HASHING_H_

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

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_HASHING_H_
