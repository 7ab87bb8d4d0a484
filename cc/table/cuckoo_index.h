// Cuckoo hash index from int64 keys to 32-bit entry ids.
//
// The top bits of the first hash split the keys into partitions: each is a
// contiguous range of the bucket array with its own stash, so threads that
// own disjoint partitions can insert at once without atomics. Within its
// partition, the low bits of two hash functions pick two buckets of
// kSlotsPerBucket slots; a bucket is one 64-byte cache line. A key that finds
// both buckets full displaces a resident to that resident's other bucket, and
// so on for a bounded number of kicks; a key still homeless goes to its
// partition's small overflow stash. The index
// grows (every partition doubles) when the load factor passes kMaxLoadFactor
// or the stashes fill at a high load, and re-seeds its hashes when they fill
// at a low load (keys crafted to collide). Distinct keys therefore never
// share a slot and an insert never fails.
//
// Not thread-safe, except inserts by partition (below): the owner
// (EmbeddingTable) serializes writers.
#ifndef MONOLITH_TF_CC_TABLE_CUCKOO_INDEX_H_
#define MONOLITH_TF_CC_TABLE_CUCKOO_INDEX_H_

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cc/table/hashing.h"
#include "cc/table/huge_pages.h"

namespace monolith {

class CuckooIndex {
 public:
  static constexpr int kSlotsPerBucket = 5;
  static constexpr uint32_t kNoEntry = 0xffffffffu;
  static constexpr double kMaxLoadFactor = 0.85;
  // 16 partitions: enough for the threads of one table's batch on a large
  // machine, few enough that a small table's minimum (4 buckets each) stays
  // at 4 KiB.
  static constexpr int kDefaultPartitionBits = 4;

  // `capacity_hint` keys fit without growing. `seed` picks the hash functions.
  // The index has 2^partition_bits partitions.
  CuckooIndex(size_t capacity_hint, uint64_t seed,
              int partition_bits = kDefaultPartitionBits);

  // Entry id of `key`, or kNoEntry.
  uint32_t Find(int64_t key) const {
    const uint64_t h1 = Hash1(key);
    const size_t p = PartitionOfHash(h1);
    const uint64_t base = p << bucket_bits_;
    uint32_t id = FindInBucket(buckets_[base | (h1 & mask_)], key);
    if (id != kNoEntry) return id;
    id = FindInBucket(buckets_[base | (Hash2(key) & mask_)], key);
    const auto& stash = partitions_[p].stash;
    if (id != kNoEntry || stash.empty()) return id;
    auto it = stash.find(key);
    return it == stash.end() ? kNoEntry : it->second;
  }

  // Brings both candidate buckets of `key` towards the cache.
  void Prefetch(int64_t key) const {
    const uint64_t h1 = Hash1(key);
    const Bucket* base = buckets_.data() + (PartitionOfHash(h1) << bucket_bits_);
    PrefetchLine(base + (h1 & mask_));
    PrefetchLine(base + (Hash2(key) & mask_));
  }

  // Maps `key` (which must be absent) to `id`, growing the index if needed.
  void Insert(int64_t key, uint32_t id);

  // The partition of `key`. Both candidate buckets of a key, and its stash
  // slot, lie in its partition, and kicks move keys only within one.
  size_t PartitionOf(int64_t key) const { return PartitionOfHash(Hash1(key)); }
  size_t num_partitions() const { return partitions_.size(); }

  // --- inserts by partition ---
  // FindOrInsert, FindOrInsertWithoutKicks and PrefetchMoveTargets touch only
  // the partition of their key and never grow the index, so threads may call
  // them at once for keys of disjoint partitions. The caller reserves room
  // first (Reserve(size() + keys to come)) and calls RebuildIfStashFull()
  // once they are done.

  // Returns the id of `key`; when absent, maps it to make_id() first and sets
  // *inserted. One pass over the two buckets serves both the probe and the
  // placement.
  template <typename MakeId>
  uint32_t FindOrInsert(int64_t key, MakeId&& make_id, bool* inserted) {
    return FindOrPlace</*kMayKick=*/true>(key, make_id, inserted);
  }

  // Like FindOrInsert, but an absent key that has no free slot in its two
  // buckets is left for a later FindOrInsert: returns kNoEntry with *inserted
  // false, calling no make_id. A batch of inserts places those keys in a
  // second pass, which prefetches where their kicks go (PrefetchMoveTargets)
  // instead of waiting a memory latency for each.
  template <typename MakeId>
  uint32_t FindOrInsertWithoutKicks(int64_t key, MakeId&& make_id, bool* inserted) {
    return FindOrPlace</*kMayKick=*/false>(key, make_id, inserted);
  }

