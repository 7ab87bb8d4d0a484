#include "cc/table/cuckoo_index.h"

#include <algorithm>
#include <stdexcept>
#include <string>

namespace monolith {
namespace {

constexpr int kMaxKicks = 256;
constexpr size_t kMinStashLimit = 16;
constexpr int kMinBucketBits = 2;  // 4 buckets per partition
constexpr int kMaxDepth = 24;      // 16M directory slots: far beyond 2^32 entry ids

// log2 of the buckets per partition that hold `keys` spread over
// 2^partition_bits partitions, each at its lowest threshold; may exceed
// kMaxPartitionBucketBits (the caller then adds partitions).
int BucketBitsFor(size_t keys, int partition_bits) {
  const size_t wanted =
      static_cast<size_t>(keys / (CuckooIndex::kMinGrowLoad * CuckooIndex::kSlotsPerBucket)) +
      1;
  int bits = kMinBucketBits;
  while ((size_t{1} << (bits + partition_bits)) < wanted) ++bits;
  return bits;
}

}  // namespace

CuckooIndex::CuckooIndex(size_t capacity_hint, uint64_t seed, int partition_bits)
    : seed1_(Mix64(seed ^ 0x5bd1e9955bd1e995ULL)),
      seed2_(Mix64(seed ^ 0xc2b2ae3d27d4eb4fULL)),
      rng_state_(Mix64(seed + 1)),
      stash_limit_(kMinStashLimit) {
  if (partition_bits < 0 || partition_bits > 16) {
    throw std::invalid_argument("partition_bits must be in [0, 16], got " +
                                std::to_string(partition_bits));
  }
  // Enough partitions that none starts above the split size.
  int depth = partition_bits;
  int bucket_bits = BucketBitsFor(capacity_hint, depth);
  while (bucket_bits > kMaxPartitionBucketBits && depth < kMaxDepth) {
    ++depth;
    bucket_bits = BucketBitsFor(capacity_hint, depth);
  }
  Layout(depth, bucket_bits);
}

uint64_t CuckooIndex::NextRandom(uint64_t* state) {
  *state += 0x9e3779b97f4a7c15ULL;
  return Mix64(*state);
}

std::unique_ptr<CuckooIndex::Partition> CuckooIndex::NewPartition(int bucket_bits, int depth,
                                                                  uint64_t prefix) {
  auto partition = std::make_unique<Partition>();
  TakeArray(bucket_bits).swap(partition->buckets);
  partition->bucket_bits = bucket_bits;
  partition->mask = (uint64_t{1} << bucket_bits) - 1;
  partition->depth = depth;
  partition->prefix = prefix;
  partition->rng_state = NextRandom(&rng_state_);
  // Thresholds spread evenly (in the 53 high bits of a random number) over
  // [kMinGrowLoad, kMaxLoadFactor].
  const double unit = static_cast<double>(NextRandom(&rng_state_) >> 11) / 9007199254740992.0;
  partition->grow_at = kMinGrowLoad + (kMaxLoadFactor - kMinGrowLoad) * unit;
  return partition;
}

CuckooIndex::BucketArray CuckooIndex::TakeArray(int bucket_bits) {
  if (bucket_bits == kMaxPartitionBucketBits) {
    std::lock_guard<std::mutex> lock(spares_mutex_);
    if (!spares_.empty()) {
      BucketArray array = std::move(spares_.back());
      spares_.pop_back();
      return array;
    }
  }
  return BucketArray(size_t{1} << bucket_bits, &slabs_);
}

void CuckooIndex::PrepareSpareArrays() {
  slabs_.PrepareSpare();
  if (!full_size_near_.load(std::memory_order_relaxed)) return;
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(spares_mutex_);
      if (spares_.size() >= kSpareArrays) return;
    }
    // Mapped and touched outside the mutex: a split taking a spare meanwhile
    // does not wait for it.
    // A 2 MiB array maps its own pages: no slabs_, which only writers use.
    BucketArray array(size_t{1} << kMaxPartitionBucketBits, /*slabs=*/nullptr);
    std::lock_guard<std::mutex> lock(spares_mutex_);
    if (spares_.size() >= kSpareArrays) return;
    spares_.push_back(std::move(array));
  }
}

