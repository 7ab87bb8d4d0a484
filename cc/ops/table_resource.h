// The bridge between TensorFlow and the TF-free core: one ResourceBase that
// owns an EmbeddingTable, and the conversion of core exceptions to Status.
#ifndef MONOLITH_TF_CC_OPS_TABLE_RESOURCE_H_
#define MONOLITH_TF_CC_OPS_TABLE_RESOURCE_H_

#include <cerrno>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>

#include "cc/table/embedding_table.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/lib/core/errors.h"

namespace monolith {

class HashTableResource : public tensorflow::ResourceBase {
 public:
  explicit HashTableResource(const TableConfig& config) : table_(config) {}

  EmbeddingTable& table() { return table_; }

  std::string DebugString() const override {
    return "MonolithHashTable(" + DescribeTableConfig(table_.config()) + ")";
  }
  int64_t MemoryUsed() const override {
    return static_cast<int64_t>(table_.memory_bytes());
  }

 private:
  EmbeddingTable table_;
};

// Runs `fn`, turning core exceptions into a Status: bad input becomes
// InvalidArgument, running out of memory or ids becomes ResourceExhausted,
// a failed file write the code of its errno.
template <typename Fn>
tensorflow::Status CallCore(Fn&& fn) {
  try {
    fn();
  } catch (const std::invalid_argument& e) {
    return tensorflow::errors::InvalidArgument(e.what());
  } catch (const std::length_error& e) {
    return tensorflow::errors::ResourceExhausted(e.what());
  } catch (const std::bad_alloc&) {
    return tensorflow::errors::ResourceExhausted("out of memory in MonolithHashTable");
  } catch (const std::system_error& e) {
    // A failed file write: a full disk is ResourceExhausted (as TF's own file
    // ops report it); the message names the file and the OS's reason.
    const int code = e.code().value();
    if (code == ENOSPC || code == EDQUOT) return tensorflow::errors::ResourceExhausted(e.what());
    if (code == ENOENT) return tensorflow::errors::NotFound(e.what());
    if (code == EACCES || code == EPERM) return tensorflow::errors::PermissionDenied(e.what());
    return tensorflow::errors::Internal(e.what());
  } catch (const std::exception& e) {
    return tensorflow::errors::Internal(e.what());
  }
  return tensorflow::OkStatus();
}

}  // namespace monolith

#endif  // MONOLITH_TF_CC_OPS_TABLE_RESOURCE_H_
