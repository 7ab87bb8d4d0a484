// Which shard (parameter-server task) holds an id: stable across processes,
// restarts and machines, and independent of the cuckoo index's own hashes.
#ifndef MONOLITH_TF_CC_TABLE_SHARDING_H_
#define MONOLITH_TF_CC_TABLE_SHARDING_H_

#include <cstdint>

#include "cc/table/hashing.h"

namespace monolith {

// Salt of the shard hash: a different permutation of the ids than the index's
// bucket hashes (seeded elsewhere), so the ids of one shard still spread over
// all of its table's buckets.
constexpr uint64_t kShardSalt = 0x6a09e667f3bcc909ULL;

// shard = floor(Mix64(id ^ kShardSalt) * num_shards / 2^64): uniform for any
// num_shards (no modulo bias), in [0, num_shards). Documented in the README;
// changing it would move every row of every sharded checkpoint.
inline int32_t ShardOf(int64_t id, int32_t num_shards) {
  const uint64_t h = Mix64(static_cast<uint64_t>(id) ^ kShardSalt);
  return static_cast<int32_t>((static_cast<unsigned __int128>(h) * num_shards) >> 64);
}

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_SHARDING_H_
