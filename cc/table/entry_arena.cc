#include "cc/table/entry_arena.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <stdexcept>

namespace monolith {

EntryArena::EntryArena(int dim, int state_dim)
    : dim_(static_cast<size_t>(dim)),
      // Round up to 8 bytes so every header's timestamp stays aligned.
      header_bytes_((sizeof(EntryHeader) + sizeof(float) * state_dim + 7) & ~size_t{7}) {}

uint32_t EntryArena::Allocate() {
  uint32_t id;
  if (!free_ids_.empty()) {
    id = free_ids_.back();
    free_ids_.pop_back();
  } else {
    if (next_id_ == 0xffffffffu) {
      throw std::length_error("embedding table is full: 2^32 - 1 entries");
    }
    if ((next_id_ >> kChunkBits) >= chunks_.size()) {
      Chunk chunk;
      {
        std::lock_guard<std::mutex> lock(spares_mutex_);
        if (!spare_chunks_.empty()) {
          chunk = std::move(spare_chunks_.back());
          spare_chunks_.pop_back();
        }
      }
      chunks_.push_back(chunk.embeddings ? std::move(chunk) : NewChunk());
    }
    id = next_id_++;
  }
  UpdateRoom();
  return id;
}

EntryArena::Chunk EntryArena::NewChunk() const {
  return Chunk{MakeHugePageArray<float>(dim_ * kChunkEntries),
               MakeHugePageArray<char>(header_bytes_ * kChunkEntries),
               {MakeHugePageArray<uint64_t>(kChunkEntries / 64),
                MakeHugePageArray<uint64_t>(kChunkEntries / 64)}};
}

void EntryArena::Free(uint32_t id) {
  for (int mark = 0; mark < kNumMarks; ++mark) ClearMark(id, static_cast<Mark>(mark));
  free_ids_.push_back(id);
  UpdateRoom();
}

void EntryArena::Reset() {
  next_id_ = 0;
  free_ids_.clear();
  for (Chunk& chunk : chunks_) {
    for (auto& marks : chunk.marks) std::memset(marks.get(), 0, kChunkEntries / 8);
  }
  UpdateRoom();
}

size_t EntryArena::memory_bytes() const {
  size_t spares;
  {
    std::lock_guard<std::mutex> lock(spares_mutex_);
    spares = spare_chunks_.size();
  }
  return (chunks_.size() + spares) *
             (entry_bytes() * kChunkEntries + kNumMarks * kChunkEntries / 8) +
         free_ids_.capacity() * sizeof(uint32_t);
}

}  // namespace monolith