void CuckooIndex::Layout(int depth, int bucket_bits) {
  std::vector<std::unique_ptr<Partition>> partitions;
  partitions.reserve(size_t{1} << depth);
  for (size_t p = 0; p < (size_t{1} << depth); ++p) {
    partitions.push_back(NewPartition(bucket_bits, depth, p));
  }
  std::vector<uint32_t> directory(size_t{1} << depth);
  for (size_t slot = 0; slot < directory.size(); ++slot) directory[slot] = uint32_t(slot);
  std::vector<Route> routes(directory.size());
  // Built aside first: a failed allocation leaves the index as it was.
  partitions_.swap(partitions);
  directory_.swap(directory);
  routes_.swap(routes);
  depth_ = depth;
  for (size_t p = 0; p < partitions_.size(); ++p) RoutePartition(p);
  NumberBuckets();
  if (bucket_bits + 1 >= kMaxPartitionBucketBits) {
    full_size_near_.store(true, std::memory_order_relaxed);
  }
}

void CuckooIndex::RoutePartition(size_t p) {
  const Partition& partition = *partitions_[p];
  const int below = depth_ - partition.depth;  // slot bits below its prefix
  const size_t first = static_cast<size_t>(partition.prefix) << below;
  for (size_t slot = first; slot < first + (size_t{1} << below); ++slot) {
    routes_[slot] = Route{partition.buckets.data(), partition.mask};
  }
}

void CuckooIndex::NumberBuckets() {
  first_buckets_.resize(partitions_.size());
  size_t next = 0;
  for (size_t p = 0; p < partitions_.size(); ++p) {
    partitions_[p]->first_bucket = next;
    first_buckets_[p] = next;
    next += partitions_[p]->buckets.size();
  }
  num_buckets_ = next;
}

size_t CuckooIndex::size() const {
  size_t total = 0;
  for (const auto& partition : partitions_) total += partition->size;
  return total;
}

size_t CuckooIndex::stash_size() const {
  size_t total = 0;
  for (const auto& partition : partitions_) total += partition->stash.size();
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

bool CuckooIndex::PlaceWithKicks(Partition& partition, int64_t key, uint32_t id) {
  const uint64_t b1 = Hash1(key) & partition.mask, b2 = Hash2(key) & partition.mask;
  Bucket* buckets = partition.buckets.data();
  if (PlaceInBucket(buckets[b1], key, id) || PlaceInBucket(buckets[b2], key, id)) return true;
  // Both are full. First try to move one of their ten residents to its other
  // bucket: those buckets are fetched together, so this costs about one
  // memory latency, where each step of the random walk below costs one.
  const uint64_t homes[2] = {b1, b2};
  uint64_t others[2][kSlotsPerBucket];
  for (int h = 0; h < 2; ++h) FindMoveTargets(partition, homes[h], others[h]);
  for (int h = 0; h < 2; ++h) {
    Bucket& home = buckets[homes[h]];
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (PlaceInBucket(buckets[others[h][s]], home.keys[s], home.ids[s])) {
        home.keys[s] = key;
        home.ids[s] = id;
        return true;
      }
    }
  }
  // Random walk: evict a random resident and move it to its other bucket.
  uint64_t bucket = (NextRandom(&partition.rng_state) & 1) ? b1 : b2;
  for (int kick = 0; kick < kMaxKicks; ++kick) {
    const int slot = static_cast<int>(NextRandom(&partition.rng_state) % kSlotsPerBucket);
    Bucket& victim_bucket = buckets[bucket];
    std::swap(key, victim_bucket.keys[slot]);
    std::swap(id, victim_bucket.ids[slot]);
    const uint64_t other = OtherBucket(partition, key, bucket);
    if (PlaceInBucket(buckets[other], key, id)) return true;
    bucket = other;
  }
  partition.stash.emplace(key, id);
  return false;
}

bool CuckooIndex::InsertWithoutRebuild(int64_t key, uint32_t id) {
  size_t p = PartitionOf(key);
  while (!Fits(*partitions_[p], 1)) {
    GrowPartition(p);
    p = PartitionOf(key);  // a split may have moved it
  }
  Partition& partition = *partitions_[p];
  ++partition.size;
  return PlaceWithKicks(partition, key, id);
}

void CuckooIndex::Insert(int64_t key, uint32_t id) {
  if (!InsertWithoutRebuild(key, id)) RebuildIfStashFull();
}

