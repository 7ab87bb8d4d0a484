#include "cc/table/cuckoo_index.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace monolith {
namespace {

constexpr int kMaxKicks = 256;
constexpr size_t kMinStashLimit = 16;
constexpr int kMinBucketBits = 2;  // 4 buckets per partition

// log2 of the buckets per partition that hold `keys` under the load bound.
int BucketBitsFor(size_t keys, int partition_bits) {
  const size_t wanted =
      static_cast<size_t>(keys / (CuckooIndex::kMaxLoadFactor *
                                  CuckooIndex::kSlotsPerBucket)) + 1;
  int bits = kMinBucketBits;
  while ((size_t{1} << (bits + partition_bits)) < wanted) ++bits;
  return bits;
}

}  // namespace

CuckooIndex::CuckooIndex(size_t capacity_hint, uint64_t seed, int partition_bits)
    : partition_bits_(partition_bits),
      seed1_(Mix64(seed ^ 0x5bd1e9955bd1e995ULL)),
      seed2_(Mix64(seed ^ 0xc2b2ae3d27d4eb4fULL)),
      rng_state_(Mix64(seed + 1)),
      stash_limit_(kMinStashLimit) {
  if (partition_bits < 0 || partition_bits > 16) {
    throw std::invalid_argument("partition_bits must be in [0, 16], got " +
                                std::to_string(partition_bits));
  }
  partitions_.resize(size_t{1} << partition_bits);
  for (size_t p = 0; p < partitions_.size(); ++p) {
    partitions_[p].rng_state = Mix64(seed + 2 + p);
  }
  bucket_bits_ = BucketBitsFor(capacity_hint, partition_bits);
  mask_ = (uint64_t{1} << bucket_bits_) - 1;
  BucketArray(partitions_.size() << bucket_bits_).swap(buckets_);
}

uint64_t CuckooIndex::NextRandom(uint64_t* state) {
  *state += 0x9e3779b97f4a7c15ULL;
  return Mix64(*state);
}

size_t CuckooIndex::size() const {
  size_t total = 0;
  for (const Partition& partition : partitions_) total += partition.size;
  return total;
}

size_t CuckooIndex::stash_size() const {
  size_t total = 0;
  for (const Partition& partition : partitions_) total += partition.stash.size();
  return total;
}

bool CuckooIndex::PlaceInBucket(Bucket& bucket, int64_t key, uint32_t id) {
  for (int s = 0; s < kSlotsPerBucket; ++s) {
    if (bucket.ids[s] == kNoEntry) {
      bucket.keys[s] = key;
      bucket.ids[s] = id;
      return true;
    }
  }
  return false;
}

bool CuckooIndex::PlaceWithKicks(int64_t key, uint32_t id) {
  const Candidates candidates = CandidatesOf(key);
  const uint64_t b1 = candidates.first, b2 = candidates.second;
  if (PlaceInBucket(buckets_[b1], key, id) || PlaceInBucket(buckets_[b2], key, id)) {
    return true;
  }
  // Both are full. First try to move one of their ten residents to its other
  // bucket: those buckets are fetched together, so this costs about one
  // memory latency, where each step of the random walk below costs one.
  const uint64_t homes[2] = {b1, b2};
  uint64_t others[2][kSlotsPerBucket];
  for (int h = 0; h < 2; ++h) FindMoveTargets(homes[h], others[h]);
  for (int h = 0; h < 2; ++h) {
    Bucket& home = buckets_[homes[h]];
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (PlaceInBucket(buckets_[others[h][s]], home.keys[s], home.ids[s])) {
        home.keys[s] = key;
        home.ids[s] = id;
        return true;
      }
    }
  }
  // Random walk: evict a random resident and move it to its other bucket.
  // Every bucket on the walk is in the key's partition.
  Partition& partition = partitions_[candidates.partition];
  uint64_t bucket = (NextRandom(&partition.rng_state) & 1) ? b1 : b2;
  for (int kick = 0; kick < kMaxKicks; ++kick) {
    const int slot = static_cast<int>(NextRandom(&partition.rng_state) % kSlotsPerBucket);
    Bucket& victim_bucket = buckets_[bucket];
    std::swap(key, victim_bucket.keys[slot]);
    std::swap(id, victim_bucket.ids[slot]);
    const uint64_t other = OtherBucket(key, bucket);
    if (PlaceInBucket(buckets_[other], key, id)) return true;
    bucket = other;
  }
  partition.stash.emplace(key, id);
  return false;
}

void CuckooIndex::Insert(int64_t key, uint32_t id) {
  if (NeedsGrowth()) Grow();
  ++partitions_[PartitionOf(key)].size;
  if (!PlaceWithKicks(key, id)) RebuildIfStashFull();
}