  // For a key about to be inserted by kicking: prefetches the other buckets
  // of the residents of its first bucket, where the kick will look for room.
  // Only reads, so it stays a safe hint if the buckets change meanwhile.
  void PrefetchMoveTargets(int64_t key) const {
    uint64_t targets[kSlotsPerBucket];
    FindMoveTargets(FirstBucket(key), targets);
  }

  // Grows or re-seeds if the stashes overflowed (Insert calls it; inserts by
  // partition leave it to their caller).
  void RebuildIfStashFull();

  // Removes `key`; returns its entry id or kNoEntry when absent.
  uint32_t Erase(int64_t key);

  // Grows the index (same seeds) so it holds `capacity_hint` keys without
  // growing again; a no-op when it already does.
  void Reserve(size_t capacity_hint);

  size_t size() const;
  size_t num_buckets() const { return buckets_.size(); }
  size_t stash_size() const;
  size_t memory_bytes() const;
  double load_factor() const {
    return static_cast<double>(size()) / (buckets_.size() * kSlotsPerBucket);
  }

  // The two candidate buckets of `key` for the current size, numbered across
  // partitions (for tests that craft colliding keys).
  std::pair<uint64_t, uint64_t> CandidateBuckets(int64_t key) const {
    const Candidates c = CandidatesOf(key);
    return {c.first, c.second};
  }

  // Calls f(key, id) for every key in buckets [begin, end); a partition's
  // stash belongs to its last bucket, so ranges that tile [0, num_buckets())
  // visit each key exactly once.
  template <typename F>
  void ForEachInRange(size_t begin, size_t end, F&& f) const {
    for (size_t b = begin; b < end && b < buckets_.size(); ++b) {
      const Bucket& bucket = buckets_[b];
      for (int s = 0; s < kSlotsPerBucket; ++s) {
        if (bucket.ids[s] != kNoEntry) f(bucket.keys[s], bucket.ids[s]);
      }
      if ((b & mask_) == mask_) {
        for (const auto& kv : partitions_[b >> bucket_bits_].stash) f(kv.first, kv.second);
      }
    }
  }

  // Removes every key.
  void Clear();

 private:
  struct alignas(64) Bucket {
    int64_t keys[kSlotsPerBucket];
    uint32_t ids[kSlotsPerBucket];
    uint32_t padding;
  };
  static_assert(sizeof(Bucket) == 64, "a bucket must be one cache line");

  // What a partition owns besides its buckets, on a cache line of its own so
  // threads inserting into different partitions do not share lines.
  struct alignas(64) Partition {
    size_t size = 0;
    uint64_t rng_state = 0;  // picks kick victims
    std::unordered_map<int64_t, uint32_t> stash;
  };

  // Fixed-size array of empty buckets on huge pages.
  class BucketArray {
   public:
    BucketArray() = default;
    explicit BucketArray(size_t n) : data_(MakeHugePageArray<Bucket>(n)), size_(n) {
      for (size_t b = 0; b < n; ++b) {
        for (int s = 0; s < kSlotsPerBucket; ++s) {
          data_[b].keys[s] = 0;
          data_[b].ids[s] = kNoEntry;
        }
        data_[b].padding = 0;
      }
    }
    Bucket& operator[](size_t i) { return data_[i]; }
    const Bucket& operator[](size_t i) const { return data_[i]; }
    size_t size() const { return size_; }
    const Bucket* data() const { return data_.get(); }
    Bucket* begin() { return data_.get(); }
    Bucket* end() { return data_.get() + size_; }
    void swap(BucketArray& other) {
      data_.swap(other.data_);
      std::swap(size_, other.size_);
    }

   private:
    HugePageArray<Bucket> data_;
    size_t size_ = 0;
  };

  // Bit s set where slot s of `bucket` is empty (EmptySlots) or holds `key`
  // (SlotsHolding). Branch-free for inserts: which slots are free is random,
  // and each mispredicted branch would flush the pipeline and with it the
  // prefetches the insert loop keeps in flight (the loop ran 1.45x faster).
  // Find keeps its early exit: most keys sit in their first bucket.
  static unsigned EmptySlots(const Bucket& bucket) {
    unsigned mask = 0;
    for (int s = 0; s < kSlotsPerBucket; ++s) mask |= unsigned{bucket.ids[s] == kNoEntry} << s;
    return mask;
  }
  static unsigned SlotsHolding(const Bucket& bucket, int64_t key) {
    unsigned mask = 0;
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      mask |= unsigned{bucket.keys[s] == key} << s;
    }
    return mask & ~EmptySlots(bucket);
  }

