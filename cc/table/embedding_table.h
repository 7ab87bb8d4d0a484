// The collisionless embedding table: a cuckoo index over an entry arena, with
// keyed initializers and in-place sparse optimizers.
//
// Concurrency: lookups and gradient applies of present ids run in parallel
// under a shared lock, each row guarded by its own seqlock so a read never
// sees a half-written row; inserts, removals, growth and imports take the
// table lock exclusively. The lock prefers writers, so a stream of readers
// cannot starve inserts.
#ifndef MONOLITH_TF_CC_TABLE_EMBEDDING_TABLE_H_
#define MONOLITH_TF_CC_TABLE_EMBEDDING_TABLE_H_

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cc/table/admission_filter.h"
#include "cc/table/cuckoo_index.h"
#include "cc/table/entry_arena.h"
#include "cc/table/initializer.h"
#include "cc/table/optimizer.h"
#include "cc/table/table_config.h"

namespace monolith {

// Splits [0, n) into ranges for fn(begin, end), possibly on several threads.
// The TensorFlow bridge passes TF's intra-op pool; the default runs inline.
class ParallelRunner {
 public:
  virtual ~ParallelRunner() = default;
  // `cost_per_item` is a rough cost in nanoseconds, for choosing shard sizes.
  virtual void For(int64_t n, int64_t cost_per_item,
                   const std::function<void(int64_t, int64_t)>& fn) const {
    if (n > 0) fn(0, n);
  }
};

// Destination of an export: arrays of `count` rows, filled by the table.
struct RowBuffers {
  int64_t* keys = nullptr;
  float* values = nullptr;      // count * dim
  float* state = nullptr;       // count * state_dim
  int64_t* timestamps = nullptr;
  int64_t* counts = nullptr;
};

// Source of an import: `n` full rows.
struct RowsView {
  const int64_t* keys = nullptr;
  const float* values = nullptr;
  const float* state = nullptr;
  const int64_t* timestamps = nullptr;
  const int64_t* counts = nullptr;
};

class EmbeddingTable {
 public:
  // Throws std::invalid_argument on a bad config.
  explicit EmbeddingTable(const TableConfig& config);
  ~EmbeddingTable();
  EmbeddingTable(const EmbeddingTable&) = delete;
  EmbeddingTable& operator=(const EmbeddingTable&) = delete;

  const TableConfig& config() const { return config_; }
  int dim() const { return config_.dim; }
  int state_dim() const { return state_dim_; }
  int64_t size() const;
  // Bytes held by the index and the arena (allocated, not necessarily touched).
  size_t memory_bytes() const;
  size_t entry_bytes() const { return arena_.entry_bytes(); }

  // Copies the rows of keys[0..n) into out[0..n*dim). A missing key gets its
  // initial value and is inserted when `insert_missing` (training), or reads
  // as zeros and is not inserted (serving). Returns the number inserted.
  int64_t Lookup(const int64_t* keys, int64_t n, bool insert_missing,
                 float* out, const ParallelRunner& runner = ParallelRunner());

  // One optimizer step: gradients of duplicate keys are summed first, then
  // each distinct row is updated in place under its lock. Missing keys are
  // inserted first. `timestamps` holds n data times (seconds) or, when
  // `per_key_timestamps` is false, one for all; each row keeps the largest.
  // Returns the number of distinct rows updated.
  int64_t ApplyGradients(const int64_t* keys, const float* grads, int64_t n,
                         float learning_rate, const int64_t* timestamps,
                         bool per_key_timestamps,
                         const ParallelRunner& runner = ParallelRunner());

  // Sets the embeddings of keys[0..n) (later duplicates win). New rows get
  // initial optimizer state; existing rows keep theirs.
  void Assign(const int64_t* keys, const float* values, int64_t n);

  // Removes keys[0..n); returns how many were present. Their memory is reused.
  int64_t Remove(const int64_t* keys, int64_t n);

  // Writes chunk `chunk` of `num_chunks`: a slice of the index's buckets, or
  // with `only_dirty` the dirty entries of that slice.
  // Calls allocate(count) once, with the table locked, for the destination.
  // Chunks are consistent with each other only while no writer runs.
  // `only_dirty` keeps rows changed since their last delta export (rows
  // dirtied during the call may wait for the next one); `clear_dirty` marks
  // the exported rows clean.
  int64_t Export(int64_t chunk, int64_t num_chunks,
                 const std::function<RowBuffers(int64_t)>& allocate,
                 bool only_dirty = false, bool clear_dirty = false);

  // Keys removed or evicted since the previous call (the first call starts
  // the record, so tables never saved as deltas keep none).
  std::vector<int64_t> TakeRemoved();

