// Kernels: validate inputs, call the core, turn its errors into Status.
#include <algorithm>
#include <string>

#include "cc/ops/table_resource.h"
#include "cc/table/row_file.h"
#include "cc/table/sharding.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/resource_mgr.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/framework/tensor_shape.h"
#include "tensorflow/core/platform/threadpool.h"

namespace monolith {
namespace {

using tensorflow::DEVICE_CPU;
using tensorflow::OpKernel;
using tensorflow::OpKernelConstruction;
using tensorflow::OpKernelContext;
using tensorflow::Tensor;
using tensorflow::TensorShape;
namespace errors = tensorflow::errors;

// Runs the core's parallel loops on TF's intra-op thread pool.
class TfRunner : public ParallelRunner {
 public:
  explicit TfRunner(OpKernelContext* ctx)
      : pool_(ctx->device()->tensorflow_cpu_worker_threads()->workers) {}
  void For(int64_t n, int64_t cost_per_item,
           const std::function<void(int64_t, int64_t)>& fn) const override {
    // Below a few thousand ids a thread hand-off costs more than it saves.
    if (n < 4096 || pool_ == nullptr) {
      if (n > 0) fn(0, n);
      return;
    }
    pool_->ParallelFor(n, cost_per_item, fn);
  }

 private:
  tensorflow::thread::ThreadPool* pool_;
};

// Base of every kernel that takes the table handle as input 0.
class TableOpKernel : public OpKernel {
 public:
  using OpKernel::OpKernel;

  void Compute(OpKernelContext* ctx) final {
    tensorflow::core::RefCountPtr<HashTableResource> resource;
    OP_REQUIRES_OK(ctx, LookupResource(ctx, HandleFromInput(ctx, 0), &resource));
    ComputeWithTable(ctx, resource->table());
  }

 protected:
  virtual void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) = 0;
};

// Base of kernels whose op carries a `dim` attr for its shape function: the
// attr must match the table it runs on.
class DimAttrTableOpKernel : public TableOpKernel {
 public:
  explicit DimAttrTableOpKernel(OpKernelConstruction* ctx) : TableOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim_));
  }

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) final {
    OP_REQUIRES(ctx, dim_ == table.dim(),
                errors::InvalidArgument(type_string(), " dim attr ", dim_,
                                        " does not match the table's dim ", table.dim()));
    ComputeWithCheckedTable(ctx, table);
  }
  virtual void ComputeWithCheckedTable(OpKernelContext* ctx, EmbeddingTable& table) = 0;

  tensorflow::int64 dim_;
};

std::string ShapeString(const Tensor& t) { return t.shape().DebugString(); }

// Writes `values` as the op's 1-D output `index`.
template <typename T>
void SetVectorOutput(OpKernelContext* ctx, int index, const std::vector<T>& values) {
  Tensor* out;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(
                          index, TensorShape({static_cast<int64_t>(values.size())}), &out));
  std::copy(values.begin(), values.end(), out->flat<T>().data());
}

// Writes `value` as the op's int64 scalar output 0.
void SetScalarOutput(OpKernelContext* ctx, int64_t value) {
  Tensor* out;
  OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &out));
  out->scalar<int64_t>()() = value;
}

tensorflow::Status CheckRowsMatchIds(const Tensor& ids, const Tensor& rows,
                                     int dim, const char* rows_name) {
  TensorShape expected = ids.shape();
  expected.AddDim(dim);
  if (rows.shape() != expected) {
    return errors::InvalidArgument(rows_name, " must have shape ids.shape + [dim] = ",
                                   expected.DebugString(), ", got ", ShapeString(rows));
  }
  return tensorflow::OkStatus();
}

