// Cuckoo hash index from int64 keys to 32-bit entry ids.
//
// Keys are split into partitions by the top bits of their first hash, as in
// extendible hashing: a directory of 2^depth slots names the partition of
// each prefix, and a partition of local depth d owns the slots that share
// its d-bit prefix. Each partition is a bucket array of its own with its own
// stash, so threads that own disjoint partitions can insert at once without
// atomics. Within a partition, the low bits of two hash functions pick two
// buckets of kSlotsPerBucket slots; a bucket is one 64-byte cache line. A
// key that finds both buckets full displaces a resident to that resident's
// other bucket, and so on for a bounded number of kicks; a key still
// homeless goes to its partition's small overflow stash.
//
// Growth is one partition at a time, so its pause is one partition's, not
// the table's: a partition past its load threshold doubles its buckets, up
// to kMaxPartitionBucketBits, and beyond that splits in two by the next bit
// of the first hash (doubling the directory, a pointer copy, when its depth
// is the directory's). Keys keep their bucket number in both steps, so each
// is a sequential stream without kicks. Thresholds are spread between
// kMinGrowLoad and kMaxLoadFactor across partitions, so the partitions of a
// uniformly filled table do not all grow in one batch. The index re-seeds
// its hashes when the stashes fill at a low load (keys crafted to collide).
// Distinct keys therefore never share a slot and an insert never fails.
//
// Not thread-safe, except inserts by partition (below): the owner
// (EmbeddingTable) serializes writers.
#ifndef MONOLITH_TF_CC_TABLE_CUCKOO_INDEX_H_
#define MONOLITH_TF_CC_TABLE_CUCKOO_INDEX_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
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
  // No partition is ever fuller than this; each grows at a load of its own
  // between kMinGrowLoad and kMaxLoadFactor.
  static constexpr double kMaxLoadFactor = 0.85;
  static constexpr double kMinGrowLoad = 0.70;
  // A partition doubles up to 2^15 buckets (2 MiB: one huge page, so
  // lookups in a large table miss the TLB as rarely as in one big array;
  // about 140,000 keys), then splits: the longest growth pause re-places
  // that many keys.
  static constexpr int kMaxPartitionBucketBits = 15;
  // 16 partitions to start: enough for the threads of one table's batch on
  // a large machine, few enough that a small table's minimum (4 buckets
  // each) stays at 4 KiB.
  static constexpr int kDefaultPartitionBits = 4;

  // `capacity_hint` keys fit without growing. `seed` picks the hash functions.
  // The index starts with at least 2^partition_bits partitions.
  CuckooIndex(size_t capacity_hint, uint64_t seed,
              int partition_bits = kDefaultPartitionBits);

  // Entry id of `key`, or kNoEntry.
  uint32_t Find(int64_t key) const {
    const uint64_t h1 = Hash1(key);
    const size_t slot = SlotOfHash(h1);
    const Route route = routes_[slot];
    uint32_t id = FindInBucket(route.buckets[h1 & route.mask], key);
    if (id != kNoEntry) return id;
    id = FindInBucket(route.buckets[Hash2(key) & route.mask], key);
    if (id != kNoEntry) return id;
    const Partition& partition = *partitions_[directory_[slot]];
    if (partition.stash.empty()) return kNoEntry;
    auto it = partition.stash.find(key);
    return it == partition.stash.end() ? kNoEntry : it->second;
  }

  // Brings both candidate buckets of `key` towards the cache.
  void Prefetch(int64_t key) const {
    const uint64_t h1 = Hash1(key);
    const Route route = routes_[SlotOfHash(h1)];
    PrefetchLine(route.buckets + (h1 & route.mask));
    PrefetchLine(route.buckets + (Hash2(key) & route.mask));
  }

  // Maps `key` (which must be absent) to `id`, growing its partition if needed.
  void Insert(int64_t key, uint32_t id);

  // The partition of `key`, in [0, num_partitions()). Both candidate
  // buckets of a key, and its stash slot, lie in its partition, and kicks
  // move keys only within one. Growth may split partitions: a number is
  // valid until the next growth.
  size_t PartitionOf(int64_t key) const { return directory_[SlotOfHash(Hash1(key))]; }
  size_t num_partitions() const { return partitions_.size(); }

  // --- inserts by partition ---
  // FindOrInsert, FindOrInsertWithoutKicks and PrefetchMoveTargets touch only
  // the partition of their key and never grow the index, so threads may call
  // them at once for keys of disjoint partitions. The caller makes room
  // first (ReserveFor the keys to come, or Reserve) and calls
  // RebuildIfStashFull() once they are done.

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
    const uint64_t h1 = Hash1(key);
    const Partition& partition = *partitions_[directory_[SlotOfHash(h1)]];
    uint64_t targets[kSlotsPerBucket];
    FindMoveTargets(partition, h1 & partition.mask, targets);
  }

  // Grows the partitions whose stash overflowed, or re-seeds if the stashes
  // overflowed at a low load (Insert calls it; inserts by partition leave it
  // to their caller).
  void RebuildIfStashFull();

  // Removes `key`; returns its entry id or kNoEntry when absent.
  uint32_t Erase(int64_t key);

  // Makes ready the bucket arrays that the next growths take, so a growth
  // (under the owner's exclusive lock) does not map and touch fresh memory:
  // that was most of a split's time (a huge-page fault can stall on
  // compaction). The 2 MiB arrays of splits and of doublings to full size,
  // once a partition is near it; while partitions are small, a slab.
  // Thread-safe, and meant to run outside the owner's lock, e.g. before a
  // batch of inserts.
  void PrepareSpareArrays();

  // Grows (same seeds) so that `capacity_hint` keys fit without growing
  // again; a no-op when they already do. Every partition grows, so this is
  // for bulk loads; a batch of inserts uses ReserveFor.
  void Reserve(size_t capacity_hint);

  // Grows only the partitions that the `count` keys key_at(0..count-1)
  // (absent ones, or an upper bound of them) would push past their load
  // threshold, until all of them fit; returns true then. With
  // `max_growths`, stops after that many partition growths and returns
  // false if more are needed: a caller that holds its lock only for a few
  // growths at a time, so readers get in between, calls it again.
  // Whether the `count` keys key_at(0..count-1) fit with no growth. Only
  // reads, so a writer can ask under its owner's shared lock and take the
  // exclusive one only to grow.
  template <typename KeyAt>
  bool FitsWithoutGrowth(size_t count, KeyAt&& key_at) const {
    std::vector<size_t> incoming(partitions_.size(), 0);
    for (size_t j = 0; j < count; ++j) ++incoming[PartitionOf(key_at(j))];
    for (size_t p = 0; p < partitions_.size(); ++p) {
      if (incoming[p] != 0 && !Fits(*partitions_[p], incoming[p])) return false;
    }
    return true;
  }

  template <typename KeyAt>
  bool ReserveFor(size_t count, KeyAt&& key_at,
                  size_t max_growths = std::numeric_limits<size_t>::max()) {
    std::vector<size_t> incoming;
    size_t growths = 0;
    bool done = true;
    for (bool split = true; split && done;) {
      // A split moves keys between partitions: count again. Doubling does
      // not, so a partition doubles until its keys fit.
      split = false;
      incoming.assign(partitions_.size(), 0);
      for (size_t j = 0; j < count; ++j) ++incoming[PartitionOf(key_at(j))];
      const size_t partitions = partitions_.size();  // splits append partitions
      for (size_t p = 0; p < partitions && done; ++p) {
        while (incoming[p] != 0 && !Fits(*partitions_[p], incoming[p])) {
          if (growths == max_growths) {
            done = false;
            break;
          }
          ++growths;
          if (GrowPartition(p, /*number_buckets=*/false)) {
            split = true;
            break;
          }
        }
      }
    }
    if (growths != 0) NumberBuckets();
    return done;
  }

  size_t size() const;
  size_t num_buckets() const { return num_buckets_; }
  size_t stash_size() const;
  size_t memory_bytes() const;
  double load_factor() const {
    return static_cast<double>(size()) / (num_buckets_ * kSlotsPerBucket);
  }
  // log2 of the directory's slots.
  int directory_depth() const { return depth_; }
  // Partition growths (doublings and splits) so far, re-seeds not counted.
  size_t growths() const { return growths_; }

  // The two candidate buckets of `key`, numbered across partitions in
  // partition order (for tests that craft colliding keys). Valid until the
  // next growth.
  std::pair<uint64_t, uint64_t> CandidateBuckets(int64_t key) const {
    const uint64_t h1 = Hash1(key);
    const Partition& partition = *partitions_[directory_[SlotOfHash(h1)]];
    return {partition.first_bucket + (h1 & partition.mask),
            partition.first_bucket + (Hash2(key) & partition.mask)};
  }

  // Calls f(key, id) for every key in buckets [begin, end) (numbered as in
  // CandidateBuckets); a partition's stash belongs to its last bucket, so
  // ranges that tile [0, num_buckets()) visit each key exactly once.
  template <typename F>
  void ForEachInRange(size_t begin, size_t end, F&& f) const {
    end = std::min(end, num_buckets_);
    if (begin >= end) return;
    // The partition holding bucket `begin`: the last one starting at or before it.
    size_t p = static_cast<size_t>(
        std::upper_bound(first_buckets_.begin(), first_buckets_.end(), begin) -
        first_buckets_.begin() - 1);
    for (size_t b = begin; b < end;) {
      const Partition& partition = *partitions_[p];
      const size_t last = partition.first_bucket + partition.buckets.size();
      for (; b < end && b < last; ++b) {
        const Bucket& bucket = partition.buckets[b - partition.first_bucket];
        for (int s = 0; s < kSlotsPerBucket; ++s) {
          if (bucket.ids[s] != kNoEntry) f(bucket.keys[s], bucket.ids[s]);
        }
        if (b + 1 == last) {
          for (const auto& kv : partition.stash) f(kv.first, kv.second);
        }
      }
      ++p;
    }
  }

  // Removes every key (the partitions keep their size).
  void Clear();

 private:
  struct alignas(64) Bucket {
    int64_t keys[kSlotsPerBucket];
    uint32_t ids[kSlotsPerBucket];
    uint32_t padding;
  };
  static_assert(sizeof(Bucket) == 64, "a bucket must be one cache line");
  static_assert((size_t{1} << kMaxPartitionBucketBits) * sizeof(Bucket) >=
                    HugePageSlabs::kSlabBytes,
                "full-size partitions (and spare arrays) map their own huge pages");

  // Fixed-size array of empty buckets on huge pages: its own mapping at 2 MiB
  // and above, a share of a slab below.
  class BucketArray {
   public:
    BucketArray() = default;
    // `slabs` (which must outlive the array) serves arrays under 2 MiB.
    BucketArray(size_t n, HugePageSlabs* slabs) : size_(n) {
      const size_t bytes = n * sizeof(Bucket);
      if (bytes < HugePageSlabs::kSlabBytes) {
        data_ = static_cast<Bucket*>(slabs->Allocate(bytes));
        slabs_ = slabs;
      } else {
        data_ = static_cast<Bucket*>(MapHugePageBuffer(bytes));
      }
      for (size_t b = 0; b < n; ++b) {
        for (int s = 0; s < kSlotsPerBucket; ++s) {
          data_[b].keys[s] = 0;
          data_[b].ids[s] = kNoEntry;
        }
        data_[b].padding = 0;
      }
    }
    BucketArray(BucketArray&& other) noexcept { swap(other); }
    BucketArray& operator=(BucketArray&& other) noexcept {
      BucketArray taken(std::move(other));
      swap(taken);
      return *this;
    }
    BucketArray(const BucketArray&) = delete;
    BucketArray& operator=(const BucketArray&) = delete;
    ~BucketArray() {
      if (data_ == nullptr) return;
      if (slabs_ != nullptr) {
        slabs_->Release(data_, size_ * sizeof(Bucket));
      } else {
        UnmapHugePageBuffer(data_, size_ * sizeof(Bucket));
      }
    }
    Bucket& operator[](size_t i) { return data_[i]; }
    const Bucket& operator[](size_t i) const { return data_[i]; }
    size_t size() const { return size_; }
    const Bucket* data() const { return data_; }
    Bucket* data() { return data_; }
    Bucket* begin() { return data_; }
    Bucket* end() { return data_ + size_; }
    void swap(BucketArray& other) noexcept {
      std::swap(data_, other.data_);
      std::swap(size_, other.size_);
      std::swap(slabs_, other.slabs_);
    }

   private:
    Bucket* data_ = nullptr;
    size_t size_ = 0;
    HugePageSlabs* slabs_ = nullptr;  // where data_ came from, or its own mapping
  };

  // One partition: its buckets, stash and counters, on cache lines of its
  // own so threads inserting into different partitions do not share lines.
  struct alignas(64) Partition {
    BucketArray buckets;
    uint64_t mask = 0;         // buckets - 1
    int bucket_bits = 0;
    int depth = 0;             // local depth: the prefix bits it owns
    uint64_t prefix = 0;       // those bits of the first hash
    size_t size = 0;
    double grow_at = kMaxLoadFactor;  // load at which it grows
    size_t first_bucket = 0;   // global number of its bucket 0
    uint64_t rng_state = 0;    // picks kick victims
    std::unordered_map<int64_t, uint32_t> stash;
  };

  // Where a directory slot's keys live: its partition's buckets and mask,
  // kept beside the directory so a lookup reaches its buckets without
  // loading the partition (one dependent load fewer).
  struct Route {
    const Bucket* buckets;
    uint64_t mask;
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
    Partition& partition = *partitions_[directory_[SlotOfHash(h1)]];
    Bucket& first = partition.buckets[h1 & partition.mask];
    Bucket& second = partition.buckets[Hash2(key) & partition.mask];
    if (const unsigned held = SlotsHolding(first, key)) return first.ids[__builtin_ctz(held)];
    if (const unsigned held = SlotsHolding(second, key)) return second.ids[__builtin_ctz(held)];
    const unsigned empty_first = EmptySlots(first), empty_second = EmptySlots(second);
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
      PlaceWithKicks(partition, key, id);
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
  // `home` of `partition` (where a kick would move it) and prefetches those
  // buckets.
  void FindMoveTargets(const Partition& partition, uint64_t home,
                       uint64_t targets[kSlotsPerBucket]) const {
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      targets[s] = OtherBucket(partition, partition.buckets[home].keys[s], home);
      PrefetchLine(&partition.buckets[targets[s]]);
    }
  }
  // The candidate bucket of `key` in `partition` that is not `bucket`.
  uint64_t OtherBucket(const Partition& partition, int64_t key, uint64_t bucket) const {
    const uint64_t first = Hash1(key) & partition.mask;
    return first == bucket ? Hash2(key) & partition.mask : first;
  }

  uint64_t Hash1(int64_t key) const {
    return Mix64(static_cast<uint64_t>(key) ^ seed1_);
  }
  // The directory slot of a first hash: its top depth_ bits (the bucket
  // within a partition uses the low bits).
  size_t SlotOfHash(uint64_t h1) const {
    return static_cast<size_t>(h1 >> 1 >> (63 - depth_));
  }
  uint64_t Hash2(int64_t key) const {
    // Rotate so the two bucket choices use different bits of the mix.
    const uint64_t h = Mix64(static_cast<uint64_t>(key) ^ seed2_);
    return (h >> 32) | (h << 32);
  }
  static uint64_t NextRandom(uint64_t* state);
  // Whether `incoming` more keys fit `partition` under its threshold.
  static bool Fits(const Partition& partition, size_t incoming) {
    return static_cast<double>(partition.size + incoming) <=
           partition.grow_at * static_cast<double>(partition.buckets.size() * kSlotsPerBucket);
  }

  // Places (key, id), counted already, in its partition without growing;
  // returns false if it went to the stash.
  bool PlaceWithKicks(Partition& partition, int64_t key, uint32_t id);
  // A new partition of 2^bucket_bits empty buckets owning `prefix` of
  // `depth` bits, with a growth threshold of its own.
  std::unique_ptr<Partition> NewPartition(int bucket_bits, int depth, uint64_t prefix);
  // Doubles partition p's buckets, or splits it when they are at
  // kMaxPartitionBucketBits (returns whether it split); then numbers the
  // buckets again unless told not to (a caller growing many partitions
  // numbers them once).
  bool GrowPartition(size_t p, bool number_buckets = true);
  // Insert without the stash check; returns false if the key was stashed.
  bool InsertWithoutRebuild(int64_t key, uint32_t id);
  void DoublePartition(Partition& partition);
  void SplitPartition(size_t p);
  // Re-places stashed keys of `partition` (after it gained room).
  void Restash(Partition& partition);
  // Lays out 2^depth partitions of 2^bucket_bits buckets each, empty.
  void Layout(int depth, int bucket_bits);
  // Numbers the buckets across partitions (first_bucket, num_buckets_) in
  // partition order, after a growth.
  void NumberBuckets();
  // Points the routes of partition p's directory slots at its buckets.
  void RoutePartition(size_t p);
  // Re-places every key under new hash seeds (crafted collisions).
  void Reseed();

  // A bucket array of 2^bucket_bits buckets: a spare when one is ready.
  BucketArray TakeArray(int bucket_bits);

  // Bucket arrays under 2 MiB (partitions of a small table) share huge
  // pages. Declared before every BucketArray member, so it outlives them.
  HugePageSlabs slabs_;
  static constexpr size_t kSpareArrays = 4;
  mutable std::mutex spares_mutex_;
  std::vector<BucketArray> spares_;     // guarded by spares_mutex_
  // A partition is one doubling from full size: growths take 2 MiB arrays.
  std::atomic<bool> full_size_near_{false};

  int depth_ = 0;                   // log2 of the directory's slots
  std::vector<uint32_t> directory_;  // slot -> partition
  std::vector<Route> routes_;        // slot -> its partition's buckets
  std::vector<std::unique_ptr<Partition>> partitions_;
  std::vector<size_t> first_buckets_;  // first_bucket of each partition
  size_t num_buckets_ = 0;
  size_t growths_ = 0;
  uint64_t seed1_, seed2_;
  uint64_t rng_state_;  // re-seeds and thresholds
  size_t stash_limit_;
};

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_CUCKOO_INDEX_H_