void CuckooIndex::RebuildIfStashFull() {
  const size_t stashed = stash_size();
  if (stashed <= stash_limit_) return;
  // A full stash at a healthy load means partitions are too small: grow
  // those with stashed keys. At a low load it means keys collide under these
  // hashes, so pick new ones instead of doubling memory for a handful of keys.
  if (load_factor() >= 0.5) {
    const size_t partitions = partitions_.size();
    for (size_t p = 0; p < partitions; ++p) {
      if (!partitions_[p]->stash.empty()) GrowPartition(p, /*number_buckets=*/false);
    }
    NumberBuckets();
  } else {
    Reseed();
  }
  // Keys that still collide stay in the stash; raise the limit so a hostile
  // key stream costs one rebuild per doubling of the stash, not one per key.
  stash_limit_ = std::max(kMinStashLimit, 2 * stash_size());
}

uint32_t CuckooIndex::Erase(int64_t key) {
  const uint64_t h1 = Hash1(key);
  Partition& partition = *partitions_[directory_[SlotOfHash(h1)]];
  for (uint64_t b : {h1 & partition.mask, Hash2(key) & partition.mask}) {
    Bucket& bucket = partition.buckets[b];
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

void CuckooIndex::Restash(Partition& partition) {
  std::vector<std::pair<int64_t, uint32_t>> stashed(partition.stash.begin(),
                                                    partition.stash.end());
  partition.stash.clear();
  for (const auto& kv : stashed) {
    Partition& home = *partitions_[PartitionOf(kv.first)];
    PlaceWithKicks(home, kv.first, kv.second);
  }
}

bool CuckooIndex::GrowPartition(size_t p, bool number_buckets) {
  ++growths_;
  const bool split = partitions_[p]->bucket_bits >= kMaxPartitionBucketBits &&
                     partitions_[p]->depth < kMaxDepth;
  if (split) {
    SplitPartition(p);
  } else {
    DoublePartition(*partitions_[p]);
    RoutePartition(p);
  }
  if (number_buckets) NumberBuckets();
  return split;
}

void CuckooIndex::DoublePartition(Partition& partition) {
  // Bucket numbers are the low bits of a hash, so a key resident in bucket b
  // under hash h moves to bucket h & new_mask of the doubled partition, which
  // is b or b + old size. At most kSlotsPerBucket keys come from b, so each
  // lands without a kick: two sequential streams instead of random probes.
  BucketArray grown = TakeArray(partition.bucket_bits + 1);
  const uint64_t mask = partition.mask, grown_mask = 2 * mask + 1;
  for (size_t b = 0; b < partition.buckets.size(); ++b) {
    const Bucket& bucket = partition.buckets[b];
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.ids[s] == kNoEntry) continue;
      const int64_t key = bucket.keys[s];
      const uint64_t h1 = Hash1(key);
      const uint64_t h = (h1 & mask) == b ? h1 : Hash2(key);
      PlaceInBucket(grown[h & grown_mask], key, bucket.ids[s]);
    }
  }
  partition.buckets.swap(grown);
  partition.mask = grown_mask;
  ++partition.bucket_bits;
  if (partition.bucket_bits + 1 >= kMaxPartitionBucketBits) {
    full_size_near_.store(true, std::memory_order_relaxed);
  }
  Restash(partition);  // stashed keys may fit now that there is room
}

