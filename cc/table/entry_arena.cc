#include "cc/table/entry_arena.h"

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
    id = next_id_++;
    if ((id >> kChunkBits) >= chunks_.size()) {
      chunks_.push_back(Chunk{MakeHugePageArray<float>(dim_ * kChunkEntries),
                              MakeHugePageArray<char>(header_bytes_ * kChunkEntries),
                              {MakeHugePageArray<uint64_t>(kChunkEntries / 64),
                               MakeHugePageArray<uint64_t>(kChunkEntries / 64)}});
    }
  }
  return id;
}

void EntryArena::Free(uint32_t id) {
  for (int mark = 0; mark < kNumMarks; ++mark) ClearMark(id, static_cast<Mark>(mark));
  free_ids_.push_back(id);
}

void EntryArena::Reset() {
  next_id_ = 0;
  free_ids_.clear();
  for (Chunk& chunk : chunks_) {
    for (auto& marks : chunk.marks) std::memset(marks.get(), 0, kChunkEntries / 8);
  }
}

size_t EntryArena::memory_bytes() const {
  return chunks_.size() * (entry_bytes() * kChunkEntries + kNumMarks * kChunkEntries / 8) +
         free_ids_.capacity() * sizeof(uint32_t);
}

}  // namespace monolith
