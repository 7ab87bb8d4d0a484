// Sparse-checkpoint row files written by the process that holds the table, so
// each parameter server writes its own shard's rows (no rows cross the
// network to be saved). The format is the one monolith_tf/sparse_checkpoint.py
// documents and reads: blocks of a header (magic "MTSPROWS", u32 version 2,
// u32 dim, u32 state_dim, u64 rows) then keys int64[rows], values
// float32[rows*dim], state float32[rows*state_dim], timestamps int64[rows],
// counts int64[rows], little-endian.
#ifndef MONOLITH_TF_CC_TABLE_ROW_FILE_H_
#define MONOLITH_TF_CC_TABLE_ROW_FILE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "cc/table/embedding_table.h"

namespace monolith {

// CRC-32 (the zlib/PNG polynomial) of data[0..size), continuing from `crc`
// (0 to start), so crc32(a + b) == Crc32(b, Crc32(a)).
uint32_t Crc32(const void* data, size_t size, uint32_t crc = 0);

struct RowFileInfo {
  std::string path;
  int64_t rows = 0;
  int64_t bytes = 0;
  uint32_t crc32 = 0;
  // Smallest and largest row data time; meaningful only when rows > 0.
  int64_t oldest_update = 0;
  int64_t newest_update = 0;
};

struct RowFileOptions {
  int64_t rows_per_block = 1 << 16;  // bounds the memory a save holds
  int64_t file_bytes = 256 << 20;    // a file rolls over past this size
  bool only_dirty = false;           // a delta: rows changed since the last one
  bool clear_dirty = false;          // mark the written rows clean
};

// Writes the table's rows (all, or the dirty ones) as row files
// `<prefix>.00000`, `<prefix>.00001`, ... one block at a time, each file
// fsynced; there is always at least one file (an empty table writes one
// empty block). Throws std::invalid_argument on bad options and
// std::system_error (errno and the file named) when a write fails, after
// removing the files it wrote.
std::vector<RowFileInfo> WriteRowFiles(EmbeddingTable& table, const std::string& prefix,
                                       const RowFileOptions& options);

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_ROW_FILE_H_