class CreateTableOp : public OpKernel {
 public:
  explicit CreateTableOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    tensorflow::int64 dim, seed, occurrence_threshold;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dim", &dim));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("initializer", &config_.initializer));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("optimizer", &config_.optimizer));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("seed", &seed));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("capacity_hint", &config_.capacity_hint));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("occurrence_threshold", &occurrence_threshold));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("admission_filter", &config_.admission_filter));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("expire_after", &config_.expire_after));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("evict_every", &config_.evict_every));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("container", &container_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("shared_name", &shared_name_));
    // Out-of-range int64 attrs are clamped to an invalid int so that the
    // core's validation names them (a plain cast could wrap into range).
    config_.dim = static_cast<int>(std::clamp<tensorflow::int64>(dim, -1, kMaxDim + 1));
    config_.occurrence_threshold = static_cast<int>(
        std::clamp<tensorflow::int64>(occurrence_threshold, -1, kMaxOccurrenceThreshold + 1));
    config_.seed = static_cast<uint64_t>(seed);
    // Bad configs fail when the graph is built, not at first use.
    OP_REQUIRES_OK(ctx, CallCore([&] { ValidateTableConfig(config_); }));
  }

  void Compute(OpKernelContext* ctx) override {
    Tensor* handle;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({}), &handle));
    if (shared_name_.empty()) {
      // Anonymous table: owned by its handles, freed with the last of them,
      // so two tables (or two loads of one SavedModel) never alias.
      HashTableResource* resource = nullptr;
      OP_REQUIRES_OK(ctx, CallCore([&] { resource = new HashTableResource(config_); }));
      handle->scalar<tensorflow::ResourceHandle>()() =
          tensorflow::ResourceHandle::MakeRefCountingHandle<HashTableResource>(
              resource, ctx->device()->name());
      return;
    }
    const std::string container =
        container_.empty() ? ctx->resource_manager()->default_container() : container_;
    HashTableResource* resource = nullptr;
    OP_REQUIRES_OK(ctx, ctx->resource_manager()->LookupOrCreate<HashTableResource>(
                            container, shared_name_, &resource,
                            [this](HashTableResource** out) {
                              return CallCore([&] { *out = new HashTableResource(config_); });
                            }));
    tensorflow::core::ScopedUnref unref(resource);
    const TableConfig& existing = resource->table().config();
    OP_REQUIRES(ctx, SameTableConfig(existing, config_),
                errors::InvalidArgument("table '", shared_name_, "' already exists with ",
                                        DescribeTableConfig(existing), "; asked for ",
                                        DescribeTableConfig(config_)));
    handle->scalar<tensorflow::ResourceHandle>()() =
        tensorflow::MakeResourceHandle<HashTableResource>(ctx, container, shared_name_);
  }

 private:
  TableConfig config_;
  std::string container_, shared_name_;
};

class LookupOp : public DimAttrTableOpKernel {
 public:
  explicit LookupOp(OpKernelConstruction* ctx) : DimAttrTableOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("insert_missing", &insert_missing_));
  }

 protected:
  void ComputeWithCheckedTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& ids = ctx->input(1);
    TensorShape out_shape = ids.shape();
    out_shape.AddDim(dim_);
    Tensor* values;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, out_shape, &values));
    const TfRunner runner(ctx);
    OP_REQUIRES_OK(ctx, CallCore([&] {
                     table.Lookup(ids.flat<int64_t>().data(), ids.NumElements(),
                                  insert_missing_, values->flat<float>().data(), runner);
                   }));
  }

 private:
  bool insert_missing_;
};

class ApplyGradientsOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& ids = ctx->input(1);
    const Tensor& grads = ctx->input(2);
    const Tensor& learning_rate = ctx->input(3);
    const Tensor& timestamps = ctx->input(4);
    OP_REQUIRES_OK(ctx, CheckRowsMatchIds(ids, grads, table.dim(), "grads"));
    OP_REQUIRES(ctx, tensorflow::TensorShapeUtils::IsScalar(learning_rate.shape()),
                errors::InvalidArgument("learning_rate must be a scalar, got shape ",
                                        ShapeString(learning_rate)));
    const bool per_key = !tensorflow::TensorShapeUtils::IsScalar(timestamps.shape());
    OP_REQUIRES(ctx, !per_key || timestamps.shape() == ids.shape(),
                errors::InvalidArgument("timestamps must be a scalar or have the shape of ids ",
                                        ShapeString(ids), ", got ", ShapeString(timestamps)));
    const TfRunner runner(ctx);
    OP_REQUIRES_OK(ctx, CallCore([&] {
                     table.ApplyGradients(ids.flat<int64_t>().data(), grads.flat<float>().data(),
                                          ids.NumElements(), learning_rate.scalar<float>()(),
                                          timestamps.flat<int64_t>().data(), per_key, runner);
                   }));
  }
};

class AssignOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& ids = ctx->input(1);
    const Tensor& values = ctx->input(2);
    OP_REQUIRES_OK(ctx, CheckRowsMatchIds(ids, values, table.dim(), "values"));
    OP_REQUIRES_OK(ctx, CallCore([&] {
                     table.Assign(ids.flat<int64_t>().data(), values.flat<float>().data(),
                                  ids.NumElements());
                   }));
  }
};

class RemoveOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& ids = ctx->input(1);
    int64_t removed = 0;
    OP_REQUIRES_OK(ctx, CallCore([&] {
                     removed = table.Remove(ids.flat<int64_t>().data(), ids.NumElements());
                   }));
    SetScalarOutput(ctx, removed);
  }
};

class SizeOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    SetScalarOutput(ctx, table.size());
  }
};

class EvictExpiredOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    int64_t evicted = 0;
    OP_REQUIRES_OK(ctx, CallCore([&] { evicted = table.EvictExpired(); }));
    SetScalarOutput(ctx, evicted);
  }
};

class StatsOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const auto values = table.Stats().Values();
    Tensor* out;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({static_cast<int64_t>(values.size())}), &out));
    std::copy(values.begin(), values.end(), out->flat<int64_t>().data());
  }
};

class SaveFilterOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    std::vector<uint8_t> state;
    OP_REQUIRES_OK(ctx, CallCore([&] { state = table.SaveFilterState(); }));
    SetVectorOutput(ctx, 0, state);
    if (!ctx->status().ok()) return;
    Tensor* now;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, TensorShape({}), &now));
    now->scalar<int64_t>()() = table.Stats().now;
  }
};

class RestoreFilterOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& state = ctx->input(1);
    const Tensor& now = ctx->input(2);
    OP_REQUIRES(ctx, state.dims() == 1 && tensorflow::TensorShapeUtils::IsScalar(now.shape()),
                errors::InvalidArgument("state must be 1-D and now a scalar, got ",
                                        ShapeString(state), " and ", ShapeString(now)));
    OP_REQUIRES_OK(ctx, CallCore([&] {
                     table.RestoreFilterState(state.flat<uint8_t>().data(), state.NumElements(),
                                              now.scalar<int64_t>()());
                   }));
  }
};

class ExportOp : public DimAttrTableOpKernel {
 public:
  explicit ExportOp(OpKernelConstruction* ctx) : DimAttrTableOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("only_dirty", &only_dirty_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clear_dirty", &clear_dirty_));
  }

 protected:
  void ComputeWithCheckedTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& chunk = ctx->input(1);
    const Tensor& num_chunks = ctx->input(2);
    OP_REQUIRES(ctx,
                tensorflow::TensorShapeUtils::IsScalar(chunk.shape()) &&
                    tensorflow::TensorShapeUtils::IsScalar(num_chunks.shape()),
                errors::InvalidArgument("chunk and num_chunks must be scalars"));
    tensorflow::Status alloc_status;
    const tensorflow::Status status = CallCore([&] {
      table.Export(chunk.scalar<int64_t>()(), num_chunks.scalar<int64_t>()(),
                   [&](int64_t count) {
                     Tensor* out[5];
                     const TensorShape shapes[5] = {
                         TensorShape({count}), TensorShape({count, dim_}),
                         TensorShape({count, table.state_dim()}), TensorShape({count}),
                         TensorShape({count})};
                     for (int i = 0; i < 5; ++i) {
                       alloc_status = ctx->allocate_output(i, shapes[i], &out[i]);
                       if (!alloc_status.ok()) throw std::runtime_error("allocation failed");
                     }
                     RowBuffers buffers;
                     buffers.keys = out[0]->flat<int64_t>().data();
                     buffers.values = out[1]->flat<float>().data();
                     buffers.state = out[2]->flat<float>().data();
                     buffers.timestamps = out[3]->flat<int64_t>().data();
                     buffers.counts = out[4]->flat<int64_t>().data();
                     return buffers;
                   }, only_dirty_, clear_dirty_);
    });
    OP_REQUIRES_OK(ctx, alloc_status);
    OP_REQUIRES_OK(ctx, status);
  }

 private:
  bool only_dirty_, clear_dirty_;
};

class TakeRemovedOp : public TableOpKernel {
 public:
  using TableOpKernel::TableOpKernel;

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    std::vector<int64_t> removed;
    OP_REQUIRES_OK(ctx, CallCore([&] { removed = table.TakeRemoved(); }));
    SetVectorOutput(ctx, 0, removed);
  }
};

class TakeSyncChangesOp : public DimAttrTableOpKernel {
 public:
  using DimAttrTableOpKernel::DimAttrTableOpKernel;