void CuckooIndex::SplitPartition(size_t p) {
  Partition& old = *partitions_[p];
  if (old.depth == depth_) {
    // Double the directory: each slot becomes two with the same partition.
    std::vector<uint32_t> directory(2 * directory_.size());
    std::vector<Route> routes(2 * routes_.size());
    for (size_t slot = 0; slot < directory.size(); ++slot) {
      directory[slot] = directory_[slot >> 1];
      routes[slot] = routes_[slot >> 1];
    }
    directory_.swap(directory);
    routes_.swap(routes);
    ++depth_;
  }
  // The keys whose next prefix bit is 1 move to a new partition, to the same
  // bucket number (same bucket bits): a stream without kicks, and the old
  // partition keeps its array.
  const int depth = old.depth + 1;
  auto moved = NewPartition(old.bucket_bits, depth, (old.prefix << 1) | 1);
  const int shift = 63 - old.depth;  // the next bit below the old prefix
  for (size_t b = 0; b < old.buckets.size(); ++b) {
    Bucket& bucket = old.buckets[b];
    for (int s = 0; s < kSlotsPerBucket; ++s) {
      if (bucket.ids[s] == kNoEntry || ((Hash1(bucket.keys[s]) >> shift) & 1) == 0) continue;
      PlaceInBucket(moved->buckets[b], bucket.keys[s], bucket.ids[s]);
      bucket.ids[s] = kNoEntry;
      --old.size;
      ++moved->size;
    }
  }
  old.depth = depth;
  old.prefix <<= 1;
  const size_t q = partitions_.size();
  // Point the slots of the new prefix at the new partition.
  const int below = depth_ - depth;  // slot bits below the partition's prefix
  const size_t first_slot = static_cast<size_t>(moved->prefix) << below;
  for (size_t slot = first_slot; slot < first_slot + (size_t{1} << below); ++slot) {
    directory_[slot] = static_cast<uint32_t>(q);
  }
  partitions_.push_back(std::move(moved));
  RoutePartition(p);
  RoutePartition(q);
  // Stashed keys go to whichever half owns them now.
  Partition& kept = *partitions_[p];
  std::vector<std::pair<int64_t, uint32_t>> stashed(kept.stash.begin(), kept.stash.end());
  kept.stash.clear();
  for (const auto& kv : stashed) {
    const size_t home = PartitionOf(kv.first);
    if (home != p) {
      --kept.size;
      ++partitions_[home]->size;
    }
    PlaceWithKicks(*partitions_[home], kv.first, kv.second);
  }
}

void CuckooIndex::Reseed() {
  std::vector<std::pair<int64_t, uint32_t>> all;
  all.reserve(size());
  ForEachInRange(0, num_buckets_, [&](int64_t key, uint32_t id) { all.emplace_back(key, id); });
  // The same directory depth and total buckets, spread evenly.
  int bucket_bits = kMinBucketBits;
  while ((size_t{1} << (bucket_bits + 1 + depth_)) <= num_buckets_ &&
         bucket_bits < kMaxPartitionBucketBits) {
    ++bucket_bits;
  }
  const int depth = depth_;
  seed1_ = Mix64(seed1_ + NextRandom(&rng_state_));
  seed2_ = Mix64(seed2_ + NextRandom(&rng_state_));
  Layout(depth, bucket_bits);
  for (const auto& kv : all) InsertWithoutRebuild(kv.first, kv.second);
}

void CuckooIndex::Reserve(size_t capacity_hint) {
  auto capacity = [&] {
    double total = 0;
    for (const auto& partition : partitions_) {
      total += partition->grow_at * partition->buckets.size() * kSlotsPerBucket;
    }
    return total;
  };
  while (capacity() < static_cast<double>(capacity_hint)) {
    const size_t partitions = partitions_.size();
    for (size_t p = 0; p < partitions; ++p) GrowPartition(p, /*number_buckets=*/false);
    NumberBuckets();
  }
}

void CuckooIndex::Clear() {
  for (auto& partition : partitions_) {
    for (Bucket& bucket : partition->buckets) {
      std::fill(std::begin(bucket.ids), std::end(bucket.ids), kNoEntry);
    }
    partition->stash.clear();
    partition->size = 0;
  }
  stash_limit_ = kMinStashLimit;
}

size_t CuckooIndex::memory_bytes() const {
  // unordered_map node: key, value, next pointer, cached hash, plus a bucket.
  // Arrays under 2 MiB are counted as the slabs that hold them; spare arrays
  // are committed memory too.
  size_t own_arrays = 0;
  {
    std::lock_guard<std::mutex> lock(spares_mutex_);
    for (const BucketArray& spare : spares_) own_arrays += spare.size() * sizeof(Bucket);
  }
  for (const auto& partition : partitions_) {
    const size_t bytes = partition->buckets.size() * sizeof(Bucket);
    if (bytes >= HugePageSlabs::kSlabBytes) own_arrays += bytes;
  }
  return own_arrays + slabs_.mapped_bytes() + partitions_.size() * sizeof(Partition) +
         directory_.size() * (sizeof(uint32_t) + sizeof(Route)) +
         stash_size() * (sizeof(int64_t) + sizeof(uint32_t) + 3 * sizeof(void*));
}

}  // namespace monolith
