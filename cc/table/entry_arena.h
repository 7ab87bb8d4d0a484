// Where a row lives: fixed-size entries in chunked, never-moving memory.
//
// An entry is an embedding (dim float32) plus a 16-byte header (seqlock
// version, occurrence count, last-update data time) followed by the optimizer
// state (float32). The embeddings of a chunk are one array and the headers
// with their state another, so a lookup that needs no version check touches
// only the embedding's own cache lines (two at dim 32, as a dense gather
// does) instead of a header line as well. Entries are addressed by a 32-bit
// id; freed ids are reused first.
#ifndef MONOLITH_TF_CC_TABLE_ENTRY_ARENA_H_
#define MONOLITH_TF_CC_TABLE_ENTRY_ARENA_H_

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <vector>

#include "cc/table/hashing.h"
#include "cc/table/huge_pages.h"

namespace monolith {

struct EntryHeader {
  // Even: stable; odd: a writer is changing the entry (seqlock).
  std::atomic<uint32_t> version;
  // Occurrences of the id in applied gradient batches (saturating at
  // kCountMax).
  uint32_t count;
  // Largest data time (seconds) among those occurrences; 0 if never updated.
  int64_t timestamp;
};
static_assert(sizeof(EntryHeader) == 16, "entry header must stay 16 bytes");

constexpr uint32_t kCountMax = (1u << 31) - 1;

class EntryArena {
 public:
  // Entries of `dim` embedding floats and `state_dim` optimizer state floats.
  EntryArena(int dim, int state_dim);

  // Returns the id of a free entry. Its memory is not touched here: the
  // caller must InitHeader() it (possibly on another thread) before use.
  uint32_t Allocate();
  // Resets the header of entry `id`: unlocked, count 0, timestamp 0.
  void InitHeader(uint32_t id) const {
    EntryHeader* header = new (Header(id)) EntryHeader;
    header->version.store(0, std::memory_order_relaxed);
    header->count = 0;
    header->timestamp = 0;
  }
  // Frees entry `id` (its marks go with it).
  void Free(uint32_t id);
  // Maps and commits the chunks that `upcoming` more Allocate calls would
  // open, so that a caller holding a lock around those calls and the first
  // writes to the entries does not wait for fresh pages meanwhile (tens of
  // ms per chunk where committing memory is slow). commit(data, bytes)
  // commits each buffer of a new chunk (CommitPages, or it on several threads).
  // Thread-safe, also against Allocate; meant to run before taking that
  // lock. A no-op while free entries or mapped room suffice.
  template <typename Commit>
  void PrepareChunksFor(size_t upcoming, Commit&& commit);
  void PrepareChunksFor(size_t upcoming) { PrepareChunksFor(upcoming, CommitPages); }
  // Drops every entry but keeps the chunks for reuse.
  void Reset();

  EntryHeader* Header(uint32_t id) const {
    return reinterpret_cast<EntryHeader*>(chunks_[id >> kChunkBits].headers.get() +
                                          (id & kChunkMask) * header_bytes_);
  }
  // The embedding of entry `id` (dim floats).
  float* Embedding(uint32_t id) const {
    return chunks_[id >> kChunkBits].embeddings.get() +
           static_cast<size_t>(id & kChunkMask) * dim_;
  }
  // The optimizer state of entry `id` (state_dim floats, after its header).
  float* State(uint32_t id) const { return reinterpret_cast<float*>(Header(id) + 1); }
  // Brings every line of entry `id` (embedding, header and state) towards
  // the cache, writable when `for_write`.
  void PrefetchEntry(uint32_t id, bool for_write) const {
    PrefetchSpan(Embedding(id), sizeof(float) * dim_, for_write);
    PrefetchSpan(Header(id), header_bytes_, for_write);
  }
  // Change marks, one bit per entry per consumer of changes: kDeltaMark
  // (the entry changed since a delta save last copied it) and kSyncMark (since
  // a sync push last copied it). Bitmaps rather than header bits so that a
  // delta save reads a cache-resident bit per entry instead of touching every
  // row. Set and cleared under the entry's write lock; atomic because 64
  // entries share a word.
  enum Mark { kDeltaMark = 0, kSyncMark = 1, kNumMarks = 2 };
  // Sets the mark; returns whether it was clear before.
  bool SetMark(uint32_t id, Mark mark) const {
    uint64_t* word = MarkWord(id, mark);
    const uint64_t bit = uint64_t{1} << (id & 63);
    // Read first: re-marking a hot row then costs no cache-line write.
    if ((__atomic_load_n(word, __ATOMIC_RELAXED) & bit) != 0) return false;
    return (__atomic_fetch_or(word, bit, __ATOMIC_RELAXED) & bit) == 0;
  }
  void ClearMark(uint32_t id, Mark mark) const {
    __atomic_fetch_and(MarkWord(id, mark), ~(uint64_t{1} << (id & 63)), __ATOMIC_RELAXED);
  }
  bool HasMark(uint32_t id, Mark mark) const {
    return (__atomic_load_n(MarkWord(id, mark), __ATOMIC_RELAXED) >> (id & 63)) & 1;
  }
  // The delta-save mark, by its old name.
  void MarkDirty(uint32_t id) const { SetMark(id, kDeltaMark); }
  void ClearDirty(uint32_t id) const { ClearMark(id, kDeltaMark); }
  bool IsDirty(uint32_t id) const { return HasMark(id, kDeltaMark); }