  // The changed-rows record of sync pushes, separate from delta saves (a
  // push must not clear what the next delta needs, nor the reverse). Writes
  // the current embeddings (keys, values, timestamps; state and counts are
  // not filled) of rows inserted or updated since the previous call into
  // allocate(count), and swaps the keys removed or evicted since into
  // `removed`. The first call starts the record and returns no rows. Cost
  // follows the changed rows: each change appends its key once per push
  // (when its entry's sync mark goes from clear to set); a push looks the
  // keys up, copies each row under its write lock and clears the mark, so an
  // update racing with the push lands in it or marks the row for the next.
  // A key removed and then inserted again is in both lists: apply removals
  // first. Runs under the shared lock (training continues).
  int64_t TakeSyncChanges(const std::function<RowBuffers(int64_t)>& allocate,
                          std::vector<int64_t>* removed);

  // Upserts n full rows (later duplicates win); `clear` empties the table
  // first, so that import(export()) restores a table exactly.
  void Import(const RowsView& rows, int64_t n, bool clear);

  // Removes entries not updated within expire_after seconds of data time
  // before the newest data time seen; returns how many. Their memory is reused.
  int64_t EvictExpired();

  TableStats Stats() const;

  // Admission filter state and the newest data time, for checkpoints.
  std::vector<uint8_t> SaveFilterState() const;
  void RestoreFilterState(const uint8_t* data, size_t size, int64_t now);

  // Candidate buckets of `key` and the bucket count, for collision tests.
  std::pair<uint64_t, uint64_t> CandidateBuckets(int64_t key) const;
  size_t num_buckets() const;

  // The table's reader-writer lock (defined in the .cc file).
  class TableLock;

 private:
  // Inserts `key` (absent, exclusive lock held) with its initial value.
  uint32_t InsertNew(int64_t key);
  // Writes the initial embedding and optimizer state of entry `id`.
  void InitRow(int64_t key, uint32_t id);
  // Records that the row of `key` (entry `id`) changed, for the next delta
  // save and, when sync tracking is on, the next sync push. Under the entry's
  // write lock or the exclusive table lock.
  void MarkChanged(int64_t key, uint32_t id);
  // Records removed keys for delta saves and sync pushes (exclusive lock).
  template <typename It>
  void RecordRemoved(It begin, It end);
  // Maps keys[todo[j]] to ids[j] for every j < count, giving absent keys new
  // (uninitialized) rows, whose positions j go to *fresh. Placement runs on
  // the runner's threads, one partition of the index per thread at a time.
  // Exclusive lock held, no admission filter.
  void IndexMissingKeys(const int64_t* keys, const int64_t* todo, size_t count,
                        const ParallelRunner& runner, uint32_t* ids,
                        std::vector<size_t>* fresh);
  // Inserts the absent keys keys[todo[0..count)] (those the filter admits)
  // and writes every one's row to out (row todo[j] at todo[j] * dim), under
  // one hold of the exclusive lock: ids are claimed and keys indexed, then
  // new rows are filled and copied out. No reader sees a row before it is
  // filled, since readers hold the shared lock. Returns the rows inserted.
  int64_t InsertMissing(const int64_t* keys, const int64_t* todo, size_t count, float* out,
                        const ParallelRunner& runner);
  // Copies the embeddings of keys[begin, end) into out (row i at i * dim)
  // and flags absent keys in missing[i]; returns how many were absent.
  // Shared lock held.
  int64_t CopyPresentRows(const int64_t* keys, int64_t begin, int64_t end, float* out,
                          uint8_t* missing) const;
  // Marks a gradient apply's in-place row updates for readers.
  class InPlaceWriteSection;

  TableConfig config_;
  std::unique_ptr<Initializer> initializer_;
  std::unique_ptr<Optimizer> optimizer_;
  int state_dim_;
  std::unique_ptr<TableLock> lock_;
  CuckooIndex index_;
  EntryArena arena_;
  std::unique_ptr<AdmissionFilter> filter_;  // null: admit at first sight
  // Gradient applies change rows in place under the shared lock, guarded by
  // each row's seqlock. A reader that finds none running before its copies
  // and none started by the end of them skips the per-row version reads, so
  // it touches only the embeddings' cache lines.
  struct InPlaceWriters {
    std::atomic<int64_t> active{0};
    std::atomic<uint64_t> started{0};
  };
  InPlaceWriters in_place_writers_;
  std::atomic<int64_t> now_{0};
  std::atomic<int64_t> admitted_{0}, rejected_{0}, evicted_{0}, applies_{0};
  // Removals since the last TakeRemoved (exclusive lock), once tracking starts.
  std::vector<int64_t> removed_since_save_;
  bool track_removals_ = false;
  std::mutex delta_mutex_;  // one dirty-clearing export at a time
  // Sync record: keys changed since the last TakeSyncChanges (appended under
  // sync_keys_mutex_ by concurrent writers) and keys removed since
  // (exclusive lock), once tracking starts.
  std::atomic<bool> track_sync_{false};
  std::mutex sync_keys_mutex_;
  std::vector<int64_t> sync_keys_;
  std::vector<int64_t> sync_removed_;
  std::mutex sync_take_mutex_;  // one push at a time
};

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_EMBEDDING_TABLE_H_
