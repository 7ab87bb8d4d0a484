// What this machine's memory allows for the table's batch operations, with
// no hashing at all: the rows of the table's own entry arena (an embedding
// array and a header + optimizer state array) are read or written at random
// ids, batch after batch, with the same software prefetching and the same
// thread split as the table's loops. Each figure is the floor under the
// table operation named beside it; the table cannot go faster than its row
// traffic, whatever its index does.
//
//   make build/row_limit && build/row_limit [--rows 1000000] [--dim 32]
//       [--state-dim 32] [--batch 65536] [--seconds 2] [--threads 2]
//
// Prints one Markdown table of M rows/s per kind and thread count:
//   read embedding     copy the embedding out (a lookup's rows)
//   write new row      write embedding, header and state, copy the embedding
//                      out (an insert's rows, into memory already touched)
//   update row         read and write embedding, header and state (an
//                      optimizer apply's rows)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "cc/table/entry_arena.h"
#include "cc/table/hashing.h"

namespace {

using monolith::EntryArena;
using monolith::Mix64;
using monolith::PrefetchSpan;

struct Options {
  size_t rows = 1000000;
  int dim = 32;
  int state_dim = 32;
  size_t batch = 65536;
  double seconds = 2.0;
  int max_threads = 2;
};

enum class Kind { kRead, kWrite, kUpdate };

// The table's own entry arena with `n` entries allocated and every page
// touched (the table's steady state reuses memory), so the rows have its
// layout exactly.
std::unique_ptr<EntryArena> MakeRows(size_t n, int dim, int state_dim) {
  auto arena = std::make_unique<EntryArena>(dim, state_dim);
  for (size_t i = 0; i < n; ++i) {
    const uint32_t id = arena->Allocate();
    std::fill(arena->Embedding(id), arena->Embedding(id) + dim, 1.0f);
    arena->InitHeader(id);
    std::fill(arena->State(id), arena->State(id) + state_dim, 1.0f);
  }
  return arena;
}

// One thread's share of a batch: ids[begin, end), embeddings copied to `out`.
void RunShard(Kind kind, const EntryArena& rows, int dim, const uint32_t* ids, size_t begin,
              size_t end, float* out) {
  constexpr size_t kAhead = 8;
  const size_t embedding_bytes = sizeof(float) * dim;
  const size_t header_floats = rows.header_bytes() / sizeof(float);
  for (size_t i = begin; i < end; ++i) {
    if (i + kAhead < end) {
      if (kind == Kind::kRead) {
        PrefetchSpan(rows.Embedding(ids[i + kAhead]), embedding_bytes);
      } else {
        rows.PrefetchEntry(ids[i + kAhead], /*for_write=*/true);
      }
    }
    float* embedding = rows.Embedding(ids[i]);
    // The header and state as floats: only their bytes' traffic matters here.
    float* header = reinterpret_cast<float*>(rows.Header(ids[i]));
    switch (kind) {
      case Kind::kRead:
        std::memcpy(out + i * dim, embedding, embedding_bytes);
        break;
      case Kind::kWrite:
        std::fill(embedding, embedding + dim, 0.01f);
        std::fill(header, header + header_floats, 0.1f);
        std::memcpy(out + i * dim, embedding, embedding_bytes);
        break;
      case Kind::kUpdate:
        for (int d = 0; d < dim; ++d) embedding[d] -= 0.01f * embedding[d];
        for (size_t d = 0; d < header_floats; ++d) header[d] += 0.01f;
        break;
    }
  }
}

// M rows per second of `kind` on `threads` threads over `seconds`.
double MeasureRate(Kind kind, const EntryArena& rows, int dim,
                   const std::vector<std::vector<uint32_t>>& batches, int threads, double seconds,
                   float* out) {
  using Clock = std::chrono::steady_clock;
  const auto started = Clock::now();
  size_t done = 0;
  for (size_t call = 0; std::chrono::duration<double>(Clock::now() - started).count() < seconds;
       ++call) {
    const std::vector<uint32_t>& ids = batches[call % batches.size()];
    const size_t n = ids.size();
    std::vector<std::thread> pool;
    for (int t = 1; t < threads; ++t) {
      pool.emplace_back(RunShard, kind, std::cref(rows), dim, ids.data(), t * n / threads,
                        (t + 1) * n / threads, out);
    }
    RunShard(kind, rows, dim, ids.data(), 0, n / threads, out);
    for (auto& thread : pool) thread.join();
    done += n;
  }
  return done / std::chrono::duration<double>(Clock::now() - started).count() / 1e6;
}

Options Parse(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument(flag + " needs a value");
    const char* value = argv[++i];
    if (flag == "--rows") {
      options.rows = std::stoul(value);
    } else if (flag == "--dim") {
      options.dim = std::stoi(value);
    } else if (flag == "--state-dim") {
      options.state_dim = std::stoi(value);
    } else if (flag == "--batch") {
      options.batch = std::stoul(value);
    } else if (flag == "--seconds") {
      options.seconds = std::stod(value);
    } else if (flag == "--threads") {
      options.max_threads = std::stoi(value);
    } else {
      throw std::invalid_argument("unknown flag " + flag);
    }
  }
  if (options.rows == 0 || options.rows > (size_t{1} << 32) || options.dim < 1 ||
      options.state_dim < 0 || options.batch == 0 || options.seconds <= 0 ||
      options.max_threads < 1) {
    throw std::invalid_argument(
        "need --rows in [1, 2^32], --dim >= 1, --state-dim >= 0, --batch >= 1, "
        "--seconds > 0 and --threads >= 1");
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  try {
    options = Parse(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "row_limit: %s\n", e.what());
    return 2;
  }
  const std::unique_ptr<EntryArena> rows =
      MakeRows(options.rows, options.dim, options.state_dim);
  std::vector<std::vector<uint32_t>> batches(16, std::vector<uint32_t>(options.batch));
  uint64_t counter = 0;
  for (auto& batch : batches) {
    for (uint32_t& id : batch) id = static_cast<uint32_t>(Mix64(++counter) % options.rows);
  }
  std::vector<float> out(options.batch * options.dim);
  std::printf("| rows of dim %d, state %d, %zu ids per batch | threads | M rows/s |\n",
              options.dim, options.state_dim, options.batch);
  std::printf("|---|---|---|\n");
  const struct {
    Kind kind;
    const char* name;
  } kinds[] = {{Kind::kRead, "read embedding (lookup)"},
               {Kind::kWrite, "write new row (insert)"},
               {Kind::kUpdate, "update row (optimizer apply)"}};
  for (const auto& k : kinds) {
    for (int threads = 1; threads <= options.max_threads; ++threads) {
      const double rate =
          MeasureRate(k.kind, *rows, options.dim, batches, threads, options.seconds, out.data());
      std::printf("| %s | %d | %.2f |\n", k.name, threads, rate);
      std::fflush(stdout);
    }
  }
  return 0;
}