  // Bytes per entry: the embedding plus the header with the state.
  size_t entry_bytes() const { return sizeof(float) * dim_ + header_bytes_; }
  // Bytes of the header with the state (rounded up to 8 to keep headers aligned).
  size_t header_bytes() const { return header_bytes_; }
  size_t live_entries() const { return next_id_ - free_ids_.size(); }
  size_t memory_bytes() const;

 private:
  static constexpr int kChunkBits = 16;
  static constexpr uint32_t kChunkMask = (1u << kChunkBits) - 1;

  static constexpr size_t kChunkEntries = size_t{1} << kChunkBits;

  struct Chunk {
    HugePageArray<float> embeddings;          // kChunkEntries * dim_
    HugePageArray<char> headers;              // kChunkEntries * header_bytes_
    HugePageArray<uint64_t> marks[kNumMarks]; // kChunkEntries bits each
  };
  Chunk NewChunk() const;
  // Entries Allocate can hand out before it opens a chunk; kept for
  // PrepareChunksFor, which runs without the owner's lock.
  void UpdateRoom() {
    room_.store((chunks_.size() << kChunkBits) - next_id_ + free_ids_.size(),
                std::memory_order_relaxed);
  }
  uint64_t* MarkWord(uint32_t id, Mark mark) const {
    return &chunks_[id >> kChunkBits].marks[mark][(id & kChunkMask) >> 6];
  }

  size_t dim_;
  size_t header_bytes_;
  // Chunks are mapped untouched, so pages never used cost no memory.
  std::vector<Chunk> chunks_;
  uint32_t next_id_ = 0;
  std::vector<uint32_t> free_ids_;
  std::atomic<size_t> room_{0};
  static constexpr size_t kMaxSpareChunks = 4;
  mutable std::mutex spares_mutex_;
  std::vector<Chunk> spare_chunks_;  // committed, guarded by spares_mutex_
};

template <typename Commit>
void EntryArena::PrepareChunksFor(size_t upcoming, Commit&& commit) {
  const size_t room = room_.load(std::memory_order_relaxed);
  if (upcoming <= room) return;
  const size_t wanted =
      std::min(kMaxSpareChunks, (upcoming - room + kChunkEntries - 1) / kChunkEntries);
  for (;;) {
    {
      std::lock_guard<std::mutex> lock(spares_mutex_);
      if (spare_chunks_.size() >= wanted) return;
    }
    // Mapped and committed outside the mutex, so Allocate never waits for it.
    Chunk chunk = NewChunk();
    commit(static_cast<void*>(chunk.embeddings.get()), sizeof(float) * dim_ * kChunkEntries);
    commit(static_cast<void*>(chunk.headers.get()), header_bytes_ * kChunkEntries);
    for (auto& marks : chunk.marks) commit(static_cast<void*>(marks.get()), kChunkEntries / 8);
    std::lock_guard<std::mutex> lock(spares_mutex_);
    if (spare_chunks_.size() >= wanted) return;
    spare_chunks_.push_back(std::move(chunk));
  }
}

// Exclusive access to one entry for a writer; readers retry meanwhile.
class EntryWriteLock {
 public:
  explicit EntryWriteLock(EntryHeader* header) : header_(header) {
    uint32_t v = header_->version.load(std::memory_order_relaxed);
    for (;;) {
      if ((v & 1) == 0 &&
          header_->version.compare_exchange_weak(v, v + 1,
                                                 std::memory_order_acquire)) {
        break;
      }
      __builtin_ia32_pause();
      v = header_->version.load(std::memory_order_relaxed);
    }
  }
  ~EntryWriteLock() {
    header_->version.fetch_add(1, std::memory_order_release);
  }
  EntryWriteLock(const EntryWriteLock&) = delete;
  EntryWriteLock& operator=(const EntryWriteLock&) = delete;

 private:
  EntryHeader* header_;
};

// Runs `copy()` until it saw the entry without a concurrent writer, so the
// copy is never torn. `copy` must only read the entry.
template <typename CopyFn>
inline void ReadEntryConsistent(const EntryHeader* header, CopyFn&& copy) {
  for (;;) {
    const uint32_t before = header->version.load(std::memory_order_acquire);
    if (before & 1) {
      __builtin_ia32_pause();
      continue;
    }
    copy();
    std::atomic_thread_fence(std::memory_order_acquire);
    if (header->version.load(std::memory_order_relaxed) == before) return;
  }
}

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_ENTRY_ARENA_H_
