// Unit tests of the TF-free core's building blocks: the cuckoo index (kicks,
// stash, growth, re-seeding on crafted collisions) and the entry arena. Each
// suite is one fixture run over several configurations, after Monolith's
// parameterized table tests. No test framework: a check that fails prints
// where and why, and the binary exits non-zero. Built and run by `make test`
// (with AddressSanitizer and UBSan).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "cc/table/cuckoo_index.h"
#include "cc/table/entry_arena.h"
#include "cc/table/huge_pages.h"
#include "cc/table/table_config.h"

namespace monolith {
namespace {

int failures = 0;
std::string current_test;

#define CHECK(condition)                                                              \
  do {                                                                                \
    if (!(condition)) {                                                               \
      std::fprintf(stderr, "FAIL %s: %s:%d: %s\n", current_test.c_str(), __FILE__,    \
                   __LINE__, #condition);                                             \
      ++failures;                                                                     \
      return;                                                                         \
    }                                                                                 \
  } while (0)

#define CHECK_EQ(a, b)                                                                \
  do {                                                                                \
    const auto check_a = (a);                                                         \
    const auto check_b = (b);                                                         \
    if (!(check_a == check_b)) {                                                      \
      std::fprintf(stderr, "FAIL %s: %s:%d: %s == %s (%s vs %s)\n",                   \
                   current_test.c_str(), __FILE__, __LINE__, #a, #b,                  \
                   std::to_string(check_a).c_str(), std::to_string(check_b).c_str()); \
      ++failures;                                                                     \
      return;                                                                         \
    }                                                                                 \
  } while (0)

// --- the cuckoo index --------------------------------------------------------

struct IndexParams {
  uint64_t seed;
  size_t capacity_hint;
  int partition_bits;
};

const IndexParams kIndexParams[] = {{0, 0, 0}, {1, 0, 4}, {42, 1000, 4}, {7, 100000, 2}};

// Which bucket holds each key (a tiling walk over the buckets).
std::unordered_map<int64_t, uint64_t> BucketOfEachKey(const CuckooIndex& index) {
  std::unordered_map<int64_t, uint64_t> where;
  for (size_t b = 0; b < index.num_buckets(); ++b) {
    index.ForEachInRange(b, b + 1, [&](int64_t key, uint32_t) { where[key] = b; });
  }
  return where;
}

// [first, last) bucket numbers of each partition: the span its keys'
// candidates take (found by keys, as the index numbers buckets in partition
// order).
std::vector<std::pair<uint64_t, uint64_t>> BucketsOfPartitions(const CuckooIndex& index) {
  std::vector<std::pair<uint64_t, uint64_t>> spans(index.num_partitions(),
                                                   {~uint64_t{0}, uint64_t{0}});
  for (int64_t key = 1; key < 200000; ++key) {
    auto& span = spans[index.PartitionOf(key)];
    const auto b = index.CandidateBuckets(key);
    span.first = std::min({span.first, b.first, b.second});
    span.second = std::max({span.second, b.first + 1, b.second + 1});
  }
  return spans;
}

// `count` keys, searched from `start`, whose candidate buckets are exactly
// {first, second} (in this order when `ordered`).
std::vector<int64_t> KeysWithBuckets(const CuckooIndex& index, uint64_t first, uint64_t second,
                                     size_t count, bool ordered, int64_t start = 1) {
  std::vector<int64_t> keys;
  for (int64_t key = start; keys.size() < count; ++key) {
    const auto buckets = index.CandidateBuckets(key);
    if ((buckets.first == first && buckets.second == second) ||
        (!ordered && buckets.first == second && buckets.second == first)) {
      keys.push_back(key);
    }
  }
  return keys;
}

void IndexMatchesAMapUnderInsertsAndErases(const IndexParams& p) {
  CuckooIndex index(p.capacity_hint, p.seed, p.partition_bits);
  index.Reserve(40005);  // FindOrInsert never grows the index
  std::unordered_map<int64_t, uint32_t> reference;
  std::mt19937_64 rng(p.seed + 11);
  std::vector<int64_t> special = {0, -1, 1, std::numeric_limits<int64_t>::min(),
                                  std::numeric_limits<int64_t>::max()};
  for (int round = 0; round < 60000; ++round) {
    int64_t key = round < 5 ? special[round] : static_cast<int64_t>(rng() % 40000) - 20000;
    if (rng() % 4 == 0) {
      const uint32_t erased = index.Erase(key);
      auto it = reference.find(key);
      CHECK_EQ(erased, it == reference.end() ? CuckooIndex::kNoEntry : it->second);
      if (it != reference.end()) reference.erase(it);
    } else {
      bool inserted = false;
      const uint32_t id = index.FindOrInsert(key, [&] { return uint32_t(round); }, &inserted);
      auto it = reference.find(key);
      CHECK_EQ(inserted, it == reference.end());
      if (inserted) reference[key] = id;
      CHECK_EQ(id, reference[key]);
    }
  }
  CHECK_EQ(index.size(), reference.size());
  for (const auto& kv : reference) CHECK_EQ(index.Find(kv.first), kv.second);
  CHECK_EQ(index.Find(123456789), CuckooIndex::kNoEntry);
  // Tiling the buckets visits every key once.
  size_t visited = 0;
  for (size_t b = 0; b < index.num_buckets(); b += 3) {
    index.ForEachInRange(b, b + 3, [&](int64_t key, uint32_t id) {
      ++visited;
      if (reference.count(key) == 0 || reference[key] != id) ++failures;
    });
  }
  CHECK_EQ(visited, reference.size());
}

// The index against a map while it grows many times: inserts (which grow
// and split partitions), erases, and stash overflows from keys crafted to
// share both buckets (which grow the partition or re-seed).
void IndexMatchesAMapAcrossGrowths(const IndexParams& p) {
  CuckooIndex index(p.capacity_hint, p.seed, p.partition_bits);
  std::unordered_map<int64_t, uint32_t> reference;
  std::mt19937_64 rng(p.seed + 17);
  size_t partitions_seen = index.num_partitions();
  for (int round = 0; round < 500000; ++round) {
    const int64_t key = static_cast<int64_t>(rng() % 400000) * 2654435761LL - 3;
    if (rng() % 5 == 0) {
      const uint32_t erased = index.Erase(key);
      auto it = reference.find(key);
      CHECK_EQ(erased, it == reference.end() ? CuckooIndex::kNoEntry : it->second);
      if (it != reference.end()) reference.erase(it);
    } else if (reference.count(key) == 0) {
      index.Insert(key, uint32_t(round));
      reference[key] = uint32_t(round);
    }
    if (round % 50000 == 0 && round > 0) {
      // While partitions are small (crafting is a search over their
      // buckets), keys crafted to share both buckets of one partition: they
      // overflow its stash, which grows the partition or re-seeds.
      const auto b = index.CandidateBuckets(key);
      if (index.num_buckets() <= 64 * index.num_partitions()) {
        for (int64_t crafted : KeysWithBuckets(index, b.first, b.second, 12, false,
                                               int64_t{1} << 40)) {
          if (reference.count(crafted) == 0) {
            index.Insert(crafted, uint32_t(round));
            reference[crafted] = uint32_t(round);
          }
        }
      }
      for (const auto& kv : reference) CHECK_EQ(index.Find(kv.first), kv.second);
      CHECK_EQ(index.size(), reference.size());
    }
    partitions_seen = std::max(partitions_seen, index.num_partitions());
  }
  // One partition (partition_bits 0) cannot hold these keys: it split.
  if (p.partition_bits == 0) CHECK(partitions_seen > 1);
  CHECK(index.num_buckets() <= index.num_partitions()
                                   << CuckooIndex::kMaxPartitionBucketBits);
  for (const auto& kv : reference) CHECK_EQ(index.Find(kv.first), kv.second);
  size_t visited = 0;
  index.ForEachInRange(0, index.num_buckets(), [&](int64_t key, uint32_t id) {
    ++visited;
    if (reference.count(key) == 0 || reference[key] != id) ++failures;
  });
  CHECK_EQ(visited, reference.size());
}

void GrowthKeepsEveryKeyAndTheLoadBound(const IndexParams& p) {
  CuckooIndex index(p.capacity_hint, p.seed, p.partition_bits);
  const size_t initial_buckets = index.num_buckets();
  const int64_t n = 200000;
  for (int64_t key = 0; key < n; ++key) index.Insert(key * 7919, uint32_t(key));
  CHECK_EQ(index.size(), size_t(n));
  CHECK(index.num_buckets() > initial_buckets);
  CHECK(index.load_factor() <= CuckooIndex::kMaxLoadFactor);
  CHECK(index.load_factor() > CuckooIndex::kMinGrowLoad / 2.1);  // doubled, not more
  // Partitions split instead of growing past the split size, so no growth
  // re-places more than one partition of at most 2^kMaxPartitionBucketBits.
  CHECK(index.num_buckets() <= index.num_partitions()
                                   << CuckooIndex::kMaxPartitionBucketBits);
  if (p.partition_bits == 0) CHECK(index.num_partitions() > 1);  // 200,000 keys: it split
  for (int64_t key = 0; key < n; ++key) CHECK_EQ(index.Find(key * 7919), uint32_t(key));
  index.Clear();
  CHECK_EQ(index.size(), size_t(0));
  CHECK_EQ(index.Find(7919), CuckooIndex::kNoEntry);
}

void KicksMoveResidentsToTheirOtherBucket(const IndexParams& p) {
  // One partition of 4 buckets, 20 slots: grows past 17 keys.
  CuckooIndex index(0, p.seed, /*partition_bits=*/0);
  CHECK_EQ(index.num_buckets(), size_t(4));
  // Buckets 0 and 1 filled by keys whose other bucket (2 or 3) is empty.
  const auto via0 = KeysWithBuckets(index, 0, 2, CuckooIndex::kSlotsPerBucket, true);
  const auto via1 = KeysWithBuckets(index, 1, 3, CuckooIndex::kSlotsPerBucket, true);
  bool inserted = false;
  uint32_t id = 0;
  for (int64_t key : via0) index.FindOrInsert(key, [&] { return id++; }, &inserted);
  for (int64_t key : via1) index.FindOrInsert(key, [&] { return id++; }, &inserted);
  auto where = BucketOfEachKey(index);
  for (int64_t key : via0) CHECK_EQ(where[key], uint64_t(0));
  for (int64_t key : via1) CHECK_EQ(where[key], uint64_t(1));
  // A key whose two buckets are both full gets a slot by displacing a resident.
  const int64_t newcomer = KeysWithBuckets(index, 0, 1, 1, false)[0];
  const uint32_t newcomer_id =
      index.FindOrInsert(newcomer, [&] { return id++; }, &inserted);
  CHECK(inserted);
  CHECK_EQ(index.stash_size(), size_t(0));
  CHECK_EQ(index.num_buckets(), size_t(4));  // no growth was needed
  where = BucketOfEachKey(index);
  CHECK(where[newcomer] == 0 || where[newcomer] == 1);
  size_t moved = 0;
  for (int64_t key : via0) moved += where[key] == 2;
  for (int64_t key : via1) moved += where[key] == 3;
  CHECK(moved >= 1);
  CHECK_EQ(index.Find(newcomer), newcomer_id);
  for (size_t i = 0; i < via0.size(); ++i) CHECK_EQ(index.Find(via0[i]), uint32_t(i));
}

void KeysSharingBothBucketsOverflowToTheStash(const IndexParams& p) {
  CuckooIndex index(0, p.seed, /*partition_bits=*/0);
  // 2 buckets * 5 slots hold 10 keys of the pair {0, 1}; kicks cannot help
  // the 11th, whose every displacement stays inside the pair.
  const auto keys = KeysWithBuckets(index, 0, 1, 2 * CuckooIndex::kSlotsPerBucket + 1, false);
  for (size_t i = 0; i < keys.size(); ++i) index.Insert(keys[i], uint32_t(i));
  CHECK_EQ(index.stash_size(), size_t(1));
  CHECK_EQ(index.num_buckets(), size_t(4));
  for (size_t i = 0; i < keys.size(); ++i) CHECK_EQ(index.Find(keys[i]), uint32_t(i));
  size_t erased_from_stash = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    const size_t before = index.stash_size();
    CHECK_EQ(index.Erase(keys[i]), uint32_t(i));
    erased_from_stash += before - index.stash_size();
  }
  CHECK_EQ(erased_from_stash, size_t(1));
  CHECK_EQ(index.size(), size_t(0));
}

void CraftedCollisionsAtLowLoadReseedInsteadOfGrowing(const IndexParams& p) {
  // One partition of 64 buckets, 320 slots: the colliding keys below stay
  // under its growth threshold, so only the stash can overflow.
  CuckooIndex index(200, p.seed, /*partition_bits=*/0);
  const size_t buckets = index.num_buckets();
  CHECK_EQ(buckets, size_t(64));
  // More colliding keys than two buckets and the stash limit (16) hold, at
  // a load far below one half.
  const auto keys = KeysWithBuckets(index, 1, 2, 40, false);
  for (size_t i = 0; i < keys.size(); ++i) index.Insert(keys[i], uint32_t(i));
  CHECK(index.load_factor() < 0.5);
  CHECK_EQ(index.num_buckets(), buckets);  // re-seeded, not doubled
  CHECK(index.stash_size() <= 16);
  size_t still_colliding = 0;
  for (int64_t key : keys) {
    const auto b = index.CandidateBuckets(key);
    still_colliding += (b.first == 1 || b.first == 2) && (b.second == 1 || b.second == 2);
  }
  CHECK(still_colliding < keys.size());  // the hash functions changed
  for (size_t i = 0; i < keys.size(); ++i) CHECK_EQ(index.Find(keys[i]), uint32_t(i));
}

void ReserveRebuildsWithoutLosingKeys(const IndexParams& p) {
  CuckooIndex index(p.capacity_hint, p.seed, p.partition_bits);
  for (int64_t key = 0; key < 5000; ++key) index.Insert(-key, uint32_t(key));
  index.Reserve(100000);
  CHECK(index.num_buckets() * CuckooIndex::kSlotsPerBucket * CuckooIndex::kMaxLoadFactor >=
        100000);
  const size_t reserved = index.num_buckets();
  for (int64_t key = 0; key < 5000; ++key) CHECK_EQ(index.Find(-key), uint32_t(key));
  index.Reserve(10);  // never shrinks
  CHECK_EQ(index.num_buckets(), reserved);
}

// ReserveFor in steps of one growth (the table holds its lock for a few at a
// time) ends with room for the whole batch, as one call does: the batch
// then goes in without any partition growing, and nothing was lost.
void ReserveForInStepsMakesTheSameRoom(const IndexParams& p) {
  CuckooIndex stepped(p.capacity_hint, p.seed, p.partition_bits);
  CuckooIndex at_once(p.capacity_hint, p.seed, p.partition_bits);
  std::vector<int64_t> keys;
  std::mt19937_64 rng(p.seed + 5);
  uint32_t next = 0;
  size_t most_calls = 0;
  for (int batch = 0; batch < 6; ++batch) {
    keys.resize(60000);
    for (int64_t& key : keys) key = static_cast<int64_t>(rng() >> 1);
    auto key_at = [&](size_t j) { return keys[j]; };
    const size_t growths_before = stepped.growths();
    // The read-only check agrees with ReserveFor: whether growth is needed.
    const bool fits = stepped.FitsWithoutGrowth(keys.size(), key_at);
    CHECK_EQ(stepped.growths(), growths_before);
    size_t calls = 1;
    while (!stepped.ReserveFor(keys.size(), key_at, /*max_growths=*/1)) ++calls;
    CHECK(at_once.ReserveFor(keys.size(), key_at));
    CHECK_EQ(stepped.num_buckets(), at_once.num_buckets());
    CHECK_EQ(stepped.num_partitions(), at_once.num_partitions());
    CHECK_EQ(stepped.growths(), at_once.growths());
    // One growth per call that returned false, and at most one in the last.
    const size_t grew = stepped.growths() - growths_before;
    CHECK(grew + 1 == calls || grew == calls);
    CHECK_EQ(fits, grew == 0);
    CHECK(stepped.FitsWithoutGrowth(keys.size(), key_at));
    most_calls = std::max(most_calls, calls);
    CHECK(stepped.ReserveFor(keys.size(), key_at, /*max_growths=*/0));
    const size_t buckets = stepped.num_buckets();
    for (int64_t key : keys) {
      bool inserted = false;
      const uint32_t id = next++;
      stepped.FindOrInsert(key, [&] { return id; }, &inserted);
      CHECK(inserted);
      at_once.FindOrInsert(key, [&] { return id; }, &inserted);
    }
    CHECK_EQ(stepped.num_buckets(), buckets);
  }
  CHECK(most_calls > 2);  // some batch needed several growths, in steps
  for (uint32_t id = next - 60000; id < next; ++id) {
    CHECK_EQ(stepped.Find(keys[id - (next - 60000)]), id);
  }
}

void ThreadsInsertingIntoDisjointPartitionsMatchAMap(const IndexParams& p) {
  CuckooIndex index(p.capacity_hint, p.seed, p.partition_bits);
  CHECK(index.num_partitions() >= size_t(1) << p.partition_bits);
  // Keys with repeats; each thread places the keys of its partitions, in
  // order, as a batch of training lookups does.
  std::mt19937_64 rng(p.seed + 5);
  std::vector<int64_t> keys(60000);
  for (int64_t& key : keys) key = static_cast<int64_t>(rng() % 50000) * 104729 - 7;
  index.ReserveFor(keys.size(), [&](size_t i) { return keys[i]; });
  const size_t partitions = index.num_partitions();
  const auto spans = BucketsOfPartitions(index);
  // Partitions own disjoint bucket ranges, in partition order.
  for (size_t q = 1; q < partitions; ++q) CHECK(spans[q - 1].second <= spans[q].first);
  std::vector<uint32_t> ids(keys.size(), CuckooIndex::kNoEntry);
  std::vector<uint8_t> inserted(keys.size(), 0);
  bool buckets_outside_partition = false;
  auto place = [&](size_t thread, size_t threads) {
    for (int pass = 0; pass < 2; ++pass) {
      for (size_t i = 0; i < keys.size(); ++i) {
        const size_t partition = index.PartitionOf(keys[i]);
        if (partition % threads != thread || ids[i] != CuckooIndex::kNoEntry) continue;
        const auto b = index.CandidateBuckets(keys[i]);
        const auto& range = spans[partition];
        if (b.first < range.first || b.first >= range.second || b.second < range.first ||
            b.second >= range.second) {
          buckets_outside_partition = true;
        }
        bool placed = false;
        auto make_id = [&] { return static_cast<uint32_t>(i); };
        ids[i] = pass == 0 ? index.FindOrInsertWithoutKicks(keys[i], make_id, &placed)
                           : index.FindOrInsert(keys[i], make_id, &placed);
        inserted[i] = placed;
      }
    }
  };
  CHECK(partitions == index.num_partitions());  // no growth while threads place
  std::thread other(place, 1, 2);
  place(0, 2);
  other.join();
  index.RebuildIfStashFull();
  CHECK(!buckets_outside_partition);
  std::unordered_map<int64_t, uint32_t> reference;
  for (size_t i = 0; i < keys.size(); ++i) {
    auto it = reference.find(keys[i]);
    // The first copy of a key inserts it; every later copy finds its id.
    CHECK_EQ(static_cast<bool>(inserted[i]), it == reference.end());
    if (it == reference.end()) reference.emplace(keys[i], static_cast<uint32_t>(i));
    CHECK_EQ(ids[i], reference[keys[i]]);
  }
  CHECK_EQ(index.size(), reference.size());
  for (const auto& kv : reference) CHECK_EQ(index.Find(kv.first), kv.second);
  // Growth keeps every key in its partition's buckets.
  index.Reserve(4 * index.size());
  for (const auto& kv : reference) CHECK_EQ(index.Find(kv.first), kv.second);
  size_t visited = 0;
  index.ForEachInRange(0, index.num_buckets(), [&](int64_t, uint32_t) { ++visited; });
  CHECK_EQ(visited, reference.size());
}

// --- the entry arena ---------------------------------------------------------

struct ArenaShape {
  int dim, state_dim;
};
const ArenaShape kArenaShapes[] = {{1, 0}, {8, 8}, {32, 32}, {17, 51}};

// Slab buffers (the index's small partitions) are aligned to their size,
// never overlap while held, and a slab whose buffers are all released goes
// back to the kernel, except the one still being carved.
void SlabBuffersAreDisjointAndSlabsReturn(int seed) {
  HugePageSlabs slabs;
  std::mt19937_64 rng(seed);
  struct Held {
    unsigned char* p;
    size_t bytes;
    unsigned char fill;
  };
  std::vector<Held> held;
  for (int round = 0; round < 3000; ++round) {
    if (!held.empty() && rng() % 3 == 0) {
      const size_t i = rng() % held.size();
      for (size_t b = 0; b < held[i].bytes; b += 61) CHECK_EQ(held[i].p[b], held[i].fill);
      slabs.Release(held[i].p, held[i].bytes);
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(i));
      continue;
    }
    const size_t bytes = size_t{256} << (rng() % 13);  // 256 B .. 1 MiB
    auto* p = static_cast<unsigned char*>(slabs.Allocate(bytes));
    CHECK_EQ(reinterpret_cast<uintptr_t>(p) % bytes, uintptr_t{0});
    const auto fill = static_cast<unsigned char>(round);
    std::memset(p, fill, bytes);
    held.push_back(Held{p, bytes, fill});
  }
  size_t live = 0;
  for (const Held& h : held) {
    for (size_t b = 0; b < h.bytes; b += 61) CHECK_EQ(h.p[b], h.fill);
    live += h.bytes;
  }
  // Freed space is reused only once its whole slab is free, so a slab can
  // hold little; but never more slabs than buffers held, plus the open one.
  CHECK(slabs.mapped_bytes() <= (held.size() + 1) * HugePageSlabs::kSlabBytes);
  CHECK(slabs.mapped_bytes() >= live);
  for (const Held& h : held) slabs.Release(h.p, h.bytes);
  CHECK(slabs.mapped_bytes() <= HugePageSlabs::kSlabBytes);
  bool refused = false;
  try {
    slabs.Allocate(3000);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused);
}

// A spare slab is made ready once the slab being carved is half used, and
// it is the one the next new slab comes from.
void SpareSlabIsTheNextSlab(int) {
  HugePageSlabs slabs;
  const size_t slab = HugePageSlabs::kSlabBytes;
  slabs.PrepareSpare();  // nothing carved: no spare
  CHECK_EQ(slabs.mapped_bytes(), size_t{0});
  void* quarter = slabs.Allocate(slab / 4);
  slabs.PrepareSpare();  // a quarter used: still none
  CHECK_EQ(slabs.mapped_bytes(), slab);
  void* half = slabs.Allocate(slab / 2);
  slabs.PrepareSpare();
  CHECK_EQ(slabs.mapped_bytes(), 2 * slab);
  slabs.PrepareSpare();  // one is ready already
  CHECK_EQ(slabs.mapped_bytes(), 2 * slab);
  void* next = slabs.Allocate(slab / 2);  // no room left: opens the spare
  CHECK_EQ(slabs.mapped_bytes(), 2 * slab);
  std::memset(next, 7, slab / 2);
  slabs.Release(quarter, slab / 4);
  slabs.Release(half, slab / 2);  // the first slab is empty: unmapped
  CHECK_EQ(slabs.mapped_bytes(), slab);
  slabs.Release(next, slab / 2);
}

void ArenaEntriesAreDisjointAcrossChunks(const ArenaShape& shape) {
  EntryArena arena(shape.dim, shape.state_dim);
  // The embedding, plus header + state rounded up to 8 bytes so every header
  // stays aligned.
  const size_t header_bytes = (sizeof(EntryHeader) + sizeof(float) * shape.state_dim + 7) / 8 * 8;
  CHECK_EQ(arena.header_bytes(), header_bytes);
  CHECK_EQ(arena.entry_bytes(), sizeof(float) * shape.dim + header_bytes);
  const uint32_t n = (1u << 16) + 100;  // past the first chunk
  auto value = [](uint32_t i, int f) { return float(i) + f * 0.5f; };
  for (uint32_t i = 0; i < n; ++i) {
    CHECK_EQ(arena.Allocate(), i);
    arena.InitHeader(i);
    for (int f = 0; f < shape.dim; ++f) arena.Embedding(i)[f] = value(i, f);
    for (int f = 0; f < shape.state_dim; ++f) arena.State(i)[f] = -value(i, f);
  }
  CHECK_EQ(arena.live_entries(), size_t(n));
  for (uint32_t i = 0; i < n; i += 97) {
    for (int f = 0; f < shape.dim; ++f) CHECK(arena.Embedding(i)[f] == value(i, f));
    for (int f = 0; f < shape.state_dim; ++f) CHECK(arena.State(i)[f] == -value(i, f));
    CHECK_EQ(arena.Header(i)->count, uint32_t(0));
    CHECK_EQ(arena.Header(i)->timestamp, int64_t(0));
  }
  // Embeddings of dim 32 start on a cache line: a lookup reads 2 lines.
  if (shape.dim == 32) {
    for (uint32_t i = 0; i < n; i += 13) {
      CHECK_EQ(reinterpret_cast<uintptr_t>(arena.Embedding(i)) % 64, uintptr_t(0));
    }
  }
  CHECK(arena.memory_bytes() >= 2 * (size_t(1) << 16) * arena.entry_bytes());
}

void ArenaReusesFreedEntriesFirst(const ArenaShape& shape) {
  EntryArena arena(shape.dim, shape.state_dim);
  for (int i = 0; i < 10; ++i) arena.Allocate();
  arena.Free(3);
  arena.Free(7);
  CHECK_EQ(arena.live_entries(), size_t(8));
  CHECK_EQ(arena.Allocate(), uint32_t(7));  // the newest freed first
  CHECK_EQ(arena.Allocate(), uint32_t(3));
  CHECK_EQ(arena.Allocate(), uint32_t(10));
  const size_t bytes = arena.memory_bytes();
  arena.Reset();
  CHECK_EQ(arena.live_entries(), size_t(0));
  CHECK_EQ(arena.Allocate(), uint32_t(0));
  CHECK(arena.memory_bytes() >= bytes - 64);  // chunks are kept for reuse
}

// Chunks prepared ahead are the ones Allocate then opens: no more memory
// than without them once used, and every entry still its own.
void ArenaPreparedChunksAreTheOnesUsed(const ArenaShape& shape) {
  EntryArena arena(shape.dim, shape.state_dim);
  const size_t chunk = size_t{1} << 16;
  arena.PrepareChunksFor(0);
  CHECK_EQ(arena.memory_bytes(), size_t{0});
  arena.PrepareChunksFor(chunk + 1);  // two chunks' worth
  const size_t prepared = arena.memory_bytes();
  CHECK(prepared >= 2 * chunk * arena.entry_bytes());
  arena.PrepareChunksFor(chunk + 1);  // already there
  CHECK_EQ(arena.memory_bytes(), prepared);
  std::vector<uint32_t> ids;
  for (size_t i = 0; i < chunk + 1; ++i) {
    ids.push_back(arena.Allocate());
    arena.InitHeader(ids.back());
    arena.Embedding(ids.back())[0] = static_cast<float>(i);
  }
  CHECK_EQ(arena.memory_bytes(), prepared);
  for (size_t i = 0; i < ids.size(); ++i) {
    CHECK_EQ(arena.Embedding(ids[i])[0], static_cast<float>(i));
  }
  // Free entries are room: nothing more to prepare.
  for (uint32_t id : ids) arena.Free(id);
  const size_t with_free_ids = arena.memory_bytes();
  arena.PrepareChunksFor(chunk);
  CHECK_EQ(arena.memory_bytes(), with_free_ids);
}

void ArenaDirtyBitsAreOnePerEntry(const ArenaShape& shape) {
  EntryArena arena(shape.dim, shape.state_dim);
  for (int i = 0; i < 200; ++i) arena.Allocate();
  for (uint32_t i = 0; i < 200; i += 3) arena.MarkDirty(i);
  for (uint32_t i = 0; i < 200; ++i) CHECK_EQ(arena.IsDirty(i), i % 3 == 0);
  arena.MarkDirty(63);
  arena.MarkDirty(63);  // idempotent
  arena.ClearDirty(0);
  CHECK(!arena.IsDirty(0) && arena.IsDirty(3) && arena.IsDirty(63) && !arena.IsDirty(64));
  arena.Free(3);  // a freed entry's mark goes with it
  CHECK(!arena.IsDirty(3));
  CHECK_EQ(arena.Allocate(), uint32_t(3));
  CHECK(!arena.IsDirty(3));
  arena.Reset();
  for (uint32_t i = 0; i < 200; ++i) CHECK(!arena.IsDirty(i));
}

// --- table configuration -----------------------------------------------------

void ConfigValidationNamesTheField(int) {
  TableConfig good;
  good.dim = 8;
  ValidateTableConfig(good);
  const std::vector<std::pair<std::function<void(TableConfig&)>, std::string>> bad = {
      {[](TableConfig& c) { c.dim = 0; }, "dim must be > 0"},
      {[](TableConfig& c) { c.dim = kMaxDim + 1; }, "dim must be > 0 and <="},
      {[](TableConfig& c) { c.capacity_hint = -1; }, "capacity_hint"},
      {[](TableConfig& c) { c.occurrence_threshold = -1; }, "occurrence_threshold"},
      {[](TableConfig& c) { c.expire_after = -5; }, "expire_after"},
      {[](TableConfig& c) { c.evict_every = -1; }, "evict_every"},
      {[](TableConfig& c) { c.optimizer = "rmsprop"; }, "unknown optimizer"},
      {[](TableConfig& c) { c.initializer = "glorot"; }, "unknown initializer"},
      {[](TableConfig& c) { c.occurrence_threshold = 2; c.admission_filter = "bloom"; },
       "unknown admission filter"},
      {[](TableConfig& c) { c.occurrence_threshold = 300; }, "counts to 255"},
  };
  for (const auto& [change, message] : bad) {
    TableConfig config = good;
    change(config);
    bool threw = false;
    try {
      ValidateTableConfig(config);
    } catch (const std::invalid_argument& e) {
      threw = true;
      CHECK(std::string(e.what()).find(message) != std::string::npos);
    }
    CHECK(threw);
  }
  TableConfig other = good;
  CHECK(SameTableConfig(good, other));
  other.capacity_hint = 1000;  // a hint, not a difference
  CHECK(SameTableConfig(good, other));
  other.occurrence_threshold = 3;
  CHECK(!SameTableConfig(good, other));
  CHECK_EQ(OptimizerStateDim("adam", 4), 9);
  CHECK_EQ(OptimizerStateDim("sgd", 4), 0);
}

template <typename Param, size_t N>
void Run(const char* name, void (*test)(const Param&), const Param (&params)[N]) {
  for (size_t i = 0; i < N; ++i) {
    current_test = std::string(name) + "/" + std::to_string(i);
    const int before = failures;
    test(params[i]);
    std::printf("%s %s\n", failures == before ? "ok  " : "FAIL", current_test.c_str());
  }
}

template <size_t N>
void Run(const char* name, void (*test)(int), const int (&params)[N]) {
  for (size_t i = 0; i < N; ++i) {
    current_test = std::string(name) + "/" + std::to_string(params[i]);
    const int before = failures;
    test(params[i]);
    std::printf("%s %s\n", failures == before ? "ok  " : "FAIL", current_test.c_str());
  }
}

}  // namespace
}  // namespace monolith