 protected:
  void ComputeWithCheckedTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    tensorflow::Status alloc_status;
    std::vector<int64_t> removed;
    const tensorflow::Status status = CallCore([&] {
      table.TakeSyncChanges(
          [&](int64_t count) {
            Tensor* out[3];
            const TensorShape shapes[3] = {TensorShape({count}), TensorShape({count, dim_}),
                                           TensorShape({count})};
            for (int i = 0; i < 3; ++i) {
              alloc_status = ctx->allocate_output(i, shapes[i], &out[i]);
              if (!alloc_status.ok()) throw std::runtime_error("allocation failed");
            }
            RowBuffers buffers;
            buffers.keys = out[0]->flat<int64_t>().data();
            buffers.values = out[1]->flat<float>().data();
            buffers.timestamps = out[2]->flat<int64_t>().data();
            return buffers;
          },
          &removed);
    });
    OP_REQUIRES_OK(ctx, alloc_status);
    OP_REQUIRES_OK(ctx, status);
    SetVectorOutput(ctx, 3, removed);
  }
};

class ImportOp : public TableOpKernel {
 public:
  explicit ImportOp(OpKernelConstruction* ctx) : TableOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clear", &clear_));
  }

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& keys = ctx->input(1);
    const Tensor& values = ctx->input(2);
    const Tensor& state = ctx->input(3);
    const Tensor& timestamps = ctx->input(4);
    const Tensor& counts = ctx->input(5);
    OP_REQUIRES(ctx, keys.dims() == 1,
                errors::InvalidArgument("keys must be 1-D, got shape ", ShapeString(keys)));
    const int64_t n = keys.dim_size(0);
    OP_REQUIRES(ctx, values.shape() == TensorShape({n, table.dim()}),
                errors::InvalidArgument("values must have shape [", n, ", ", table.dim(),
                                        "], got ", ShapeString(values)));
    OP_REQUIRES(ctx, state.shape() == TensorShape({n, table.state_dim()}),
                errors::InvalidArgument("state must have shape [", n, ", ", table.state_dim(),
                                        "] for optimizer '", table.config().optimizer,
                                        "', got ", ShapeString(state)));
    OP_REQUIRES(ctx, timestamps.shape() == keys.shape() && counts.shape() == keys.shape(),
                errors::InvalidArgument("timestamps and counts must have shape [", n,
                                        "], got ", ShapeString(timestamps), " and ",
                                        ShapeString(counts)));
    RowsView rows;
    rows.keys = keys.flat<int64_t>().data();
    rows.values = values.flat<float>().data();
    rows.state = state.flat<float>().data();
    rows.timestamps = timestamps.flat<int64_t>().data();
    rows.counts = counts.flat<int64_t>().data();
    OP_REQUIRES_OK(ctx, CallCore([&] { table.Import(rows, n, clear_); }));
  }

 private:
  bool clear_;
};

// Shared by the fused kernels: resolves `n` handles (inputs 0..n-1) and runs
// fn(i, table) for each, across TF's pool when there are several tables (each
// table's work then runs inline) or inside the one table otherwise. Errors
// from any table fail the op.
class MultiTableOpKernel : public OpKernel {
 public:
  using OpKernel::OpKernel;

 protected:
  tensorflow::Status ResolveTables(
      OpKernelContext* ctx, int n,
      std::vector<tensorflow::core::RefCountPtr<HashTableResource>>* tables) {
    tables->resize(n);
    for (int i = 0; i < n; ++i) {
      TF_RETURN_IF_ERROR(LookupResource(ctx, HandleFromInput(ctx, i), &(*tables)[i]));
    }
    return tensorflow::OkStatus();
  }

  // fn(i, runner) returns the Status of table i's work.
  void ForEachTable(OpKernelContext* ctx, int n, int64_t cost_per_table,
                    const std::function<tensorflow::Status(int, const ParallelRunner&)>& fn) {
    std::vector<tensorflow::Status> status(n);
    if (n == 1) {
      status[0] = fn(0, TfRunner(ctx));
    } else {
      const ParallelRunner inline_runner;
      ctx->device()->tensorflow_cpu_worker_threads()->workers->ParallelFor(
          n, cost_per_table, [&](int64_t begin, int64_t end) {
            for (int64_t i = begin; i < end; ++i) status[i] = fn(i, inline_runner);
          });
    }
    for (int i = 0; i < n; ++i) {
      OP_REQUIRES_OK(ctx, status[i]);
    }
  }
};

