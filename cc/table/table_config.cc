#include "cc/table/table_config.h"

#include <cstdio>
#include <sstream>
#include <stdexcept>

#include "cc/table/admission_filter.h"
#include "cc/table/initializer.h"
#include "cc/table/optimizer.h"

namespace monolith {
namespace {

void CheckRange(int64_t value, int64_t low, int64_t high, const std::string& what) {
  if (value < low || value > high) {
    throw std::invalid_argument(what + " must be in [" + std::to_string(low) + ", " +
                                std::to_string(high) + "], got " + std::to_string(value));
  }
}

void CheckNonNegative(int64_t value, const std::string& what) {
  if (value < 0) {
    throw std::invalid_argument(what + " must be >= 0, got " + std::to_string(value));
  }
}

void CheckDim(int64_t dim) {
  if (dim <= 0 || dim > kMaxDim) {
    throw std::invalid_argument("dim must be > 0 and <= " + std::to_string(kMaxDim) +
                                ", got " + std::to_string(dim));
  }
}

// JSON string literal of `text` (specs are ASCII; control bytes escaped).
std::string Quoted(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buffer[8];
      std::snprintf(buffer, sizeof(buffer), "\\u%04x", c);
      out += buffer;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

template <size_t N>
std::string JsonList(const std::array<const char*, N>& names) {
  std::string out = "[";
  for (size_t i = 0; i < N; ++i) out += (i ? ", " : "") + Quoted(names[i]);
  return out + "]";
}

}  // namespace

void ValidateTableConfig(const TableConfig& config) {
  CheckDim(config.dim);
  CheckNonNegative(config.capacity_hint, "capacity_hint");
  CheckRange(config.occurrence_threshold, 0, kMaxOccurrenceThreshold, "occurrence_threshold");
  CheckNonNegative(config.expire_after, "expire_after (seconds)");
  CheckNonNegative(config.evict_every, "evict_every");
  MakeInitializer(config.initializer, config.seed);
  MakeOptimizer(config.optimizer);
  if (config.occurrence_threshold > 0) {
    CheckAdmissionFilter(config.admission_filter, config.occurrence_threshold);
  }
}

bool SameTableConfig(const TableConfig& existing, const TableConfig& wanted) {
  return existing.dim == wanted.dim && existing.initializer == wanted.initializer &&
         existing.optimizer == wanted.optimizer && existing.seed == wanted.seed &&
         existing.occurrence_threshold == wanted.occurrence_threshold &&
         existing.admission_filter == wanted.admission_filter &&
         existing.expire_after == wanted.expire_after &&
         existing.evict_every == wanted.evict_every;
}

std::string DescribeTableConfig(const TableConfig& c) {
  std::ostringstream out;
  out << "dim=" << c.dim << ", initializer=" << c.initializer << ", optimizer=" << c.optimizer
      << ", seed=" << c.seed << ", occurrence_threshold=" << c.occurrence_threshold
      << ", admission_filter=" << c.admission_filter << ", expire_after=" << c.expire_after
      << ", evict_every=" << c.evict_every;
  return out.str();
}

int OptimizerStateDim(const std::string& optimizer, int dim) {
  CheckDim(dim);
  return MakeOptimizer(optimizer)->StateDim(dim);
}

const std::array<const char*, TableStats::kNumFields>& TableStats::FieldNames() {
  static const std::array<const char*, kNumFields> names = {
      "size", "admitted", "rejected", "evicted", "memory_bytes", "now"};
  return names;
}

const std::array<const char*, kNumRowFields>& RowFieldNames() {
  static const std::array<const char*, kNumRowFields> names = {
      "keys", "values", "state", "timestamps", "counts"};
  return names;
}

const std::array<const char*, kNumRowFields>& RowFieldTypes() {
  static const std::array<const char*, kNumRowFields> types = {
      "int64", "float32", "float32", "int64", "int64"};
  return types;
}

std::string TableSchemaJson() {
  const TableConfig d;
  std::ostringstream out;
  out << "{\"defaults\": {\"initializer\": " << Quoted(d.initializer)
      << ", \"optimizer\": " << Quoted(d.optimizer) << ", \"seed\": " << d.seed
      << ", \"capacity_hint\": " << d.capacity_hint
      << ", \"occurrence_threshold\": " << d.occurrence_threshold
      << ", \"admission_filter\": " << Quoted(d.admission_filter)
      << ", \"expire_after\": " << d.expire_after << ", \"evict_every\": " << d.evict_every
      << "}, \"stats_fields\": " << JsonList(TableStats::FieldNames())
      << ", \"row_fields\": [";
  for (int i = 0; i < kNumRowFields; ++i) {
    out << (i ? ", " : "") << "[" << Quoted(RowFieldNames()[i]) << ", "
        << Quoted(RowFieldTypes()[i]) << "]";
  }
  out << "], \"max_dim\": " << kMaxDim
      << "}";
  return out.str();
}

}  // namespace monolith