int main() {
  using namespace monolith;
  Run("index_matches_a_map", IndexMatchesAMapUnderInsertsAndErases, kIndexParams);
  Run("growth_keeps_keys", GrowthKeepsEveryKeyAndTheLoadBound, kIndexParams);
  Run("index_matches_a_map_across_growths", IndexMatchesAMapAcrossGrowths, kIndexParams);
  Run("kicks_move_residents", KicksMoveResidentsToTheirOtherBucket, kIndexParams);
  Run("stash_takes_overflow", KeysSharingBothBucketsOverflowToTheStash, kIndexParams);
  Run("collisions_reseed", CraftedCollisionsAtLowLoadReseedInsteadOfGrowing, kIndexParams);
  Run("reserve_keeps_keys", ReserveRebuildsWithoutLosingKeys, kIndexParams);
  Run("reserve_in_steps", ReserveForInStepsMakesTheSameRoom, kIndexParams);
  Run("partitions_on_two_threads", ThreadsInsertingIntoDisjointPartitionsMatchAMap,
      kIndexParams);
  const int once[] = {0};
  const int slab_seeds[] = {1, 2, 3};
  Run("slab_buffers_disjoint", SlabBuffersAreDisjointAndSlabsReturn, slab_seeds);
  Run("spare_slab", SpareSlabIsTheNextSlab, once);
  Run("arena_disjoint_entries", ArenaEntriesAreDisjointAcrossChunks, kArenaShapes);
  Run("arena_reuses_freed", ArenaReusesFreedEntriesFirst, kArenaShapes);
  Run("arena_prepared_chunks", ArenaPreparedChunksAreTheOnesUsed, kArenaShapes);
  Run("arena_dirty_bits", ArenaDirtyBitsAreOnePerEntry, kArenaShapes);
  Run("config_validation", ConfigValidationNamesTheField, once);
  std::printf("core_test: %d failed checks\n", failures);
  return failures == 0 ? 0 : 1;
}