  template <bool kMayKick, typename MakeId>
  uint32_t FindOrPlace(int64_t key, MakeId& make_id, bool* inserted) {
    *inserted = false;
    const uint64_t h1 = Hash1(key);
    const size_t p = PartitionOfHash(h1);
    const uint64_t base = p << bucket_bits_;
    Bucket& first = buckets_[base | (h1 & mask_)];
    Bucket& second = buckets_[base | (Hash2(key) & mask_)];
    if (const unsigned held = SlotsHolding(first, key)) return first.ids[__builtin_ctz(held)];
    if (const unsigned held = SlotsHolding(second, key)) return second.ids[__builtin_ctz(held)];
    const unsigned empty_first = EmptySlots(first), empty_second = EmptySlots(second);
    Partition& partition = partitions_[p];
    if (!partition.stash.empty()) {
      auto it = partition.stash.find(key);
      if (it != partition.stash.end()) return it->second;
    }
    const bool needs_kicks = (empty_first | empty_second) == 0;
    if (!kMayKick && needs_kicks) return kNoEntry;
    const uint32_t id = make_id();
    *inserted = true;
    ++partition.size;
    if (needs_kicks) {
      PlaceWithKicks(key, id);
      return id;
    }
    Bucket& target = empty_first != 0 ? first : second;
    const int slot = __builtin_ctz(empty_first != 0 ? empty_first : empty_second);
    target.keys[slot] = key;
    target.ids[slot] = id;
    return id;
  }

  static uint32_t FindInBucket(const Bucket& bucket, int64_t key) {
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.keys[s] == key && bucket.ids[s] != kNoEntry) return bucket.ids[s];
    }
    return kNoEntry;
  }
  static bool PlaceInBucket(Bucket& bucket, int64_t key, uint32_t id);
  // Sets targets[s] to the other bucket of the resident of slot s of bucket
  // `home` (where a kick would move it) and prefetches those buckets.
  void FindMoveTargets(uint64_t home, uint64_t targets[kSlotsPerBucket]) const {
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      targets[s] = OtherBucket(buckets_[home].keys[s], home);
      PrefetchLine(&buckets_[targets[s]]);
    }
  }
  // Buckets are numbered across partitions: partition p holds buckets
  // [p << bucket_bits_, (p + 1) << bucket_bits_), and a key's candidates are
  // the low bits of its two hashes within its partition.
  // Each hash is computed once per key.
  struct Candidates {
    size_t partition;
    uint64_t first, second;
  };
  Candidates CandidatesOf(int64_t key) const {
    const uint64_t h1 = Hash1(key);
    const size_t p = PartitionOfHash(h1);
    const uint64_t base = p << bucket_bits_;
    return {p, base | (h1 & mask_), base | (Hash2(key) & mask_)};
  }
  uint64_t FirstBucket(int64_t key) const {
    const uint64_t h1 = Hash1(key);
    return (PartitionOfHash(h1) << bucket_bits_) | (h1 & mask_);
  }
  // The candidate bucket of `key` that is not `bucket` (both in one partition).
  uint64_t OtherBucket(int64_t key, uint64_t bucket) const {
    const uint64_t base = bucket & ~mask_;
    const uint64_t first = base | (Hash1(key) & mask_);
    return first == bucket ? base | (Hash2(key) & mask_) : first;
  }

  uint64_t Hash1(int64_t key) const {
    return Mix64(static_cast<uint64_t>(key) ^ seed1_);
  }
  // The top partition_bits_ of the first hash: bits its bucket (the low
  // bits) never uses.
  size_t PartitionOfHash(uint64_t h1) const {
    return static_cast<size_t>(h1 >> 1 >> (63 - partition_bits_));
  }
  uint64_t Hash2(int64_t key) const {
    // Rotate so the two bucket choices use different bits of the mix.
    const uint64_t h = Mix64(static_cast<uint64_t>(key) ^ seed2_);
    return (h >> 32) | (h << 32);
  }
  static uint64_t NextRandom(uint64_t* state);
  bool NeedsGrowth() const {
    return size() + 1 > kMaxLoadFactor * buckets_.size() * kSlotsPerBucket;
  }

  // Places (key, id), counted already, in its partition without growing;
  // returns false if it went to the stash.
  bool PlaceWithKicks(int64_t key, uint32_t id);
  // Re-places every key into a new array of 2^bucket_bits buckets per
  // partition, re-seeding the hashes first when asked.
  void Rebuild(int bucket_bits, bool new_seeds);
  // Doubles every partition with the same hashes, streaming through them.
  void Grow();

  int partition_bits_;
  int bucket_bits_ = 0;  // log2 of the buckets per partition
  uint64_t mask_ = 0;    // buckets per partition - 1
  BucketArray buckets_;
  std::vector<Partition> partitions_;
  uint64_t seed1_, seed2_;
  uint64_t rng_state_;  // re-seeds
  size_t stash_limit_;
};

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_CUCKOO_INDEX_H_
