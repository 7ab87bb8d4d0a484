// Initial values of new rows. Random initializers are seeded by (table seed,
// key), so a row's first value does not depend on insertion order, thread
// interleaving or which process inserted it.
#ifndef MONOLITH_TF_CC_TABLE_INITIALIZER_H_
#define MONOLITH_TF_CC_TABLE_INITIALIZER_H_

#include <cstdint>
#include <memory>
#include <string>

namespace monolith {

class Initializer {
 public:
  virtual ~Initializer() = default;
  // Writes the initial embedding of `key` into out[0..dim).
  virtual void Fill(int64_t key, float* out, int dim) const = 0;
};

// Builds an initializer from a spec:
//   zeros | ones | constant(value=V) | uniform(minval=A, maxval=B)
//   | normal(mean=M, stddev=S) | truncated_normal(mean=M, stddev=S)
// truncated_normal redraws values more than two stddevs from the mean.
// Throws std::invalid_argument on an unknown name or bad parameter.
std::unique_ptr<Initializer> MakeInitializer(const std::string& spec,
                                             uint64_t seed);

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_INITIALIZER_H_
