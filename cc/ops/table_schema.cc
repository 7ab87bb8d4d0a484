// Facts of the core for Python, as plain C functions of the op library
// (monolith_tf/schema.py reads them with ctypes): the table defaults, the
// stats and row field names, and each optimizer's state width. No TensorFlow
// op runs, so they are known before any graph or eager context exists.
#include <cstring>
#include <stdexcept>
#include <string>

#include "cc/table/table_config.h"

extern "C" {

// The core's TableSchemaJson(); a static string owned by the library.
const char* monolith_table_schema_json() {
  static const std::string schema = monolith::TableSchemaJson();
  return schema.c_str();
}

// Floats of optimizer state per row, or -1 with the reason copied into
// error[0..error_size) (NUL-terminated) for a bad spec or dim.
int monolith_optimizer_state_dim(const char* optimizer, int dim, char* error,
                                 int error_size) {
  try {
    return monolith::OptimizerStateDim(optimizer, dim);
  } catch (const std::exception& e) {
    if (error != nullptr && error_size > 0) {
      std::strncpy(error, e.what(), static_cast<size_t>(error_size) - 1);
      error[error_size - 1] = '\0';
    }
    return -1;
  }
}

}  // extern "C"
