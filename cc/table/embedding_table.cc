#include "cc/table/embedding_table.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <shared_mutex>
#include <stdexcept>
#include <system_error>
#include <vector>

namespace monolith {

// Reader-writer lock that lets a waiting writer in before new readers.
class EmbeddingTable::TableLock {
 public:
  TableLock() {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr,
                                  PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    const int rc = pthread_rwlock_init(&lock_, &attr);
    pthread_rwlockattr_destroy(&attr);
    if (rc != 0) throw std::system_error(rc, std::generic_category(), "rwlock");
  }
  ~TableLock() { pthread_rwlock_destroy(&lock_); }
  void lock() { pthread_rwlock_wrlock(&lock_); }
  void unlock() { pthread_rwlock_unlock(&lock_); }
  void lock_shared() { pthread_rwlock_rdlock(&lock_); }
  void unlock_shared() { pthread_rwlock_unlock(&lock_); }

 private:
  pthread_rwlock_t lock_;
};

namespace {

using SharedLock = std::shared_lock<EmbeddingTable::TableLock>;
using ExclusiveLock = std::unique_lock<EmbeddingTable::TableLock>;

// How many keys ahead serial loops prefetch their buckets.
constexpr int64_t kPrefetchAhead = 32;
// Index partition growths per hold of the exclusive lock when a batch makes
// room (each ~1 ms with a spare array ready; as many as there are spares).
constexpr size_t kIndexGrowthsPerLock = 4;
// New keys of one training lookup indexed and filled per hold of the lock.
constexpr size_t kKeysPerHold = 16384;

void CheckCount(int64_t n, const char* what) {
  if (n < 0) {
    throw std::invalid_argument(std::string(what) + " must be >= 0, got " +
                                std::to_string(n));
  }
}

const TableConfig& Validated(const TableConfig& config) {
  ValidateTableConfig(config);
  return config;
}

// Distinct keys of a gradient batch in order of first occurrence. Only keys
// that repeat get a summed gradient (added in batch order, as a reference
// would); the others point at their row of the input, so a batch without
// duplicates copies no gradients.
struct DedupedBatch {
  std::vector<int64_t> keys;
  std::vector<int64_t> first_row;     // row of the key's first occurrence
  std::vector<int32_t> summed_slot;   // -1, or the key's row in `summed`
  std::vector<float> summed;
  std::vector<uint32_t> occurrences;
  std::vector<int64_t> timestamps;

