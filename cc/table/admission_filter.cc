#include "cc/table/admission_filter.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "cc/table/hashing.h"
#include "cc/table/spec.h"

namespace monolith {
namespace {

class CountingFilter : public AdmissionFilter {
 public:
  CountingFilter(int threshold, size_t width, int depth, uint64_t seed)
      : threshold_(threshold), width_(width), depth_(depth), seed_(Mix64(seed ^ 0xadd1ULL)),
        counters_(width * depth, 0) {}

  bool Observe(int64_t key) override {
    size_t slot[kMaxDepth];
    uint8_t lowest = 255;
    for (int row = 0; row < depth_; ++row) {
      slot[row] = row * width_ + (Mix64(static_cast<uint64_t>(key) ^ (seed_ + row * kRowSalt)) &
                                  (width_ - 1));
      lowest = std::min(lowest, counters_[slot[row]]);
    }
    const uint8_t count = lowest == 255 ? 255 : static_cast<uint8_t>(lowest + 1);
    // Conservative update: raise only the counters below the new estimate.
    for (int row = 0; row < depth_; ++row) {
      counters_[slot[row]] = std::max(counters_[slot[row]], count);
    }
    return count >= threshold_;
  }

  std::vector<uint8_t> SaveState() const override { return counters_; }

  void RestoreState(const uint8_t* data, size_t size) override {
    if (size != counters_.size()) {
      throw std::invalid_argument("counting filter state has " + std::to_string(size) +
                                  " bytes, expected " + std::to_string(counters_.size()));
    }
    std::memcpy(counters_.data(), data, size);
  }

  size_t memory_bytes() const override { return counters_.size(); }

  static constexpr int kMaxDepth = 8;

 private:
  static constexpr uint64_t kRowSalt = 0x9e3779b97f4a7c15ULL;
  int threshold_;
  size_t width_;
  int depth_;
  uint64_t seed_;
  std::vector<uint8_t> counters_;
};

class ProbabilisticFilter : public AdmissionFilter {
 public:
  ProbabilisticFilter(double per_occurrence, uint64_t seed)
      : per_occurrence_(per_occurrence), state_(Mix64(seed ^ 0x9b0bULL)) {}

  bool Observe(int64_t) override {
    state_ += 0x9e3779b97f4a7c15ULL;
    const double u = static_cast<double>(Mix64(state_) >> 11) * (1.0 / 9007199254740992.0);
    return u < per_occurrence_;
  }

  std::vector<uint8_t> SaveState() const override {
    std::vector<uint8_t> out(sizeof(state_));
    std::memcpy(out.data(), &state_, sizeof(state_));
    return out;
  }

  void RestoreState(const uint8_t* data, size_t size) override {
    if (size != sizeof(state_)) {
      throw std::invalid_argument("probabilistic filter state has " + std::to_string(size) +
                                  " bytes, expected 8");
    }
    std::memcpy(&state_, data, size);
  }

  size_t memory_bytes() const override { return sizeof(*this); }

 private:
  double per_occurrence_;
  uint64_t state_;
};

}  // namespace

namespace {

// A filter spec checked against its threshold; no memory allocated yet.
struct FilterPlan {
  bool counting = true;
  size_t width = 0;
  int depth = 0;
  double admit_per_occurrence = 0;
  uint64_t seed_offset = 0;
};

FilterPlan PlanAdmissionFilter(const std::string& text, int threshold) {
  if (threshold < 1) {
    throw std::invalid_argument("occurrence_threshold must be >= 1 for a filter, got " +
                                std::to_string(threshold));
  }
  const Spec spec = ParseSpec(text, "admission filter");
  FilterPlan plan;
  if (spec.name == "counting") {
    CheckParamNames(spec, "admission filter", {"width", "depth"});
    const double width = spec.Get("width", 1 << 20), depth = spec.Get("depth", 4);
    const bool power_of_two = width >= 64 && width <= (1ull << 32) &&
                              std::floor(width) == width &&
                              (static_cast<uint64_t>(width) & (static_cast<uint64_t>(width) - 1)) == 0;
    if (!power_of_two) {
      throw std::invalid_argument("counting filter width must be a power of two in [64, 2^32]");
    }
    if (!(depth >= 1 && depth <= CountingFilter::kMaxDepth && std::floor(depth) == depth)) {
      throw std::invalid_argument("counting filter depth must be an integer in [1, 8]");
    }
    if (threshold > 255) {
      throw std::invalid_argument("counting filter counts to 255: occurrence_threshold must be "
                                  "<= 255, got " + std::to_string(threshold));
    }
    plan.width = static_cast<size_t>(width);
    plan.depth = static_cast<int>(depth);
    return plan;
  }
  if (spec.name == "probabilistic") {
    CheckParamNames(spec, "admission filter", {"admit_probability", "seed"});
    const double q = spec.Get("admit_probability", 0.95);
    if (!(q > 0 && q < 1)) {
      throw std::invalid_argument("admit_probability must be in (0, 1)");
    }
    plan.counting = false;
    plan.admit_per_occurrence = 1.0 - std::pow(1.0 - q, 1.0 / threshold);
    plan.seed_offset = static_cast<uint64_t>(spec.Get("seed", 0));
    return plan;
  }
  throw std::invalid_argument("unknown admission filter '" + spec.name +
                              "'; expected counting or probabilistic");
}

}  // namespace

void CheckAdmissionFilter(const std::string& spec, int threshold) {
  PlanAdmissionFilter(spec, threshold);
}

std::unique_ptr<AdmissionFilter> MakeAdmissionFilter(const std::string& text, int threshold,
                                                     uint64_t seed) {
  const FilterPlan plan = PlanAdmissionFilter(text, threshold);
  if (plan.counting) {
    return std::make_unique<CountingFilter>(threshold, plan.width, plan.depth, seed);
  }
  return std::make_unique<ProbabilisticFilter>(plan.admit_per_occurrence,
                                               seed ^ plan.seed_offset);
}

}  // namespace monolith
