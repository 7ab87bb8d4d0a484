// A table's configuration, its defaults and its validation, and the names of
// the fields the table reports (stats, exported rows). Every bridge (the
// TensorFlow ops, the pybind module, Python through the op library) takes
// these facts from here, so each is written once.
#ifndef MONOLITH_TF_CC_TABLE_TABLE_CONFIG_H_
#define MONOLITH_TF_CC_TABLE_TABLE_CONFIG_H_

#include <array>
#include <cstdint>
#include <string>

namespace monolith {

// Largest embedding width a table accepts (floats per row).
constexpr int kMaxDim = 1 << 20;
// Largest occurrence threshold (a counting filter further caps it at 255).
constexpr int kMaxOccurrenceThreshold = 1 << 30;

struct TableConfig {
  int dim = 0;
  std::string initializer = "uniform(minval=-0.05, maxval=0.05)";
  std::string optimizer = "adagrad";
  uint64_t seed = 0;
  // Rows that fit before the index first grows.
  int64_t capacity_hint = 0;
  // Memory control. An id gets an entry at its occurrence_threshold-th
  // training lookup (0: at the first); until then it reads as zeros and its
  // gradients are dropped. admission_filter is a spec (admission_filter.h).
  int occurrence_threshold = 0;
  std::string admission_filter = "counting";
  // Entries whose last update is more than expire_after seconds of data time
  // older than the newest data time seen are evicted by EvictExpired (0: off),
  // automatically after every evict_every-th gradient apply (0: never).
  int64_t expire_after = 0;
  int64_t evict_every = 0;
};

// Throws std::invalid_argument naming the first field of `config` that is out
// of range or whose spec (initializer, optimizer, admission filter when
// occurrence_threshold > 0) does not parse. Builds no table: cheap.
void ValidateTableConfig(const TableConfig& config);

// Whether a table created with `existing` may serve a request for `wanted`
// (a shared table found by name): every field but capacity_hint, which is
// only a sizing hint, must be equal.
bool SameTableConfig(const TableConfig& existing, const TableConfig& wanted);

// "dim=8, initializer=zeros, optimizer=sgd, seed=0, ..." for messages.
std::string DescribeTableConfig(const TableConfig& config);

// Floats of optimizer state per row for the optimizer spec at `dim`.
// Throws std::invalid_argument on a bad spec.
int OptimizerStateDim(const std::string& optimizer, int dim);

// Counters of one table (ids, bytes, seconds of data time).
struct TableStats {
  int64_t size = 0;
  int64_t admitted = 0;   // entries created by training lookups and applies
  int64_t rejected = 0;   // occurrences the admission filter turned away
  int64_t evicted = 0;    // entries removed by expiry
  int64_t memory_bytes = 0;
  int64_t now = 0;        // newest data time seen

  static constexpr int kNumFields = 6;
  // Names of the fields, in the order of Values().
  static const std::array<const char*, kNumFields>& FieldNames();
  std::array<int64_t, kNumFields> Values() const {
    return {size, admitted, rejected, evicted, memory_bytes, now};
  }
};

// Fields of exported and imported rows, in the order the export op outputs
// and the import op takes them: keys, values (dim floats), state (state_dim
// floats), timestamps (data time, seconds), counts (occurrences).
constexpr int kNumRowFields = 5;
const std::array<const char*, kNumRowFields>& RowFieldNames();
// Element types of those fields ("int64" or "float32"), in the same order.
const std::array<const char*, kNumRowFields>& RowFieldTypes();

// The facts above as one JSON object, for bridges that are not C++:
// {"defaults": {...TableConfig fields but dim...}, "stats_fields": [...],
//  "row_fields": [[name, dtype], ...], "max_dim": N}.
std::string TableSchemaJson();

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_TABLE_CONFIG_H_
