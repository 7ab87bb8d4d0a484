#include "cc/table/cuckoo_index.h"

#include <algorithm>

namespace monolith {
namespace {

constexpr int kMaxKicks = 256;
constexpr size_t kMinStashLimit = 16;
constexpr size_t kMinBuckets = 4;

size_t BucketsFor(size_t keys) {
  const size_t wanted =
      static_cast<size_t>(keys / (CuckooIndex::kMaxLoadFactor *
                                  CuckooIndex::kSlotsPerBucket)) + 1;
  size_t n = kMinBuckets;
  while (n < wanted) n <<= 1;
  return n;
}

}  // namespace

CuckooIndex::CuckooIndex(size_t capacity_hint, uint64_t seed)
    : seed1_(Mix64(seed ^ 0x5bd1e9955bd1e995ULL)),
      seed2_(Mix64(seed ^ 0xc2b2ae3d27d4eb4fULL)),
      rng_state_(Mix64(seed + 1)),
      stash_limit_(kMinStashLimit) {
  BucketArray(BucketsFor(capacity_hint)).swap(buckets_);
  mask_ = buckets_.size() - 1;
}

uint64_t CuckooIndex::NextRandom() {
  rng_state_ += 0x9e3779b97f4a7c15ULL;
  return Mix64(rng_state_);
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
  const uint64_t b1 = Hash1(key) & mask_, b2 = Hash2(key) & mask_;
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
  uint64_t bucket = (NextRandom() & 1) ? b1 : b2;
  for (int kick = 0; kick < kMaxKicks; ++kick) {
    const int slot = static_cast<int>(NextRandom() % kSlotsPerBucket);
    Bucket& victim_bucket = buckets_[bucket];
    std::swap(key, victim_bucket.keys[slot]);
    std::swap(id, victim_bucket.ids[slot]);
    const uint64_t other = OtherBucket(key, bucket);
    if (PlaceInBucket(buckets_[other], key, id)) return true;
    bucket = other;
  }
  stash_.emplace(key, id);
  return false;
}

void CuckooIndex::Insert(int64_t key, uint32_t id) {
  if (NeedsGrowth()) Grow();
  ++size_;
  if (!PlaceWithKicks(key, id)) MaybeRebuildAfterStash();
}

void CuckooIndex::MaybeRebuildAfterStash() {
  if (stash_.size() <= stash_limit_) return;
  // A full stash at a healthy load means the table is too small; at a low
  // load it means keys collide under these hashes, so pick new ones instead
  // of doubling memory for a handful of keys.
  if (load_factor() >= 0.5) {
    Grow();
  } else {
    Rebuild(buckets_.size(), /*new_seeds=*/true);
  }
  // Keys that still collide stay in the stash; raise the limit so a hostile
  // key stream costs one rebuild per doubling of the stash, not one per key.
  stash_limit_ = std::max(kMinStashLimit, 2 * stash_.size());
}

uint32_t CuckooIndex::Erase(int64_t key) {
  for (uint64_t b : {Hash1(key) & mask_, Hash2(key) & mask_}) {
    Bucket& bucket = buckets_[b];
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.keys[s] == key && bucket.ids[s] != kNoEntry) {
        const uint32_t id = bucket.ids[s];
        bucket.ids[s] = kNoEntry;
        --size_;
        return id;
      }
    }
  }
  auto it = stash_.find(key);
  if (it == stash_.end()) return kNoEntry;
  const uint32_t id = it->second;
  stash_.erase(it);
  --size_;
  return id;
}

void CuckooIndex::Rebuild(size_t num_buckets, bool new_seeds) {
  std::vector<std::pair<int64_t, uint32_t>> stashed(stash_.begin(), stash_.end());
  BucketArray old(num_buckets);  // allocated first: a failure changes nothing
  old.swap(buckets_);
  stash_.clear();
  if (new_seeds) {
    seed1_ = Mix64(seed1_ + NextRandom());
    seed2_ = Mix64(seed2_ + NextRandom());
  }
  mask_ = num_buckets - 1;
  for (const Bucket& bucket : old) {
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.ids[s] != kNoEntry) PlaceWithKicks(bucket.keys[s], bucket.ids[s]);
    }
  }
  for (const auto& kv : stashed) PlaceWithKicks(kv.first, kv.second);
}

void CuckooIndex::Grow() {
  // Bucket numbers are the low bits of a hash, so a key resident in bucket b
  // under hash h moves to h & new_mask, which is b or b + old_size. At most
  // kSlotsPerBucket keys come from b, so each lands without a kick and the
  // rebuild is two sequential streams instead of random probes.
  const size_t old_size = buckets_.size();
  BucketArray grown(2 * old_size);
  const uint64_t new_mask = 2 * old_size - 1;
  for (size_t b = 0; b < old_size; ++b) {
    const Bucket& bucket = buckets_[b];
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.ids[s] == kNoEntry) continue;
      const int64_t key = bucket.keys[s];
      const uint64_t h1 = Hash1(key);
      const uint64_t h = ((h1 & mask_) == b) ? h1 : Hash2(key);
      PlaceInBucket(grown[h & new_mask], key, bucket.ids[s]);
    }
  }
  buckets_.swap(grown);
  mask_ = new_mask;
  // Stashed keys may fit now that there is room.
  std::vector<std::pair<int64_t, uint32_t>> stashed(stash_.begin(), stash_.end());
  stash_.clear();
  for (const auto& kv : stashed) PlaceWithKicks(kv.first, kv.second);
}

void CuckooIndex::Reserve(size_t capacity_hint) {
  const size_t wanted = BucketsFor(capacity_hint);
  while (buckets_.size() < wanted) Grow();
}

void CuckooIndex::Clear() {
  for (Bucket& bucket : buckets_) {
    std::fill(std::begin(bucket.ids), std::end(bucket.ids), kNoEntry);
  }
  stash_.clear();
  stash_limit_ = kMinStashLimit;
  size_ = 0;
}

size_t CuckooIndex::memory_bytes() const {
  // unordered_map node: key, value, next pointer, cached hash, plus a bucket.
  return buckets_.size() * sizeof(Bucket) +
         stash_.size() * (sizeof(int64_t) + sizeof(uint32_t) + 3 * sizeof(void*));
}

}  // namespace monolith
