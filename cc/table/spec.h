// Parsing of "name(key=value, ...)" specs that configure initializers and
// optimizers. One string per component keeps the configuration identical
// across the C++ core, op attributes, Python and saved models.
#ifndef MONOLITH_TF_CC_TABLE_SPEC_H_
#define MONOLITH_TF_CC_TABLE_SPEC_H_

#include <map>
#include <string>
#include <vector>

namespace monolith {

struct Spec {
  std::string name;
  std::map<std::string, double> params;

  // Returns params[key] or `fallback` when absent.
  double Get(const std::string& key, double fallback) const;
};

// Parses `text` such as "adam(beta1=0.9, epsilon=1e-7)" or "zeros".
// `what` names the component in error messages ("optimizer").
// Throws std::invalid_argument on malformed text.
Spec ParseSpec(const std::string& text, const std::string& what);

// Throws std::invalid_argument naming the first parameter of `spec` that is
// not in `allowed`.
void CheckParamNames(const Spec& spec, const std::string& what,
                     const std::vector<std::string>& allowed);

}  // namespace monolith

#endif  // MONOLITH_TF_CC_TABLE_SPEC_H_
