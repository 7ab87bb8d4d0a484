#include "cc/table/initializer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cc/table/hashing.h"
#include "cc/table/spec.h"

namespace monolith {
namespace {

constexpr uint64_t kStreamStep = 0x9e3779b97f4a7c15ULL;

// Counter-based generator: draw i of the stream that belongs to one key.
class KeyStream {
 public:
  KeyStream(uint64_t seed, int64_t key)
      : base_(Mix64(seed ^ Mix64(static_cast<uint64_t>(key)))) {}
  // Uniform in [0, 1) with 24 bits of resolution.
  float Uniform(uint64_t i) const {
    return static_cast<float>(Mix64(base_ + (i + 1) * kStreamStep) >> 40) *
           (1.0f / 16777216.0f);
  }
  // Standard normal from draws 2i and 2i+1 (Box-Muller, cosine branch).
  float Normal(uint64_t i) const {
    const double u1 = 1.0 - static_cast<double>(Uniform(2 * i));  // (0, 1]
    const double u2 = static_cast<double>(Uniform(2 * i + 1));
    return static_cast<float>(std::sqrt(-2.0 * std::log(u1)) *
                              std::cos(6.283185307179586 * u2));
  }

 private:
  uint64_t base_;
};

class ConstantInitializer : public Initializer {
 public:
  explicit ConstantInitializer(float value) : value_(value) {}
  void Fill(int64_t, float* out, int dim) const override {
    std::fill(out, out + dim, value_);
  }

 private:
  float value_;
};

class UniformInitializer : public Initializer {
 public:
  UniformInitializer(uint64_t seed, float minval, float maxval)
      : seed_(seed), minval_(minval), range_(maxval - minval) {}
  void Fill(int64_t key, float* out, int dim) const override {
    const KeyStream stream(seed_, key);
    for (int i = 0; i < dim; ++i) out[i] = minval_ + range_ * stream.Uniform(i);
  }

 private:
  uint64_t seed_;
  float minval_, range_;
};

class NormalInitializer : public Initializer {
 public:
  NormalInitializer(uint64_t seed, float mean, float stddev, bool truncated)
      : seed_(seed), mean_(mean), stddev_(stddev), truncated_(truncated) {}
  void Fill(int64_t key, float* out, int dim) const override {
    const KeyStream stream(seed_, key);
    for (int i = 0; i < dim; ++i) {
      float z = stream.Normal(i);
      // Redraws come from a disjoint part of the stream (attempt * dim).
      for (uint64_t attempt = 1; truncated_ && std::fabs(z) > 2.0f; ++attempt) {
        z = stream.Normal(attempt * static_cast<uint64_t>(dim) + i);
      }
      out[i] = mean_ + stddev_ * z;
    }
  }

 private:
  uint64_t seed_;
  float mean_, stddev_;
  bool truncated_;
};

}  // namespace

std::unique_ptr<Initializer> MakeInitializer(const std::string& text,
                                             uint64_t seed) {
  const Spec spec = ParseSpec(text, "initializer");
  const std::string what = "initializer";
  if (spec.name == "zeros" || spec.name == "ones") {
    CheckParamNames(spec, what, {});
    return std::make_unique<ConstantInitializer>(spec.name == "ones" ? 1.f : 0.f);
  }
  if (spec.name == "constant") {
    CheckParamNames(spec, what, {"value"});
    return std::make_unique<ConstantInitializer>(spec.Get("value", 0.0));
  }
  if (spec.name == "uniform") {
    CheckParamNames(spec, what, {"minval", "maxval"});
    const double lo = spec.Get("minval", -0.05), hi = spec.Get("maxval", 0.05);
    if (!(lo <= hi)) {
      throw std::invalid_argument("initializer 'uniform' needs minval <= maxval");
    }
    return std::make_unique<UniformInitializer>(seed, lo, hi);
  }
  if (spec.name == "normal" || spec.name == "truncated_normal") {
    CheckParamNames(spec, what, {"mean", "stddev"});
    const double stddev = spec.Get("stddev", 0.05);
    if (!(stddev >= 0)) {
      throw std::invalid_argument("initializer '" + spec.name +
                                  "' needs stddev >= 0");
    }
    return std::make_unique<NormalInitializer>(
        seed, spec.Get("mean", 0.0), stddev, spec.name == "truncated_normal");
  }
  throw std::invalid_argument(
      "unknown initializer '" + spec.name +
      "'; expected zeros, ones, constant, uniform, normal or truncated_normal");
}

}  // namespace monolith
