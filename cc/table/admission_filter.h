// Admission filters: an id gets a table entry only once it has been seen
// `threshold` times in training lookups (Monolith's occurrence filter).
// Callers serialize Observe (the table calls it under its exclusive lock).
#ifndef MONOLITH_TF_CC_TABLE_ADMISSION_FILTER_H_
#define MONOLITH_TF_CC_TABLE_ADMISSION_FILTER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace monolith {

class AdmissionFilter {
 public:
  virtual ~AdmissionFilter() = default;
  // Records one occurrence of `key`; true if the key is admitted now.
  virtual bool Observe(int64_t key) = 0;
  // Opaque state for checkpoints, and its restore (throws on a bad size).
  virtual std::vector<uint8_t> SaveState() const = 0;
  virtual void RestoreState(const uint8_t* data, size_t size) = 0;
  virtual size_t memory_bytes() const = 0;
};

// Builds a filter for `threshold` >= 1 occurrences from a spec:
//   counting(width=1048576, depth=4)
//       count-min sketch of 8-bit saturating counters with conservative
//       update: never under-counts, so an id is never admitted before its
//       threshold-th occurrence; collisions can only admit early (the
//       false-admission rate). threshold must be <= 255.
//   probabilistic(admit_probability=0.95, seed=0)
//       no per-id state: each occurrence admits with probability p, chosen
//       so that an id seen `threshold` times is admitted with
//       admit_probability: p = 1 - (1 - admit_probability)^(1/threshold).
// Throws std::invalid_argument on a bad spec.
std::unique_ptr<AdmissionFilter> MakeAdmissionFilter(const std::string& spec, int threshold,
                                                     uint64_t seed);

// Checks what MakeAdmissionFilter would check, without allocating the filter.
void CheckAdmissionFilter(const std::string& spec, int threshold);

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_ADMISSION_FILTER_H_
