// pybind11 bindings of the TF-free core, for tests and benchmarks that run
// without TensorFlow. Arrays are numpy; long calls release the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <iterator>
#include <stdexcept>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "cc/table/embedding_table.h"
#include "cc/table/row_file.h"
#include "cc/table/sharding.h"

namespace py = pybind11;
using monolith::EmbeddingTable;
using monolith::TableConfig;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Splits work over `threads` std::threads (1 runs inline).
class ThreadRunner : public monolith::ParallelRunner {
 public:
  explicit ThreadRunner(int threads) : threads_(std::max(1, threads)) {}
  void For(int64_t n, int64_t, const std::function<void(int64_t, int64_t)>& fn)
      const override {
    const int64_t shards = std::min<int64_t>(threads_, n);
    if (shards <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    std::vector<std::thread> pool;
    for (int64_t s = 1; s < shards; ++s) {
      pool.emplace_back(fn, s * n / shards, (s + 1) * n / shards);
    }
    fn(0, n / shards);
    for (auto& t : pool) t.join();
  }

 private:
  int threads_;
};

int64_t CheckKeys(const CArray<int64_t>& keys) {
  if (keys.ndim() != 1) {
    throw std::invalid_argument("keys must be 1-D, got rank " +
                                std::to_string(keys.ndim()));
  }
  return keys.shape(0);
}

void CheckRows(const CArray<float>& rows, int64_t n, int width, const char* what) {
  if (rows.ndim() != 2 || rows.shape(0) != n || rows.shape(1) != width) {
    throw std::invalid_argument(std::string(what) + " must have shape (" +
                                std::to_string(n) + ", " + std::to_string(width) + ")");
  }
}

// Keyword defaults of EmbeddingTable(): the core's.
const TableConfig kDefaults;

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "TF-free core of monolith_tf: the cuckoo-hash embedding table.";
  // A failed file write is an OSError carrying its errno, as Python's own.
  py::register_exception_translator([](std::exception_ptr error) {
    try {
      if (error) std::rethrow_exception(error);
    } catch (const std::system_error& e) {
      PyErr_SetObject(PyExc_OSError,
                      py::make_tuple(e.code().value(), std::string(e.what())).ptr());
    }
  });
  m.def("shard_of",
        [](const CArray<int64_t>& keys, int num_shards) {
          if (num_shards < 1) throw std::invalid_argument("num_shards must be >= 1");
          const int64_t n = CheckKeys(keys);
          py::array_t<int32_t> out(n);
          auto k = keys.unchecked<1>();
          auto o = out.mutable_unchecked<1>();
          for (int64_t i = 0; i < n; ++i) o(i) = monolith::ShardOf(k(i), num_shards);
          return out;
        },
        py::arg("keys"), py::arg("num_shards"),
        "The shard of each id in a table sharded num_shards ways (cc/table/sharding.h).");
  m.def("crc32",
        [](const py::bytes& data, uint32_t crc) {
          const std::string_view view = data;
          return monolith::Crc32(view.data(), view.size(), crc);
        },
        py::arg("data"), py::arg("crc") = 0,
        "CRC-32 of data continuing from crc, as zlib.crc32 (cc/table/row_file.h).");
  m.def("table_schema_json", &monolith::TableSchemaJson,
        "Defaults, stats and row field names (as the op library reports them).");
  py::class_<EmbeddingTable>(m, "EmbeddingTable")
      .def(py::init([](int dim, const std::string& initializer,
                       const std::string& optimizer, uint64_t seed,
                       int64_t capacity_hint, int occurrence_threshold,
                       const std::string& admission_filter, int64_t expire_after,
                       int64_t evict_every) {
             TableConfig config;
             config.dim = dim;
             config.initializer = initializer;
             config.optimizer = optimizer;
             config.seed = seed;
             config.capacity_hint = capacity_hint;
             config.occurrence_threshold = occurrence_threshold;
             config.admission_filter = admission_filter;
             config.expire_after = expire_after;
             config.evict_every = evict_every;
             return new EmbeddingTable(config);
           }),
           py::arg("dim"), py::arg("initializer") = kDefaults.initializer,
           py::arg("optimizer") = kDefaults.optimizer, py::arg("seed") = kDefaults.seed,
           py::arg("capacity_hint") = kDefaults.capacity_hint,
           py::arg("occurrence_threshold") = kDefaults.occurrence_threshold,
           py::arg("admission_filter") = kDefaults.admission_filter,
           py::arg("expire_after") = kDefaults.expire_after,
           py::arg("evict_every") = kDefaults.evict_every)
      .def("evict_expired", [](EmbeddingTable& t) {
        py::gil_scoped_release release;
        return t.EvictExpired();
      })
      .def("stats", [](const EmbeddingTable& t) {
        const auto values = t.Stats().Values();
        const auto& names = monolith::TableStats::FieldNames();
        py::dict d;
        for (size_t i = 0; i < values.size(); ++i) d[names[i]] = values[i];
        return d;
      })
      .def("save_filter_state", [](const EmbeddingTable& t) {
        const std::vector<uint8_t> state = t.SaveFilterState();
        return py::bytes(reinterpret_cast<const char*>(state.data()), state.size());
      })
      .def("restore_filter_state", [](EmbeddingTable& t, const py::bytes& state, int64_t now) {
        const std::string data = state;
        t.RestoreFilterState(reinterpret_cast<const uint8_t*>(data.data()), data.size(), now);
      })
      .def_property_readonly("dim", &EmbeddingTable::dim)
      .def_property_readonly("state_dim", &EmbeddingTable::state_dim)
      .def_property_readonly("entry_bytes", &EmbeddingTable::entry_bytes)
      .def_property_readonly("num_buckets", &EmbeddingTable::num_buckets)
      .def("size", &EmbeddingTable::size)
      .def("memory_bytes", &EmbeddingTable::memory_bytes)
      .def("lookup",
           [](EmbeddingTable& t, const CArray<int64_t>& keys, bool insert_missing,
              int threads) {
             const int64_t n = CheckKeys(keys);
             py::array_t<float> out({n, static_cast<int64_t>(t.dim())});
             const int64_t* k = keys.data();
             float* o = out.mutable_data();
             py::gil_scoped_release release;
             t.Lookup(k, n, insert_missing, o, ThreadRunner(threads));
             return out;
           },
           py::arg("keys"), py::arg("insert_missing") = true, py::arg("threads") = 1)
      .def("apply_gradients",
           [](EmbeddingTable& t, const CArray<int64_t>& keys,
              const CArray<float>& grads, float learning_rate,
              const CArray<int64_t>& timestamps, int threads) {
             const int64_t n = CheckKeys(keys);
             CheckRows(grads, n, t.dim(), "grads");
             const bool per_key = timestamps.ndim() == 1;
             if (!(timestamps.ndim() == 0 || (per_key && timestamps.shape(0) == n))) {
               throw std::invalid_argument("timestamps must be a scalar or have one per key");
             }
             const int64_t* k = keys.data();
             const float* g = grads.data();
             const int64_t* ts = timestamps.data();
             py::gil_scoped_release release;
             t.ApplyGradients(k, g, n, learning_rate, ts, per_key, ThreadRunner(threads));
           },
           py::arg("keys"), py::arg("grads"), py::arg("learning_rate"),
           py::arg("timestamps") = CArray<int64_t>(std::vector<py::ssize_t>{}),
           py::arg("threads") = 1)
      .def("assign",
           [](EmbeddingTable& t, const CArray<int64_t>& keys, const CArray<float>& values) {
             const int64_t n = CheckKeys(keys);
             CheckRows(values, n, t.dim(), "values");
             const int64_t* k = keys.data();
             const float* v = values.data();
             py::gil_scoped_release release;
             t.Assign(k, v, n);
           })
      .def("remove",
           [](EmbeddingTable& t, const CArray<int64_t>& keys) {
             const int64_t n = CheckKeys(keys);
             const int64_t* k = keys.data();
             py::gil_scoped_release release;
             return t.Remove(k, n);
           })
      .def("take_removed", [](EmbeddingTable& t) {
        const std::vector<int64_t> removed = t.TakeRemoved();
        py::array_t<int64_t> out(static_cast<py::ssize_t>(removed.size()));
        std::copy(removed.begin(), removed.end(), out.mutable_data());
        return out;
      })
      .def("take_sync_changes", [](EmbeddingTable& t) {
        py::array_t<int64_t> keys, timestamps;
        py::array_t<float> values;
        const int64_t dim = t.dim();
        std::vector<int64_t> removed;
        t.TakeSyncChanges([&](int64_t count) {
          keys = py::array_t<int64_t>(count);
          values = py::array_t<float>({count, dim});
          timestamps = py::array_t<int64_t>(count);
          monolith::RowBuffers out;
          out.keys = keys.mutable_data();
          out.values = values.mutable_data();
          out.timestamps = timestamps.mutable_data();
          return out;
        }, &removed);
        py::array_t<int64_t> removed_out(static_cast<py::ssize_t>(removed.size()));
        std::copy(removed.begin(), removed.end(), removed_out.mutable_data());
        py::dict d;
        d["keys"] = keys;
        d["values"] = values;
        d["timestamps"] = timestamps;
        d["removed"] = removed_out;
        return d;
      })
      .def("export",
           [](EmbeddingTable& t, int64_t chunk, int64_t num_chunks, bool only_dirty,
              bool clear_dirty) {
             py::array_t<int64_t> keys, timestamps, counts;
             py::array_t<float> values, state;
             const int64_t dim = t.dim(), state_dim = t.state_dim();
             t.Export(chunk, num_chunks, [&](int64_t count) {
               keys = py::array_t<int64_t>(count);
               values = py::array_t<float>({count, dim});
               state = py::array_t<float>({count, state_dim});
               timestamps = py::array_t<int64_t>(count);
               counts = py::array_t<int64_t>(count);
               monolith::RowBuffers out;
               out.keys = keys.mutable_data();
               out.values = values.mutable_data();
               out.state = state.mutable_data();
               out.timestamps = timestamps.mutable_data();
               out.counts = counts.mutable_data();
               return out;
             }, only_dirty, clear_dirty);
             // In the core's field order (RowFieldNames).
             const py::object fields[] = {keys, values, state, timestamps, counts};
             static_assert(std::size(fields) == monolith::kNumRowFields);
             py::dict d;
             for (int i = 0; i < monolith::kNumRowFields; ++i) {
               d[monolith::RowFieldNames()[i]] = fields[i];
             }
             return d;
           },
           py::arg("chunk") = 0, py::arg("num_chunks") = 1, py::arg("only_dirty") = false,
           py::arg("clear_dirty") = false)
      .def("write_row_files",
           [](EmbeddingTable& t, const std::string& prefix, int64_t rows_per_block,
              int64_t file_bytes, bool only_dirty, bool clear_dirty) {
             monolith::RowFileOptions options;
             options.rows_per_block = rows_per_block;
             options.file_bytes = file_bytes;
             options.only_dirty = only_dirty;
             options.clear_dirty = clear_dirty;
             std::vector<monolith::RowFileInfo> files;
             {
               py::gil_scoped_release release;
               files = monolith::WriteRowFiles(t, prefix, options);
             }
             py::list out;
             for (const auto& f : files) {
               py::dict d;
               d["path"] = f.path;
               d["rows"] = f.rows;
               d["bytes"] = f.bytes;
               d["crc32"] = f.crc32;
               d["oldest_update"] = f.oldest_update;
               d["newest_update"] = f.newest_update;
               out.append(d);
             }
             return out;
           },
           py::arg("prefix"), py::arg("rows_per_block") = 1 << 16,
           py::arg("file_bytes") = int64_t{256} << 20, py::arg("only_dirty") = false,
           py::arg("clear_dirty") = false,
           "Writes the rows as sparse-checkpoint row files <prefix>.00000, ...; "
           "returns one dict per file.")
      .def("import_rows",
           [](EmbeddingTable& t, const CArray<int64_t>& keys, const CArray<float>& values,
              const CArray<float>& state, const CArray<int64_t>& timestamps,
              const CArray<int64_t>& counts, bool clear) {
             const int64_t n = CheckKeys(keys);
             CheckRows(values, n, t.dim(), "values");
             CheckRows(state, n, t.state_dim(), "state");
             if (timestamps.ndim() != 1 || timestamps.shape(0) != n ||
                 counts.ndim() != 1 || counts.shape(0) != n) {
               throw std::invalid_argument("timestamps and counts must have one per key");
             }
             monolith::RowsView rows;
             rows.keys = keys.data();
             rows.values = values.data();
             rows.state = state.data();
             rows.timestamps = timestamps.data();
             rows.counts = counts.data();
             py::gil_scoped_release release;
             t.Import(rows, n, clear);
           },
           py::arg("keys"), py::arg("values"), py::arg("state"), py::arg("timestamps"),
           py::arg("counts"), py::arg("clear") = false)
      .def("candidate_buckets", [](const EmbeddingTable& t, const CArray<int64_t>& keys) {
        const int64_t n = CheckKeys(keys);
        py::array_t<uint64_t> b1(n), b2(n);
        auto k = keys.unchecked<1>();
        auto o1 = b1.mutable_unchecked<1>();
        auto o2 = b2.mutable_unchecked<1>();
        for (int64_t i = 0; i < n; ++i) {
          const auto pair = t.CandidateBuckets(k(i));
          o1(i) = pair.first;
          o2(i) = pair.second;
        }
        return py::make_tuple(b1, b2);
      });
}
