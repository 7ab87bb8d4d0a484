#include "cc/table/optimizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "cc/table/spec.h"

namespace monolith {
namespace {

class Sgd : public Optimizer {
 public:
  int StateDim(int) const override { return 0; }
  void InitState(float*, int) const override {}
  void Apply(float* __restrict w, float*, const float* __restrict g, int dim,
             float lr) const override {
    for (int i = 0; i < dim; ++i) w[i] -= lr * g[i];
  }
};

class Adagrad : public Optimizer {
 public:
  Adagrad(float initial_accumulator, float epsilon)
      : initial_accumulator_(initial_accumulator), epsilon_(epsilon) {}
  int StateDim(int dim) const override { return dim; }
  void InitState(float* acc, int dim) const override {
    std::fill(acc, acc + dim, initial_accumulator_);
  }
  void Apply(float* __restrict w, float* __restrict acc, const float* __restrict g, int dim,
             float lr) const override {
    for (int i = 0; i < dim; ++i) {
      acc[i] += g[i] * g[i];
      w[i] -= lr * g[i] / (std::sqrt(acc[i]) + epsilon_);
    }
  }

 private:
  float initial_accumulator_, epsilon_;
};

// State layout: m[dim], v[dim], t. The step count is a float: exact up to
// 2^24 updates of one row, long after beta^t has underflowed to zero.
class Adam : public Optimizer {
 public:
  Adam(float beta1, float beta2, float epsilon)
      : beta1_(beta1), beta2_(beta2), epsilon_(epsilon) {}
  int StateDim(int dim) const override { return 2 * dim + 1; }
  void InitState(float* state, int dim) const override {
    std::fill(state, state + 2 * dim + 1, 0.f);
  }
  void Apply(float* __restrict w, float* __restrict state, const float* __restrict g, int dim,
             float lr) const override {
    float* m = state;
    float* v = state + dim;
    const float t = state[2 * dim] + 1.f;
    state[2 * dim] = t;
    const double bias1 = 1.0 - std::pow(static_cast<double>(beta1_), t);
    const double bias2 = 1.0 - std::pow(static_cast<double>(beta2_), t);
    const float alpha = static_cast<float>(lr * std::sqrt(bias2) / bias1);
    for (int i = 0; i < dim; ++i) {
      m[i] += (g[i] - m[i]) * (1.f - beta1_);
      v[i] += (g[i] * g[i] - v[i]) * (1.f - beta2_);
      w[i] -= alpha * m[i] / (std::sqrt(v[i]) + epsilon_);
    }
  }

 private:
  float beta1_, beta2_, epsilon_;
};

// State layout: z[dim], n[dim].
class Ftrl : public Optimizer {
 public:
  Ftrl(float initial_accumulator, float beta, float l1, float l2)
      : initial_accumulator_(initial_accumulator), beta_(beta), l1_(l1), l2_(l2) {}
  int StateDim(int dim) const override { return 2 * dim; }
  bool NeedsPositiveLearningRate() const override { return true; }
  void InitState(float* state, int dim) const override {
    std::fill(state, state + dim, 0.f);
    std::fill(state + dim, state + 2 * dim, initial_accumulator_);
  }
  void Apply(float* __restrict w, float* __restrict state, const float* __restrict g, int dim,
             float lr) const override {
    float* z = state;
    float* n = state + dim;
    for (int i = 0; i < dim; ++i) {
      const float n_new = n[i] + g[i] * g[i];
      const float sigma = (std::sqrt(n_new) - std::sqrt(n[i])) / lr;
      z[i] += g[i] - sigma * w[i];
      n[i] = n_new;
      if (std::fabs(z[i]) <= l1_) {
        w[i] = 0.f;
      } else {
        const float sign = z[i] > 0 ? 1.f : -1.f;
        w[i] = -(z[i] - sign * l1_) / ((beta_ + std::sqrt(n_new)) / lr + l2_);
      }
    }
  }

 private:
  float initial_accumulator_, beta_, l1_, l2_;
};

void RequireNonNegative(const std::string& opt, const std::string& key,
                        double v) {
  if (!(v >= 0)) {
    throw std::invalid_argument("optimizer '" + opt + "' needs " + key +
                                " >= 0, got " + std::to_string(v));
  }
}

}  // namespace

std::unique_ptr<Optimizer> MakeOptimizer(const std::string& text) {
  const Spec spec = ParseSpec(text, "optimizer");
  const std::string what = "optimizer";
  if (spec.name == "sgd") {
    CheckParamNames(spec, what, {});
    return std::make_unique<Sgd>();
  }
  if (spec.name == "adagrad") {
    CheckParamNames(spec, what, {"initial_accumulator", "epsilon"});
    const double acc = spec.Get("initial_accumulator", 0.1);
    const double eps = spec.Get("epsilon", 1e-7);
    RequireNonNegative(spec.name, "initial_accumulator", acc);
    RequireNonNegative(spec.name, "epsilon", eps);
    return std::make_unique<Adagrad>(acc, eps);
  }
  if (spec.name == "adam") {
    CheckParamNames(spec, what, {"beta1", "beta2", "epsilon"});
    const double b1 = spec.Get("beta1", 0.9), b2 = spec.Get("beta2", 0.999);
    const double eps = spec.Get("epsilon", 1e-7);
    if (!(b1 >= 0 && b1 < 1) || !(b2 >= 0 && b2 < 1)) {
      throw std::invalid_argument("optimizer 'adam' needs beta1, beta2 in [0, 1)");
    }
    RequireNonNegative(spec.name, "epsilon", eps);
    return std::make_unique<Adam>(b1, b2, eps);
  }
  if (spec.name == "ftrl") {
    CheckParamNames(spec, what, {"initial_accumulator", "beta", "l1", "l2"});
    const double acc = spec.Get("initial_accumulator", 0.1);
    const double beta = spec.Get("beta", 0.0), l1 = spec.Get("l1", 0.0),
                 l2 = spec.Get("l2", 0.0);
    RequireNonNegative(spec.name, "initial_accumulator", acc);
    RequireNonNegative(spec.name, "beta", beta);
    RequireNonNegative(spec.name, "l1", l1);
    RequireNonNegative(spec.name, "l2", l2);
    return std::make_unique<Ftrl>(acc, beta, l1, l2);
  }
  throw std::invalid_argument("unknown optimizer '" + spec.name +
                              "'; expected sgd, adagrad, adam or ftrl");
}

}  // namespace monolith
