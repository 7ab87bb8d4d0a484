// Sparse optimizers that update one row in place. The caller holds the row's
// lock and has already summed the gradients of duplicate ids.
#ifndef MONOLITH_TF_CC_TABLE_OPTIMIZER_H_
#define MONOLITH_TF_CC_TABLE_OPTIMIZER_H_

#include <memory>
#include <string>

namespace monolith {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // Floats of optimizer state stored per row for an embedding of `dim`.
  virtual int StateDim(int dim) const = 0;
  // Writes the state of a new row into state[0..StateDim(dim)).
  virtual void InitState(float* state, int dim) const = 0;
  // Applies one step with summed gradient `grad` to `weights` and `state`.
  virtual void Apply(float* weights, float* state, const float* grad, int dim,
                     float learning_rate) const = 0;
  // FTRL divides by the learning rate, so it must be > 0 there.
  virtual bool NeedsPositiveLearningRate() const { return false; }
};

// Builds an optimizer from a spec (learning rate comes with each apply):
//   sgd
//   adagrad(initial_accumulator=0.1, epsilon=1e-7)
//       acc += g^2; w -= lr * g / (sqrt(acc) + epsilon)
//   adam(beta1=0.9, beta2=0.999, epsilon=1e-7)
//       per-row step t; w -= lr * sqrt(1-beta2^t)/(1-beta1^t) * m/(sqrt(v)+eps)
//   ftrl(initial_accumulator=0.1, beta=0, l1=0, l2=0)
//       FTRL-proximal (McMahan et al. 2013) with alpha = lr:
//       w = -(z - sign(z) l1) / ((beta + sqrt(n)) / lr + l2) if |z| > l1, else 0
// Throws std::invalid_argument on an unknown name or bad parameter.
std::unique_ptr<Optimizer> MakeOptimizer(const std::string& spec);

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_OPTIMIZER_H_
