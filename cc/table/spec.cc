#include "cc/table/spec.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <stdexcept>

namespace monolith {
namespace {

std::string Trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

bool IsIdentifier(const std::string& s) {
  if (s.empty() || std::isdigit(static_cast<unsigned char>(s[0]))) return false;
  for (char c : s) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

}  // namespace

double Spec::Get(const std::string& key, double fallback) const {
  auto it = params.find(key);
  return it == params.end() ? fallback : it->second;
}

Spec ParseSpec(const std::string& text, const std::string& what) {
  const std::string body = Trim(text);
  Spec spec;
  const size_t open = body.find('(');
  if (open == std::string::npos) {
    spec.name = body;
  } else {
    if (body.back() != ')') {
      throw std::invalid_argument(what + " spec '" + text +
                                  "' must end with ')'");
    }
    spec.name = Trim(body.substr(0, open));
    const std::string args = body.substr(open + 1, body.size() - open - 2);
    size_t start = 0;
    while (start <= args.size()) {
      size_t comma = args.find(',', start);
      if (comma == std::string::npos) comma = args.size();
      const std::string item = Trim(args.substr(start, comma - start));
      start = comma + 1;
      if (item.empty()) {
        if (comma == args.size()) break;
        throw std::invalid_argument(what + " spec '" + text +
                                    "' has an empty parameter");
      }
      const size_t eq = item.find('=');
      if (eq == std::string::npos) {
        throw std::invalid_argument(what + " spec '" + text + "': parameter '" +
                                    item + "' must be key=value");
      }
      const std::string key = Trim(item.substr(0, eq));
      const std::string value = Trim(item.substr(eq + 1));
      if (!IsIdentifier(key)) {
        throw std::invalid_argument(what + " spec '" + text +
                                    "': bad parameter name '" + key + "'");
      }
      char* end = nullptr;
      const double v = std::strtod(value.c_str(), &end);
      if (value.empty() || end != value.c_str() + value.size() ||
          !std::isfinite(v)) {
        throw std::invalid_argument(what + " spec '" + text + "': parameter '" +
                                    key + "' must be a finite number, got '" +
                                    value + "'");
      }
      if (!spec.params.emplace(key, v).second) {
        throw std::invalid_argument(what + " spec '" + text +
                                    "': parameter '" + key + "' given twice");
      }
    }
  }
  if (!IsIdentifier(spec.name)) {
    throw std::invalid_argument(what + " spec '" + text +
                                "' must start with a name, e.g. 'sgd' or "
                                "'uniform(minval=-0.05, maxval=0.05)'");
  }
  return spec;
}

void CheckParamNames(const Spec& spec, const std::string& what,
                     const std::vector<std::string>& allowed) {
  for (const auto& kv : spec.params) {
    bool ok = false;
    for (const auto& a : allowed) ok = ok || a == kv.first;
    if (!ok) {
      std::string list;
      for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
      throw std::invalid_argument(
          what + " '" + spec.name + "' has no parameter '" + kv.first +
          "'; expected " + (list.empty() ? std::string("none") : list));
    }
  }
}

}  // namespace monolith