  const float* Gradient(const float* grads, int64_t u, int dim) const {
    const int32_t slot = summed_slot[u];
    return slot < 0 ? grads + static_cast<size_t>(first_row[u]) * dim
                    : summed.data() + static_cast<size_t>(slot) * dim;
  }
};

// Dedups rows[0..n) (ascending rows of the batch).
DedupedBatch Dedup(const int64_t* keys, const float* grads, const size_t* rows, size_t n,
                   int dim, const int64_t* timestamps, bool per_key_timestamps) {
  DedupedBatch out;
  size_t num_slots = 16;
  while (num_slots < 2 * n) num_slots <<= 1;
  const size_t mask = num_slots - 1;
  // Open addressing with the key beside its index, so a probe is one cache
  // line; slots are prefetched a few keys ahead (the array outgrows L2).
  struct Slot {
    int64_t key;
    int32_t unique;  // -1: empty
  };
  std::vector<Slot> slots(num_slots, Slot{0, -1});
  constexpr size_t kAhead = 8;
  auto home = [&](int64_t key) { return Mix64(static_cast<uint64_t>(key)) & mask; };
  out.keys.reserve(n);
  out.first_row.reserve(n);
  out.summed_slot.reserve(n);
  out.occurrences.reserve(n);
  out.timestamps.reserve(n);
  for (size_t k = 0; k < n; ++k) {
    if (k + kAhead < n) PrefetchLine(&slots[home(keys[rows[k + kAhead]])]);
    const int64_t i = static_cast<int64_t>(rows[k]);
    const int64_t key = keys[i];
    const int64_t ts = per_key_timestamps ? timestamps[i] : timestamps[0];
    size_t slot = home(key);
    while (slots[slot].unique >= 0 && slots[slot].key != key) slot = (slot + 1) & mask;
    if (slots[slot].unique < 0) {
      slots[slot] = Slot{key, static_cast<int32_t>(out.keys.size())};
      out.keys.push_back(key);
      out.first_row.push_back(i);
      out.summed_slot.push_back(-1);
      out.occurrences.push_back(1);
      out.timestamps.push_back(ts);
      continue;
    }
    const size_t u = slots[slot].unique;
    if (out.summed_slot[u] < 0) {
      out.summed_slot[u] = static_cast<int32_t>(out.summed.size() / dim);
      const float* first = grads + static_cast<size_t>(out.first_row[u]) * dim;
      out.summed.insert(out.summed.end(), first, first + dim);
    }
    float* sum = out.summed.data() + static_cast<size_t>(out.summed_slot[u]) * dim;
    const float* g = grads + static_cast<size_t>(i) * dim;
    for (int d = 0; d < dim; ++d) sum[d] += g[d];
    ++out.occurrences[u];
    out.timestamps[u] = std::max(out.timestamps[u], ts);
  }
  return out;
}

}  // namespace

EmbeddingTable::EmbeddingTable(const TableConfig& config)
    : config_(Validated(config)),
      initializer_(MakeInitializer(config.initializer, config.seed)),
      optimizer_(MakeOptimizer(config.optimizer)),
      state_dim_(optimizer_->StateDim(config.dim)),
      lock_(new TableLock),
      index_(static_cast<size_t>(config.capacity_hint), config.seed),
      arena_(config.dim, state_dim_),
      filter_(config.occurrence_threshold > 0
                  ? MakeAdmissionFilter(config.admission_filter, config.occurrence_threshold,
                                        config.seed)
                  : nullptr) {}

EmbeddingTable::~EmbeddingTable() = default;

int64_t EmbeddingTable::size() const {
  SharedLock lock(*lock_);
  return static_cast<int64_t>(index_.size());
}

size_t EmbeddingTable::memory_bytes() const {
  SharedLock lock(*lock_);
  return index_.memory_bytes() + arena_.memory_bytes();
}

std::pair<uint64_t, uint64_t> EmbeddingTable::CandidateBuckets(int64_t key) const {
  SharedLock lock(*lock_);
  return index_.CandidateBuckets(key);
}

size_t EmbeddingTable::num_buckets() const {
  SharedLock lock(*lock_);
  return index_.num_buckets();
}

void EmbeddingTable::InitRow(int64_t key, uint32_t id) {
  arena_.InitHeader(id);
  // A new entry counts as updated now, so expiry measures its inactivity,
  // and belongs in the next delta.
  arena_.Header(id)->timestamp = now_.load(std::memory_order_relaxed);
  MarkChanged(key, id);
  initializer_->Fill(key, arena_.Embedding(id), config_.dim);
  optimizer_->InitState(arena_.State(id), config_.dim);
}

void EmbeddingTable::MarkChanged(int64_t key, uint32_t id) {
  arena_.MarkDirty(id);
  if (track_sync_.load(std::memory_order_relaxed) &&
      arena_.SetMark(id, EntryArena::kSyncMark)) {
    std::lock_guard<std::mutex> guard(sync_keys_mutex_);
    sync_keys_.push_back(key);
  }
}

template <typename It>
void EmbeddingTable::RecordRemoved(It begin, It end) {
  if (track_removals_) removed_since_save_.insert(removed_since_save_.end(), begin, end);
  if (track_sync_.load(std::memory_order_relaxed)) sync_removed_.insert(sync_removed_.end(), begin, end);
}

uint32_t EmbeddingTable::InsertNew(int64_t key) {
  const uint32_t id = arena_.Allocate();
  InitRow(key, id);
  index_.Insert(key, id);
  return id;
}

namespace {

// Resolves keys[begin, end) to entry ids with software prefetching: bucket
// lines kBucketAhead keys early, then the entry's lines (prefetch_entry(j, id))
// kRowAhead keys early, so the dependent cache misses of many keys overlap.
// Calls f(i, id).
template <typename PrefetchEntry, typename F>
void ForEachResolved(const CuckooIndex& index, const int64_t* keys, int64_t begin,
                     int64_t end, PrefetchEntry&& prefetch_entry, F&& f) {
  constexpr int64_t kBucketAhead = 16, kRowAhead = 8;
  uint32_t ring[kRowAhead];
  auto resolve = [&](int64_t j) {
    const uint32_t id = index.Find(keys[j]);
    ring[j % kRowAhead] = id;
    if (id != CuckooIndex::kNoEntry) prefetch_entry(j, id);
  };
  for (int64_t j = begin; j < std::min(begin + kBucketAhead, end); ++j) {
    index.Prefetch(keys[j]);
  }
  for (int64_t j = begin; j < std::min(begin + kRowAhead, end); ++j) resolve(j);
  for (int64_t i = begin; i < end; ++i) {
    if (i + kBucketAhead < end) index.Prefetch(keys[i + kBucketAhead]);
    const uint32_t id = ring[i % kRowAhead];
    if (i + kRowAhead < end) resolve(i + kRowAhead);
    f(i, id);
  }
}

// Splits items [0, count) into num_groups groups (group_of(j)) and calls
// visit(group, items, n) for each non-empty group with its items in
// increasing order, on the runner's threads, each group on one thread.
// Grouping keys by index partition lets threads insert into the index at
// once. Rethrows the first exception once every shard is done.
//
// Fewer than kMinItemsToSplit items are one group (0) on the calling
// thread: below that, sixteen small groups and a thread hand-off cost more
// than they save (bench/train_bench.py, 4,096 ids per feature and batch,
// ran at 0.73-0.86x when split).
constexpr size_t kMinItemsToSplit = 8192;
template <typename GroupOf, typename Visit>
void ForEachGroupOnThreads(size_t count, size_t num_groups, GroupOf&& group_of,
                           const ParallelRunner& runner, Visit&& visit) {
  if (count < kMinItemsToSplit) {
    std::vector<size_t> items(count);
    for (size_t j = 0; j < count; ++j) items[j] = j;
    if (count > 0) visit(size_t{0}, items.data(), count);
    return;
  }
  std::vector<size_t> starts(num_groups + 1, 0);
  std::vector<uint32_t> group(count);
  for (size_t j = 0; j < count; ++j) {
    group[j] = static_cast<uint32_t>(group_of(j));
    ++starts[group[j] + 1];
  }
  for (size_t g = 0; g < num_groups; ++g) starts[g + 1] += starts[g];
  std::vector<size_t> order(count);
  {
    std::vector<size_t> next(starts.begin(), starts.end() - 1);
    for (size_t j = 0; j < count; ++j) order[next[group[j]]++] = j;
  }
  // A group belongs to the shard that holds its first item.
  std::mutex error_mutex;
  std::exception_ptr error;
  runner.For(static_cast<int64_t>(count), 150, [&](int64_t begin, int64_t end) {
    for (size_t g = 0; g < num_groups; ++g) {
      const int64_t first = static_cast<int64_t>(starts[g]);
      if (first < begin || first >= end || starts[g] == starts[g + 1]) continue;
      try {
        visit(g, order.data() + starts[g], starts[g + 1] - starts[g]);
      } catch (...) {
        std::lock_guard<std::mutex> guard(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  });
  if (error) std::rethrow_exception(error);
}

// Copies the embeddings of keys[begin, end) into out (row i at i * dim) and
// flags absent keys in missing[i], zeroing their rows; returns how many were
// absent. With kCheckVersions each row is copied under its seqlock, which
// costs its header line as well.
template <bool kCheckVersions>
int64_t CopyRows(const CuckooIndex& index, const EntryArena& arena, const int64_t* keys,
                 int64_t begin, int64_t end, int dim, float* out, uint8_t* missing) {
  const size_t embedding_bytes = sizeof(float) * dim;
  int64_t absent = 0;
  ForEachResolved(
      index, keys, begin, end,
      [&](int64_t, uint32_t id) {
        if (kCheckVersions) PrefetchLine(arena.Header(id));
        PrefetchSpan(arena.Embedding(id), embedding_bytes);
      },
      [&](int64_t i, uint32_t id) {
        if (id == CuckooIndex::kNoEntry) {
          // The default row until inserted. Written here, under the shared
          // lock, it also commits fresh output pages before a training
          // lookup takes the exclusive lock to fill them.
          std::memset(out + static_cast<size_t>(i) * dim, 0, embedding_bytes);
          missing[i] = 1;
          ++absent;
          return;
        }
        float* dst = out + static_cast<size_t>(i) * dim;
        const float* src = arena.Embedding(id);
        if (kCheckVersions) {
          ReadEntryConsistent(arena.Header(id), [&] { std::memcpy(dst, src, embedding_bytes); });
        } else {
          std::memcpy(dst, src, embedding_bytes);
        }
      });
  return absent;
}

// The copy of a lookup that reads no row versions: only valid when no
// in-place writer ran meanwhile, which the caller checks afterwards, throwing
// the copy away otherwise (so TSan's report of a race here is suppressed, as
// for ReadEntryConsistent). Not inlined, so that suppression can name it.
__attribute__((noinline)) int64_t CopyRowsWithoutVersionCheck(
    const CuckooIndex& index, const EntryArena& arena, const int64_t* keys, int64_t begin,
    int64_t end, int dim, float* out, uint8_t* missing) {
  return CopyRows</*kCheckVersions=*/false>(index, arena, keys, begin, end, dim, out, missing);
}

}  // namespace

class EmbeddingTable::InPlaceWriteSection {
 public:
  explicit InPlaceWriteSection(InPlaceWriters* writers) : writers_(writers) {
    // Counted as running before it is counted as started, and both before
    // any row write: a reader that loads `started` and then `active` cannot
    // miss this writer.
    writers_->active.fetch_add(1);
    writers_->started.fetch_add(1);
  }
  ~InPlaceWriteSection() { writers_->active.fetch_sub(1, std::memory_order_release); }
  InPlaceWriteSection(const InPlaceWriteSection&) = delete;
  InPlaceWriteSection& operator=(const InPlaceWriteSection&) = delete;

 private:
  InPlaceWriters* writers_;
};

int64_t EmbeddingTable::CopyPresentRows(const int64_t* keys, int64_t begin, int64_t end,
                                        float* out, uint8_t* missing) const {
  const int dim = config_.dim;
  const uint64_t started = in_place_writers_.started.load(std::memory_order_acquire);
  if (in_place_writers_.active.load(std::memory_order_acquire) == 0) {
    const int64_t absent =
        CopyRowsWithoutVersionCheck(index_, arena_, keys, begin, end, dim, out, missing);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (in_place_writers_.started.load(std::memory_order_relaxed) == started) return absent;
  }
  // A writer ran: copy each row under its seqlock.
  return CopyRows</*kCheckVersions=*/true>(index_, arena_, keys, begin, end, dim, out, missing);
}

void EmbeddingTable::IndexMissingKeys(const int64_t* keys, const int64_t* todo, size_t count,
                                      const ParallelRunner& runner, uint32_t* ids,
                                      std::vector<size_t>* fresh) {
  // The arena is not thread-safe, so every key gets an id claimed up front;
  // the ids of keys found present (duplicates, or inserted by another
  // thread since the probe) go back afterwards.
  std::vector<uint32_t> claimed;
  claimed.reserve(count);
  std::vector<uint8_t> inserted(count, 0);
  auto give_back_unused = [&] {
    for (size_t j = 0; j < claimed.size(); ++j) {
      if (!inserted[j]) arena_.Free(claimed[j]);
    }
  };
  try {
    while (claimed.size() < count) claimed.push_back(arena_.Allocate());
    // Room for every key, so no partition needs to grow while threads place
    // (Lookup made it already, unless another writer took it meanwhile).
    index_.ReserveFor(count, [&](size_t j) { return keys[todo[j]]; });
  } catch (...) {
    give_back_unused();
    throw;
  }
  // Keys go to their partitions in batch order, so a later duplicate finds
  // the key its earlier copy placed. Keys with no free slot in their two
  // buckets wait for a second pass, which prefetches where their kicks go a
  // few keys ahead, so the kicks' misses overlap. (A later duplicate of such
  // a key was deferred too, its buckets being full; it finds the key placed.)
  auto place_partition = [&](size_t, const size_t* items, size_t n) {
    std::vector<size_t> needs_kicks;
    auto place = [&](size_t j, bool may_kick) {
      bool placed = false;
      auto claim = [&] { return claimed[j]; };
      ids[j] = may_kick ? index_.FindOrInsert(keys[todo[j]], claim, &placed)
                        : index_.FindOrInsertWithoutKicks(keys[todo[j]], claim, &placed);
      inserted[j] = placed;
      return ids[j] != CuckooIndex::kNoEntry;
    };
    // A partition may get only a few dozen keys of a batch: its first keys
    // are prefetched before the loop, or they would all miss.
    for (size_t k = 0; k < std::min<size_t>(n, kPrefetchAhead); ++k) {
      index_.Prefetch(keys[todo[items[k]]]);
    }
    for (size_t k = 0; k < n; ++k) {
      if (k + kPrefetchAhead < n) index_.Prefetch(keys[todo[items[k + kPrefetchAhead]]]);
      if (!place(items[k], /*may_kick=*/false)) needs_kicks.push_back(items[k]);
    }
    constexpr size_t kBucketAhead = 16, kKickAhead = 4;
    for (size_t d = 0; d < needs_kicks.size(); ++d) {
      if (d + kBucketAhead < needs_kicks.size()) {
        index_.Prefetch(keys[todo[needs_kicks[d + kBucketAhead]]]);
      }
      if (d + kKickAhead < needs_kicks.size()) {
        index_.PrefetchMoveTargets(keys[todo[needs_kicks[d + kKickAhead]]]);
      }
      place(needs_kicks[d], /*may_kick=*/true);
    }
  };
  auto collect_fresh = [&] {
    for (size_t j = 0; j < count; ++j) {
      if (inserted[j]) fresh->push_back(j);
    }
  };
  try {
    ForEachGroupOnThreads(
        count, index_.num_partitions(),
        [&](size_t j) { return index_.PartitionOf(keys[todo[j]]); }, runner, place_partition);
    index_.RebuildIfStashFull();
  } catch (...) {  // out of memory for a stash or a rebuild
    // Rows already indexed must still be valid.
    collect_fresh();
    for (size_t f : *fresh) InitRow(keys[todo[f]], ids[f]);
    give_back_unused();
    throw;
  }
  collect_fresh();
  give_back_unused();
}

int64_t EmbeddingTable::Lookup(const int64_t* keys, int64_t n,
                               bool insert_missing, float* out,
                               const ParallelRunner& runner) {
  CheckCount(n, "number of ids");
  std::vector<uint8_t> missing(n, 0);
  std::atomic<int64_t> num_missing{0};
  {
    SharedLock lock(*lock_);
    runner.For(n, 60, [&](int64_t begin, int64_t end) {
      num_missing += CopyPresentRows(keys, begin, end, out, missing.data());
    });
  }
  if (num_missing.load() == 0) return 0;
  if (!insert_missing) return 0;  // absent keys' rows are zero already
  std::vector<int64_t> todo;
  todo.reserve(num_missing.load());
  for (int64_t i = 0; i < n; ++i) {
    if (missing[i]) todo.push_back(i);
  }
  // Before the lock, so readers do not wait for fresh memory to be mapped:
  // the arena chunks the new rows open (and, below, the index's arrays).
  arena_.PrepareChunksFor(todo.size(), [&](void* data, size_t bytes) {
    // Threads take whole 2 MiB blocks: two threads faulting in one huge
    // page would each allocate and zero it (the kernel keeps one).
    constexpr size_t kBlock = size_t{2} << 20;
    char* start = static_cast<char*>(data);
    runner.For(static_cast<int64_t>((bytes + kBlock - 1) / kBlock), 1000000,
               [&](int64_t begin, int64_t end) {
                 const size_t from = static_cast<size_t>(begin) * kBlock;
                 CommitPages(start + from,
                             std::min(bytes, static_cast<size_t>(end) * kBlock) - from);
               });
  });
  // A batch of new keys can grow many partitions of the index (a uniformly
  // filled table splits them in waves). A few growths per hold of the lock,
  // with spare arrays made ready between holds, keep each wait short. (With
  // an admission filter most keys may stay out: those grow it one by one.)
  auto key_at = [&](size_t j) { return keys[todo[j]]; };
  bool room = filter_ != nullptr;
  if (!room) {  // most batches need no growth: counted without blocking readers
    SharedLock lock(*lock_);
    room = index_.FitsWithoutGrowth(todo.size(), key_at);
  }
  while (!room) {
    index_.PrepareSpareArrays();
    ExclusiveLock lock(*lock_);
    room = index_.ReserveFor(todo.size(), key_at, kIndexGrowthsPerLock);
  }
  // Inserted a slice at a time, each under its own hold of the lock, so a
  // reader waits for one slice's placement and fill, not the whole batch's.
  int64_t inserted = 0;
  for (size_t first = 0; first < todo.size(); first += kKeysPerHold) {
    inserted += InsertMissing(keys, todo.data() + first,
                              std::min(kKeysPerHold, todo.size() - first), out, runner);
  }
  return inserted;
}

int64_t EmbeddingTable::InsertMissing(const int64_t* keys, const int64_t* todo, size_t count,
                                      float* out, const ParallelRunner& runner) {
  const int dim = config_.dim;
  std::vector<uint32_t> ids(count, CuckooIndex::kNoEntry);
  std::vector<size_t> fresh;  // positions in `todo` that got a new row
  ExclusiveLock lock(*lock_);
  if (filter_ == nullptr) {
    IndexMissingKeys(keys, todo, count, runner, ids.data(), &fresh);
  } else {
    try {
      for (size_t j = 0; j < count; ++j) {
        if (j + kPrefetchAhead < count) index_.Prefetch(keys[todo[j + kPrefetchAhead]]);
        const int64_t key = keys[todo[j]];
        // Another thread, or an earlier duplicate in this batch, may have won.
        ids[j] = index_.Find(key);
        if (ids[j] != CuckooIndex::kNoEntry) continue;
        if (filter_->Observe(key)) {
          ids[j] = arena_.Allocate();
          index_.Insert(key, ids[j]);
          fresh.push_back(j);
        } else {
          ++rejected_;
        }
      }
    } catch (...) {
      // Out of memory or ids: rows already indexed must still be valid.
      for (size_t f : fresh) InitRow(keys[todo[f]], ids[f]);
      throw;
    }
  }
  admitted_ += static_cast<int64_t>(fresh.size());
  // New rows are filled and copied out in one pass, while their lines are
  // in cache; their memory (often freed by removals, anywhere in the arena)
  // is prefetched for writing a few rows ahead.
  std::vector<uint8_t> copied(count, 0);
  const size_t embedding_bytes = sizeof(float) * dim;
  runner.For(static_cast<int64_t>(fresh.size()), 100, [&](int64_t begin, int64_t end) {
    constexpr int64_t kAhead = 8;
    for (int64_t f = begin; f < end; ++f) {
      if (f + kAhead < end) arena_.PrefetchEntry(ids[fresh[f + kAhead]], /*for_write=*/true);
      const size_t j = fresh[f];
      InitRow(keys[todo[j]], ids[j]);
      std::memcpy(out + static_cast<size_t>(todo[j]) * dim, arena_.Embedding(ids[j]),
                  embedding_bytes);
      copied[j] = 1;
    }
  });
  // The others: inserted by another thread or by an earlier duplicate in
  // this batch (filled above), or not admitted.
  runner.For(static_cast<int64_t>(count), 20, [&](int64_t begin, int64_t end) {
    for (int64_t j = begin; j < end; ++j) {
      if (copied[j]) continue;
      float* dst = out + static_cast<size_t>(todo[j]) * dim;
      if (ids[j] == CuckooIndex::kNoEntry) {
        std::fill(dst, dst + dim, 0.f);  // not admitted yet: the default row
      } else {
        std::memcpy(dst, arena_.Embedding(ids[j]), sizeof(float) * dim);
      }
    }
  });
  const int64_t inserted = static_cast<int64_t>(fresh.size());
  return inserted;
}

int64_t EmbeddingTable::ApplyGradients(const int64_t* keys, const float* grads,
                                    int64_t n, float learning_rate,
                                    const int64_t* timestamps,
                                    bool per_key_timestamps,
                                    const ParallelRunner& runner) {
  CheckCount(n, "number of ids");
  if (!std::isfinite(learning_rate) || learning_rate < 0 ||
      (optimizer_->NeedsPositiveLearningRate() && learning_rate == 0)) {
    throw std::invalid_argument(
        "learning_rate must be finite and " +
        std::string(optimizer_->NeedsPositiveLearningRate() ? "> 0" : ">= 0") +
        " for optimizer '" + config_.optimizer + "', got " +
        std::to_string(learning_rate));
  }
  if (n == 0) {
    // No rows, but the batch still tells the table how late the data is.
    if (!per_key_timestamps) {
      for (int64_t seen = now_.load();
           timestamps[0] > seen && !now_.compare_exchange_weak(seen, timestamps[0]);) {
      }
    }
    return 0;
  }
  const int dim = config_.dim;
  auto update = [&](const DedupedBatch& batch, int64_t u, uint32_t id) {
    EntryHeader* header = arena_.Header(id);
    EntryWriteLock row_lock(header);
    optimizer_->Apply(arena_.Embedding(id), arena_.State(id), batch.Gradient(grads, u, dim),
                      dim, learning_rate);
    const uint64_t count = uint64_t{header->count} + batch.occurrences[u];
    header->count = static_cast<uint32_t>(std::min<uint64_t>(count, kCountMax));
    MarkChanged(batch.keys[u], id);
    header->timestamp = std::max(header->timestamp, batch.timestamps[u]);
  };

  // The batch is split by index partition; each thread dedups whole parts
  // (a key's copies all land in one part, in batch order) and updates their
  // present rows under the shared lock. Missing rows (never looked up, or
  // removed since) are inserted and updated afterwards under the exclusive
  // lock. Every distinct id is updated exactly once.
  const size_t parts = index_.num_partitions();
  std::vector<DedupedBatch> batches(parts);
  std::vector<std::vector<int64_t>> missing(parts);
  {
    SharedLock lock(*lock_);
    const InPlaceWriteSection writing(&in_place_writers_);
    ForEachGroupOnThreads(
        static_cast<size_t>(n), parts, [&](size_t i) { return index_.PartitionOf(keys[i]); },
        runner, [&](size_t part, const size_t* rows, size_t count) {
          DedupedBatch& batch = batches[part];
          batch = Dedup(keys, grads, rows, count, dim, timestamps, per_key_timestamps);
          ForEachResolved(index_, batch.keys.data(), 0, static_cast<int64_t>(batch.keys.size()),
                          [&](int64_t u, uint32_t id) {
                            arena_.PrefetchEntry(id, /*for_write=*/false);
                            // A part's gradient rows lie scattered over the batch.
                            PrefetchSpan(batch.Gradient(grads, u, dim), sizeof(float) * dim);
                          },
                          [&](int64_t u, uint32_t id) {
                            if (id == CuckooIndex::kNoEntry) {
                              missing[part].push_back(u);
                            } else {
                              update(batch, u, id);
                            }
                          });
        });
  }
  int64_t updated = 0;
  int64_t newest = std::numeric_limits<int64_t>::min();
  for (const DedupedBatch& batch : batches) {
    updated += static_cast<int64_t>(batch.keys.size());
    for (int64_t ts : batch.timestamps) newest = std::max(newest, ts);
  }
  bool any_missing = false;
  for (const auto& part_missing : missing) any_missing |= !part_missing.empty();
  if (any_missing) {
    ExclusiveLock lock(*lock_);
    for (size_t part = 0; part < parts; ++part) {
      const DedupedBatch& batch = batches[part];
      for (int64_t u : missing[part]) {
        uint32_t id = index_.Find(batch.keys[u]);
        if (id == CuckooIndex::kNoEntry) {
          // With an admission filter, ids without an entry were not admitted
          // (or were evicted): their gradients are dropped.
          if (filter_ != nullptr) {
            --updated;
            continue;
          }
          id = InsertNew(batch.keys[u]);
          ++admitted_;
          // Created by this update: its own data time, not the table's newest.
          arena_.Header(id)->timestamp = batch.timestamps[u];
        }
        update(batch, u, id);
      }
    }
  }
  for (int64_t seen = now_.load(); newest > seen && !now_.compare_exchange_weak(seen, newest);) {
  }
  if (config_.evict_every > 0 && ++applies_ % config_.evict_every == 0) EvictExpired();
  return updated;
}

int64_t EmbeddingTable::EvictExpired() {
  if (config_.expire_after <= 0) return 0;
  ExclusiveLock lock(*lock_);
  const int64_t oldest_kept = now_.load() - config_.expire_after;
  std::vector<int64_t> expired;
  index_.ForEachInRange(0, index_.num_buckets(), [&](int64_t key, uint32_t id) {
    if (arena_.Header(id)->timestamp < oldest_kept) expired.push_back(key);
  });
  for (size_t i = 0; i < expired.size(); ++i) {
    if (i + kPrefetchAhead < expired.size()) index_.Prefetch(expired[i + kPrefetchAhead]);
    arena_.Free(index_.Erase(expired[i]));
  }
  RecordRemoved(expired.begin(), expired.end());
  evicted_ += static_cast<int64_t>(expired.size());
  return static_cast<int64_t>(expired.size());
}

TableStats EmbeddingTable::Stats() const {
  TableStats stats;
  {
    SharedLock lock(*lock_);
    stats.size = static_cast<int64_t>(index_.size());
    stats.memory_bytes = static_cast<int64_t>(
        index_.memory_bytes() + arena_.memory_bytes() +
        (filter_ != nullptr ? filter_->memory_bytes() : 0));
  }
  stats.admitted = admitted_.load();
  stats.rejected = rejected_.load();
  stats.evicted = evicted_.load();
  stats.now = now_.load();
  return stats;
}

std::vector<uint8_t> EmbeddingTable::SaveFilterState() const {
  ExclusiveLock lock(*lock_);  // Observe runs under the exclusive lock
  return filter_ != nullptr ? filter_->SaveState() : std::vector<uint8_t>();
}

void EmbeddingTable::RestoreFilterState(const uint8_t* data, size_t size, int64_t now) {
  ExclusiveLock lock(*lock_);
  if (filter_ == nullptr) {
    if (size != 0) {
      throw std::invalid_argument("filter state given for a table without admission filter");
    }
  } else {
    filter_->RestoreState(data, size);
  }
  now_.store(now);
}

void EmbeddingTable::Assign(const int64_t* keys, const float* values, int64_t n) {
  CheckCount(n, "number of ids");
  const int dim = config_.dim;
  ExclusiveLock lock(*lock_);
  for (int64_t i = 0; i < n; ++i) {
    if (i + kPrefetchAhead < n) index_.Prefetch(keys[i + kPrefetchAhead]);
    uint32_t id = index_.Find(keys[i]);
    if (id == CuckooIndex::kNoEntry) id = InsertNew(keys[i]);
    std::memcpy(arena_.Embedding(id), values + static_cast<size_t>(i) * dim,
                sizeof(float) * dim);
    MarkChanged(keys[i], id);
  }
}

int64_t EmbeddingTable::Remove(const int64_t* keys, int64_t n) {
  CheckCount(n, "number of ids");
  ExclusiveLock lock(*lock_);
  int64_t removed = 0;
  for (int64_t i = 0; i < n; ++i) {
    // Expiry and eviction remove in batches: overlap the bucket misses.
    if (i + kPrefetchAhead < n) index_.Prefetch(keys[i + kPrefetchAhead]);
    const uint32_t id = index_.Erase(keys[i]);
    if (id != CuckooIndex::kNoEntry) {
      arena_.Free(id);
      RecordRemoved(keys + i, keys + i + 1);
      ++removed;
    }
  }
  return removed;
}

int64_t EmbeddingTable::Export(
    int64_t chunk, int64_t num_chunks,
    const std::function<RowBuffers(int64_t)>& allocate, bool only_dirty, bool clear_dirty) {
  if (num_chunks < 1 || chunk < 0 || chunk >= num_chunks) {
    throw std::invalid_argument("export chunk must be in [0, num_chunks) with "
                                "num_chunks >= 1, got chunk " +
                                std::to_string(chunk) + " of " +
                                std::to_string(num_chunks));
  }
  std::unique_lock<std::mutex> delta_guard(delta_mutex_, std::defer_lock);
  if (clear_dirty) delta_guard.lock();
  SharedLock lock(*lock_);
  const int dim = config_.dim, state_dim = state_dim_;
  // Copies entry `id` into output row `row`; with clear_dirty, under the
  // entry's write lock so a concurrent update either lands before the copy
  // or marks the entry dirty again after it.
  auto copy_entry = [&](const RowBuffers& out, int64_t row, int64_t key, uint32_t id) {
    EntryHeader* header = arena_.Header(id);
    auto copy = [&] {
      std::memcpy(out.values + static_cast<size_t>(row) * dim, arena_.Embedding(id),
                  sizeof(float) * dim);
      if (state_dim > 0) {
        std::memcpy(out.state + static_cast<size_t>(row) * state_dim, arena_.State(id),
                    sizeof(float) * state_dim);
      }
      out.timestamps[row] = header->timestamp;
      out.counts[row] = header->count;
    };
    out.keys[row] = key;
    if (clear_dirty) {
      EntryWriteLock row_lock(header);
      copy();
      arena_.ClearDirty(id);
    } else {
      ReadEntryConsistent(header, copy);
    }
  };
  // Chunks tile the index's buckets. A delta tests each entry's dirty bit in
  // the bitmap (cache-resident: one bit per entry) while scanning the index
  // sequentially, so it never touches the rows of clean entries.
  const size_t buckets = index_.num_buckets();
  const size_t begin = static_cast<size_t>(chunk) * buckets / num_chunks;
  const size_t end = static_cast<size_t>(chunk + 1) * buckets / num_chunks;
  int64_t row = 0;
  if (only_dirty) {
    // One pass over the index gathers the dirty entries (few, for a delta).
    std::vector<std::pair<int64_t, uint32_t>> dirty;
    index_.ForEachInRange(begin, end, [&](int64_t key, uint32_t id) {
      if (arena_.IsDirty(id)) dirty.emplace_back(key, id);
    });
    const RowBuffers out = allocate(static_cast<int64_t>(dirty.size()));
    for (const auto& [key, id] : dirty) copy_entry(out, row++, key, id);
    return row;
  }
  int64_t count = 0;
  index_.ForEachInRange(begin, end, [&](int64_t, uint32_t) { ++count; });
  const RowBuffers out = allocate(count);
  index_.ForEachInRange(begin, end, [&](int64_t key, uint32_t id) {
    if (row < count) copy_entry(out, row++, key, id);
  });
  return row;
}

std::vector<int64_t> EmbeddingTable::TakeRemoved() {
  ExclusiveLock lock(*lock_);
  track_removals_ = true;
  std::vector<int64_t> removed;
  removed.swap(removed_since_save_);
  return removed;
}

int64_t EmbeddingTable::TakeSyncChanges(const std::function<RowBuffers(int64_t)>& allocate,
                                        std::vector<int64_t>* removed) {
  std::lock_guard<std::mutex> take_guard(sync_take_mutex_);
  SharedLock lock(*lock_);
  removed->clear();
  if (!track_sync_.exchange(true)) {
    allocate(0);  // the record starts now
    return 0;
  }
  std::vector<int64_t> keys;
  {
    std::lock_guard<std::mutex> guard(sync_keys_mutex_);
    keys.swap(sync_keys_);
  }
  removed->swap(sync_removed_);  // appended under the exclusive lock only
  // A key freed and inserted again in the interval was appended twice.
  std::sort(keys.begin(), keys.end());
  keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
  std::vector<std::pair<int64_t, uint32_t>> present;
  present.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i + kPrefetchAhead < keys.size()) index_.Prefetch(keys[i + kPrefetchAhead]);
    const uint32_t id = index_.Find(keys[i]);
    if (id != CuckooIndex::kNoEntry) present.emplace_back(keys[i], id);  // else removed
  }
  const RowBuffers out = allocate(static_cast<int64_t>(present.size()));
  const int dim = config_.dim;
  int64_t row = 0;
  for (const auto& [key, id] : present) {
    EntryHeader* header = arena_.Header(id);
    EntryWriteLock row_lock(header);
    std::memcpy(out.values + static_cast<size_t>(row) * dim, arena_.Embedding(id),
                sizeof(float) * dim);
    if (out.timestamps != nullptr) out.timestamps[row] = header->timestamp;
    out.keys[row++] = key;
    arena_.ClearMark(id, EntryArena::kSyncMark);
  }
  return row;
}

void EmbeddingTable::Import(const RowsView& rows, int64_t n, bool clear) {
  CheckCount(n, "number of rows");
  // Validate everything before touching the table, so bad input loses nothing.
  for (int64_t i = 0; i < n; ++i) {
    if (rows.counts[i] < 0 || rows.counts[i] > kCountMax) {
      throw std::invalid_argument("import counts must be in [0, 2^31), got " +
                                  std::to_string(rows.counts[i]) + " at row " +
                                  std::to_string(i));
    }
  }
  const int dim = config_.dim, state_dim = state_dim_;
  ExclusiveLock lock(*lock_);
  if (clear) {
    index_.Clear();
    arena_.Reset();
  }
  index_.ReserveFor(static_cast<size_t>(n), [&](size_t i) { return rows.keys[i]; });
  for (int64_t i = 0; i < n; ++i) {
    if (i + kPrefetchAhead < n) index_.Prefetch(rows.keys[i + kPrefetchAhead]);
    uint32_t id = index_.Find(rows.keys[i]);
    if (id == CuckooIndex::kNoEntry) {
      id = arena_.Allocate();
      arena_.InitHeader(id);
      index_.Insert(rows.keys[i], id);
    }
    EntryHeader* header = arena_.Header(id);
    std::memcpy(arena_.Embedding(id), rows.values + static_cast<size_t>(i) * dim,
                sizeof(float) * dim);
    if (state_dim > 0) {
      std::memcpy(arena_.State(id), rows.state + static_cast<size_t>(i) * state_dim,
                  sizeof(float) * state_dim);
    }
    header->timestamp = rows.timestamps[i];
    header->count = static_cast<uint32_t>(rows.counts[i]);
    arena_.ClearDirty(id);  // restored rows are not news for the next delta
  }
}

}  // namespace monolith