class LookupMultiOp : public MultiTableOpKernel {
 public:
  explicit LookupMultiOp(OpKernelConstruction* ctx) : MultiTableOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("dims", &dims_));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("insert_missing", &insert_missing_));
    OP_REQUIRES(ctx, static_cast<int>(dims_.size()) == n_,
                errors::InvalidArgument("dims has ", dims_.size(), " entries for ", n_,
                                        " tables"));
  }

  void Compute(OpKernelContext* ctx) override {
    std::vector<tensorflow::core::RefCountPtr<HashTableResource>> tables;
    OP_REQUIRES_OK(ctx, ResolveTables(ctx, n_, &tables));
    std::vector<Tensor*> outputs(n_);
    int64_t total_ids = 0;
    for (int i = 0; i < n_; ++i) {
      OP_REQUIRES(ctx, dims_[i] == tables[i]->table().dim(),
                  errors::InvalidArgument("dims[", i, "] = ", dims_[i],
                                          " does not match table ", i, "'s dim ",
                                          tables[i]->table().dim()));
      const Tensor& ids = ctx->input(n_ + i);
      TensorShape shape = ids.shape();
      shape.AddDim(dims_[i]);
      OP_REQUIRES_OK(ctx, ctx->allocate_output(i, shape, &outputs[i]));
      total_ids += ids.NumElements();
    }
    ForEachTable(ctx, n_, 60 * (total_ids / n_ + 1), [&](int i, const ParallelRunner& runner) {
      const Tensor& ids = ctx->input(n_ + i);
      return CallCore([&] {
        tables[i]->table().Lookup(ids.flat<int64_t>().data(), ids.NumElements(),
                                  insert_missing_, outputs[i]->flat<float>().data(), runner);
      });
    });
  }

 private:
  int n_;
  std::vector<int64_t> dims_;
  bool insert_missing_;
};

class ApplyGradientsMultiOp : public MultiTableOpKernel {
 public:
  explicit ApplyGradientsMultiOp(OpKernelConstruction* ctx) : MultiTableOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("N", &n_));
  }

  void Compute(OpKernelContext* ctx) override {
    std::vector<tensorflow::core::RefCountPtr<HashTableResource>> tables;
    OP_REQUIRES_OK(ctx, ResolveTables(ctx, n_, &tables));
    const Tensor& rates = ctx->input(3 * n_);
    OP_REQUIRES(ctx, rates.shape() == TensorShape({n_}),
                errors::InvalidArgument("learning_rates must have shape [", n_, "], got ",
                                        ShapeString(rates)));
    int64_t total_ids = 0;
    for (int i = 0; i < n_; ++i) {
      const Tensor& ids = ctx->input(n_ + i);
      const Tensor& timestamps = ctx->input(3 * n_ + 1 + i);
      OP_REQUIRES_OK(ctx, CheckRowsMatchIds(ids, ctx->input(2 * n_ + i),
                                            tables[i]->table().dim(), "grads"));
      OP_REQUIRES(ctx,
                  tensorflow::TensorShapeUtils::IsScalar(timestamps.shape()) ||
                      timestamps.shape() == ids.shape(),
                  errors::InvalidArgument("timestamps[", i, "] must be a scalar or have the "
                                          "shape of ids ", ShapeString(ids), ", got ",
                                          ShapeString(timestamps)));
      total_ids += ids.NumElements();
    }
    const auto rate = rates.flat<float>();
    std::vector<int64_t> updated(n_, 0);
    ForEachTable(ctx, n_, 150 * (total_ids / n_ + 1), [&](int i, const ParallelRunner& runner) {
      const Tensor& ids = ctx->input(n_ + i);
      const Tensor& grads = ctx->input(2 * n_ + i);
      const Tensor& timestamps = ctx->input(3 * n_ + 1 + i);
      const bool per_key = !tensorflow::TensorShapeUtils::IsScalar(timestamps.shape());
      return CallCore([&] {
        updated[i] = tables[i]->table().ApplyGradients(
            ids.flat<int64_t>().data(), grads.flat<float>().data(), ids.NumElements(), rate(i),
            timestamps.flat<int64_t>().data(), per_key, runner);
      });
    });
    if (!ctx->status().ok()) return;
    int64_t total = 0;
    for (int64_t u : updated) total += u;
    SetScalarOutput(ctx, total);
  }

 private:
  int n_;
};

// Routes ids to shards (cc/table/sharding.h); no table involved.
class ShardIdsOp : public OpKernel {
 public:
  explicit ShardIdsOp(OpKernelConstruction* ctx) : OpKernel(ctx) {
    int64_t num_shards;
    OP_REQUIRES_OK(ctx, ctx->GetAttr("num_shards", &num_shards));
    OP_REQUIRES(ctx, num_shards >= 1 && num_shards <= (int64_t{1} << 30),
                tensorflow::errors::InvalidArgument("num_shards must be in [1, 2^30], got ",
                                                    num_shards));
    num_shards_ = static_cast<int32_t>(num_shards);
  }