void CuckooIndex::RebuildIfStashFull() {
  const size_t stashed = stash_size();
  if (stashed <= stash_limit_) return;
  // A full stash at a healthy load means the table is too small; at a low
  // load it means keys collide under these hashes, so pick new ones instead
  // of doubling memory for a handful of keys.
  if (load_factor() >= 0.5) {
    Grow();
  } else {
    Rebuild(bucket_bits_, /*new_seeds=*/true);
  }
  // Keys that still collide stay in the stash; raise the limit so a hostile
  // key stream costs one rebuild per doubling of the stash, not one per key.
  stash_limit_ = std::max(kMinStashLimit, 2 * stash_size());
}

uint32_t CuckooIndex::Erase(int64_t key) {
  const Candidates candidates = CandidatesOf(key);
  Partition& partition = partitions_[candidates.partition];
  for (uint64_t b : {candidates.first, candidates.second}) {
    Bucket& bucket = buckets_[b];
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.keys[s] == key && bucket.ids[s] != kNoEntry) {
        const uint32_t id = bucket.ids[s];
        bucket.ids[s] = kNoEntry;
        --partition.size;
        return id;
      }
    }
  }
  auto it = partition.stash.find(key);
  if (it == partition.stash.end()) return kNoEntry;
  const uint32_t id = it->second;
  partition.stash.erase(it);
  --partition.size;
  return id;
}

void CuckooIndex::Rebuild(int bucket_bits, bool new_seeds) {
  std::vector<std::pair<int64_t, uint32_t>> stashed;
  for (const Partition& partition : partitions_) {
    stashed.insert(stashed.end(), partition.stash.begin(), partition.stash.end());
  }
  BucketArray old(partitions_.size() << bucket_bits);  // first: a failure changes nothing
  old.swap(buckets_);
  for (Partition& partition : partitions_) partition.stash.clear();
  if (new_seeds) {
    seed1_ = Mix64(seed1_ + NextRandom(&rng_state_));
    seed2_ = Mix64(seed2_ + NextRandom(&rng_state_));
    for (Partition& partition : partitions_) partition.size = 0;
  }
  bucket_bits_ = bucket_bits;
  mask_ = (uint64_t{1} << bucket_bits) - 1;
  // Keys may change partition under new seeds: count them again.
  auto place = [&](int64_t key, uint32_t id) {
    if (new_seeds) ++partitions_[PartitionOf(key)].size;
    PlaceWithKicks(key, id);
  };
  for (const Bucket& bucket : old) {
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.ids[s] != kNoEntry) place(bucket.keys[s], bucket.ids[s]);
    }
  }
  for (const auto& kv : stashed) place(kv.first, kv.second);
}

void CuckooIndex::Grow() {
  // Bucket numbers within a partition are the low bits of a hash, so a key
  // resident in bucket b of its partition under hash h moves to bucket
  // h & new_mask of the doubled partition, which is b or b + old size. At
  // most kSlotsPerBucket keys come from b, so each lands without a kick and
  // the rebuild is two sequential streams instead of random probes.
  BucketArray grown(2 * buckets_.size());
  const int grown_bits = bucket_bits_ + 1;
  const uint64_t grown_mask = 2 * mask_ + 1;
  for (size_t b = 0; b < buckets_.size(); ++b) {
    const Bucket& bucket = buckets_[b];
    const uint64_t grown_base = (b >> bucket_bits_) << grown_bits;
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.ids[s] == kNoEntry) continue;
      const int64_t key = bucket.keys[s];
      const uint64_t h1 = Hash1(key);
      const uint64_t h = ((h1 & mask_) == (b & mask_)) ? h1 : Hash2(key);
      PlaceInBucket(grown[grown_base | (h & grown_mask)], key, bucket.ids[s]);
    }
  }
  buckets_.swap(grown);
  bucket_bits_ = grown_bits;
  mask_ = grown_mask;
  // Stashed keys may fit now that there is room.
  for (Partition& partition : partitions_) {
    std::vector<std::pair<int64_t, uint32_t>> stashed(partition.stash.begin(),
                                                      partition.stash.end());
    partition.stash.clear();
    for (const auto& kv : stashed) PlaceWithKicks(kv.first, kv.second);
  }
}

void CuckooIndex::Reserve(size_t capacity_hint) {
  const int wanted = BucketBitsFor(capacity_hint, partition_bits_);
  while (bucket_bits_ < wanted) Grow();
}

void CuckooIndex::Clear() {
  for (Bucket& bucket : buckets_) {
    std::fill(std::begin(bucket.ids), std::end(bucket.ids), kNoEntry);
  }
  for (Partition& partition : partitions_) {
    partition.stash.clear();
    partition.size = 0;
  }
  stash_limit_ = kMinStashLimit;
}

size_t CuckooIndex::memory_bytes() const {
  // unordered_map node: key, value, next pointer, cached hash, plus a bucket.
  return buckets_.size() * sizeof(Bucket) + partitions_.size() * sizeof(Partition) +
         stash_size() * (sizeof(int64_t) + sizeof(uint32_t) + 3 * sizeof(void*));
}

}  // namespace monolith
