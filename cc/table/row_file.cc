#include "cc/table/row_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <system_error>

namespace monolith {
namespace {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "row files are little-endian and written straight from memory");

constexpr char kMagic[8] = {'M', 'T', 'S', 'P', 'R', 'O', 'W', 'S'};
constexpr uint32_t kVersion = 2;
constexpr size_t kHeaderBytes = 8 + 4 + 4 + 4 + 8;

// Slicing-by-8 tables: table[k][b] is the CRC of byte b followed by k zeros.
struct Crc32Tables {
  std::array<std::array<uint32_t, 256>, 8> table;
  Crc32Tables() {
    for (uint32_t b = 0; b < 256; ++b) {
      uint32_t c = b;
      for (int bit = 0; bit < 8; ++bit) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; ++b) {
      for (int k = 1; k < 8; ++k) {
        table[k][b] = (table[k - 1][b] >> 8) ^ table[0][table[k - 1][b] & 0xFF];
      }
    }
  }
};

const Crc32Tables& Tables() {
  static const Crc32Tables tables;
  return tables;
}

// One output file: writes whole buffers, tracks bytes and CRC, fsyncs on close.
class RowFile {
 public:
  explicit RowFile(std::string path) {
    info_.path = std::move(path);
    fd_ = ::open(info_.path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) Fail("creating");
  }
  ~RowFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  RowFile(const RowFile&) = delete;
  RowFile& operator=(const RowFile&) = delete;

  void Write(const void* data, size_t size) {
    const char* p = static_cast<const char*>(data);
    info_.crc32 = Crc32(p, size, info_.crc32);
    info_.bytes += static_cast<int64_t>(size);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, size);
      if (n < 0) {
        if (errno == EINTR) continue;
        Fail("writing");
      }
      p += n;
      size -= static_cast<size_t>(n);
    }
  }

  void AddRows(const std::vector<int64_t>& timestamps) {
    if (timestamps.empty()) return;
    const auto [oldest, newest] = std::minmax_element(timestamps.begin(), timestamps.end());
    if (info_.rows == 0) {
      info_.oldest_update = *oldest;
      info_.newest_update = *newest;
    } else {
      info_.oldest_update = std::min(info_.oldest_update, *oldest);
      info_.newest_update = std::max(info_.newest_update, *newest);
    }
    info_.rows += static_cast<int64_t>(timestamps.size());
  }

  RowFileInfo Close() {
    if (::fsync(fd_) != 0) Fail("syncing");
    const int fd = fd_;
    fd_ = -1;
    if (::close(fd) != 0) Fail("closing");
    return info_;
  }

  const RowFileInfo& info() const { return info_; }

 private:
  [[noreturn]] void Fail(const char* what) {
    throw std::system_error(errno, std::generic_category(),
                            std::string(what) + " " + info_.path);
  }

  int fd_ = -1;
  RowFileInfo info_;
};

struct Block {
  std::vector<int64_t> keys, timestamps, counts;
  std::vector<float> values, state;
};

void WriteBlock(RowFile& file, const Block& block, int dim, int state_dim) {
  char header[kHeaderBytes];
  const uint32_t dims[3] = {kVersion, static_cast<uint32_t>(dim),
                            static_cast<uint32_t>(state_dim)};
  const uint64_t rows = block.keys.size();
  std::memcpy(header, kMagic, 8);
  std::memcpy(header + 8, dims, sizeof(dims));
  std::memcpy(header + 20, &rows, sizeof(rows));
  file.Write(header, sizeof(header));
  file.Write(block.keys.data(), rows * sizeof(int64_t));
  file.Write(block.values.data(), block.values.size() * sizeof(float));
  file.Write(block.state.data(), block.state.size() * sizeof(float));
  file.Write(block.timestamps.data(), rows * sizeof(int64_t));
  file.Write(block.counts.data(), rows * sizeof(int64_t));
  file.AddRows(block.timestamps);
}

std::string FileName(const std::string& prefix, size_t index) {
  char suffix[16];
  std::snprintf(suffix, sizeof(suffix), ".%05zu", index);
  return prefix + suffix;
}

}  // namespace

uint32_t Crc32(const void* data, size_t size, uint32_t crc) {
  const auto& t = Tables().table;
  const unsigned char* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  while (size >= 8) {
    uint32_t low, high;
    std::memcpy(&low, p, 4);
    std::memcpy(&high, p + 4, 4);
    low ^= crc;
    crc = t[7][low & 0xFF] ^ t[6][(low >> 8) & 0xFF] ^ t[5][(low >> 16) & 0xFF] ^
          t[4][low >> 24] ^ t[3][high & 0xFF] ^ t[2][(high >> 8) & 0xFF] ^
          t[1][(high >> 16) & 0xFF] ^ t[0][high >> 24];
    p += 8;
    size -= 8;
  }
  while (size-- > 0) crc = t[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
  return ~crc;
}

std::vector<RowFileInfo> WriteRowFiles(EmbeddingTable& table, const std::string& prefix,
                                       const RowFileOptions& options) {
  if (options.rows_per_block < 1 || options.file_bytes < 1) {
    throw std::invalid_argument("rows_per_block and file_bytes must be >= 1, got " +
                                std::to_string(options.rows_per_block) + " and " +
                                std::to_string(options.file_bytes));
  }
  if (prefix.empty()) throw std::invalid_argument("row file prefix must not be empty");
  const int dim = table.dim(), state_dim = table.state_dim();
  const int64_t num_blocks =
      std::max<int64_t>(1, (table.size() + options.rows_per_block - 1) / options.rows_per_block);
  std::vector<RowFileInfo> written;
  std::vector<std::string> created;
  std::unique_ptr<RowFile> file;
  Block block;
  try {
    for (int64_t chunk = 0; chunk < num_blocks; ++chunk) {
      table.Export(
          chunk, num_blocks,
          [&](int64_t count) {
            const size_t n = static_cast<size_t>(count);
            block.keys.resize(n);
            block.timestamps.resize(n);
            block.counts.resize(n);
            block.values.resize(n * dim);
            block.state.resize(n * state_dim);
            RowBuffers out;
            out.keys = block.keys.data();
            out.values = block.values.data();
            out.state = block.state.data();
            out.timestamps = block.timestamps.data();
            out.counts = block.counts.data();
            return out;
          },
          options.only_dirty, options.clear_dirty);
      // Deltas skip empty blocks, but every table has a file.
      if (block.keys.empty() && file != nullptr) continue;
      if (file != nullptr && file->info().bytes >= options.file_bytes) {
        written.push_back(file->Close());
        file.reset();
      }
      if (file == nullptr) {
        created.push_back(FileName(prefix, written.size()));
        file = std::make_unique<RowFile>(created.back());
      }
      WriteBlock(*file, block, dim, state_dim);
    }
    written.push_back(file->Close());
  } catch (...) {
    file.reset();
    for (const std::string& path : created) ::unlink(path.c_str());
    throw;
  }
  return written;
}

}  // namespace monolith