  void Compute(OpKernelContext* ctx) override {
    const Tensor& ids = ctx->input(0);
    Tensor* shards = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, ids.shape(), &shards));
    const auto in = ids.flat<int64_t>();
    auto out = shards->flat<int32_t>();
    for (int64_t i = 0; i < in.size(); ++i) out(i) = monolith::ShardOf(in(i), num_shards_);
  }

 private:
  int32_t num_shards_;
};

// Writes the table's rows as sparse-checkpoint row files where the table
// lives (on a parameter server, that server's file system).
class WriteRowsOp : public TableOpKernel {
 public:
  explicit WriteRowsOp(OpKernelConstruction* ctx) : TableOpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ctx->GetAttr("only_dirty", &options_.only_dirty));
    OP_REQUIRES_OK(ctx, ctx->GetAttr("clear_dirty", &options_.clear_dirty));
  }

 protected:
  void ComputeWithTable(OpKernelContext* ctx, EmbeddingTable& table) override {
    const Tensor& prefix = ctx->input(1);
    const Tensor& rows_per_block = ctx->input(2);
    const Tensor& file_bytes = ctx->input(3);
    OP_REQUIRES(ctx,
                tensorflow::TensorShapeUtils::IsScalar(prefix.shape()) &&
                    tensorflow::TensorShapeUtils::IsScalar(rows_per_block.shape()) &&
                    tensorflow::TensorShapeUtils::IsScalar(file_bytes.shape()),
                errors::InvalidArgument("prefix, rows_per_block and file_bytes must be "
                                        "scalars, got ", ShapeString(prefix), ", ",
                                        ShapeString(rows_per_block), " and ",
                                        ShapeString(file_bytes)));
    RowFileOptions options = options_;
    options.rows_per_block = rows_per_block.scalar<int64_t>()();
    options.file_bytes = file_bytes.scalar<int64_t>()();
    std::vector<RowFileInfo> files;
    OP_REQUIRES_OK(ctx, CallCore([&] {
                     files = WriteRowFiles(table, prefix.scalar<tensorflow::tstring>()(),
                                           options);
                   }));
    const int64_t n = static_cast<int64_t>(files.size());
    Tensor* paths;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, TensorShape({n}), &paths));
    std::vector<int64_t> columns[5];
    for (int64_t i = 0; i < n; ++i) {
      paths->flat<tensorflow::tstring>()(i) = files[i].path;
      columns[0].push_back(files[i].rows);
      columns[1].push_back(files[i].bytes);
      columns[2].push_back(files[i].crc32);
      columns[3].push_back(files[i].oldest_update);
      columns[4].push_back(files[i].newest_update);
    }
    for (int i = 0; i < 5; ++i) SetVectorOutput(ctx, i + 1, columns[i]);
  }

 private:
  RowFileOptions options_;
};

REGISTER_KERNEL_BUILDER(Name("MonolithHashTable").Device(DEVICE_CPU), CreateTableOp);
REGISTER_KERNEL_BUILDER(Name("MonolithShardIds").Device(DEVICE_CPU), ShardIdsOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableLookupMulti").Device(DEVICE_CPU), LookupMultiOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableApplyGradientsMulti").Device(DEVICE_CPU),
                        ApplyGradientsMultiOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableLookup").Device(DEVICE_CPU), LookupOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableApplyGradients").Device(DEVICE_CPU),
                        ApplyGradientsOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableAssign").Device(DEVICE_CPU), AssignOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableRemove").Device(DEVICE_CPU), RemoveOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableSize").Device(DEVICE_CPU), SizeOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableExport").Device(DEVICE_CPU), ExportOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableEvictExpired").Device(DEVICE_CPU), EvictExpiredOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableTakeRemoved").Device(DEVICE_CPU), TakeRemovedOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableTakeSyncChanges").Device(DEVICE_CPU),
                        TakeSyncChangesOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableStats").Device(DEVICE_CPU), StatsOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableSaveFilter").Device(DEVICE_CPU), SaveFilterOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableRestoreFilter").Device(DEVICE_CPU),
                        RestoreFilterOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableImport").Device(DEVICE_CPU), ImportOp);
REGISTER_KERNEL_BUILDER(Name("MonolithHashTableWriteRows").Device(DEVICE_CPU), WriteRowsOp);

}  // namespace
}  // namespace monolith
