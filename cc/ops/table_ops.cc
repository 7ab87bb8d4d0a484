// Op registrations with full shape functions (Keras 3 infers output specs from
// them). Names are namespaced "Monolith*". Kernels are in table_kernels.cc.
#include <string>

#include "cc/table/table_config.h"
#include "tensorflow/core/framework/common_shape_fns.h"
#include "tensorflow/core/framework/op.h"
#include "tensorflow/core/framework/shape_inference.h"

namespace monolith {
namespace {

using tensorflow::Status;
using tensorflow::shape_inference::DimensionHandle;
using tensorflow::shape_inference::InferenceContext;
using tensorflow::shape_inference::ShapeHandle;

Status DimAttr(InferenceContext* c, int64_t* dim) {
  TF_RETURN_IF_ERROR(c->GetAttr("dim", dim));
  if (*dim <= 0) {
    return tensorflow::errors::InvalidArgument("dim must be > 0, got ", *dim);
  }
  return tensorflow::OkStatus();
}

// Scalar, or the same shape as ids.
Status CheckTimestamps(InferenceContext* c, ShapeHandle ids, ShapeHandle ts) {
  if (c->RankKnown(ts) && c->Rank(ts) == 0) return tensorflow::OkStatus();
  ShapeHandle unused;
  return c->Merge(ids, ts, &unused);
}

// Attr defaults are the core's TableConfig defaults.
const TableConfig kDefaults;

std::string StringAttr(const char* name, const std::string& fallback) {
  return std::string(name) + ": string = '" + fallback + "'";
}

std::string IntAttr(const char* name, int64_t fallback) {
  return std::string(name) + ": int = " + std::to_string(fallback);
}

}  // namespace

REGISTER_OP("MonolithHashTable")
    .Output("table_handle: resource")
    .Attr("dim: int")
    .Attr(StringAttr("initializer", kDefaults.initializer))
    .Attr(StringAttr("optimizer", kDefaults.optimizer))
    .Attr(IntAttr("seed", static_cast<int64_t>(kDefaults.seed)))
    .Attr(IntAttr("capacity_hint", kDefaults.capacity_hint))
    .Attr(IntAttr("occurrence_threshold", kDefaults.occurrence_threshold))
    .Attr(StringAttr("admission_filter", kDefaults.admission_filter))
    .Attr(IntAttr("expire_after", kDefaults.expire_after))
    .Attr(IntAttr("evict_every", kDefaults.evict_every))
    .Attr("container: string = ''")
    .Attr("shared_name: string = ''")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      int64_t dim;
      TF_RETURN_IF_ERROR(DimAttr(c, &dim));
      c->set_output(0, c->Scalar());
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
Creates (or finds, by container/shared_name) a cuckoo-hash embedding table.
dim: floats per row. initializer, optimizer: specs such as
"truncated_normal(stddev=0.02)" and "adam(beta1=0.9)". seed: seeds the
hashes and the keyed initializers. capacity_hint: rows before the first growth.
occurrence_threshold, admission_filter: an id gets an entry at its k-th
training lookup (0: first). expire_after (seconds of data time), evict_every
(applies): expiry of inactive entries.
With an empty shared_name the table is anonymous: owned by its handles and
freed with the last one. Otherwise it lives in the resource manager under
container/shared_name until destroyed, and creators with that name share it.
)doc");

REGISTER_OP("MonolithShardIds")
    .Input("ids: int64")
    .Output("shards: int32")
    .Attr("num_shards: int")
    .SetShapeFn([](InferenceContext* c) {
      int64_t num_shards;
      TF_RETURN_IF_ERROR(c->GetAttr("num_shards", &num_shards));
      if (num_shards < 1 || num_shards > (int64_t{1} << 30)) {
        return tensorflow::errors::InvalidArgument("num_shards must be in [1, 2^30], got ",
                                                   num_shards);
      }
      c->set_output(0, c->input(0));
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
The shard of each id (any shape; same shape out): the parameter-server task
that holds its row in a table sharded `num_shards` ways. Stable across
processes and restarts (cc/table/sharding.h documents the hash).
)doc");

REGISTER_OP("MonolithHashTableLookup")
    .Input("table_handle: resource")
    .Input("ids: int64")
    .Output("values: float32")
    .Attr("dim: int")
    .Attr("insert_missing: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      int64_t dim;
      TF_RETURN_IF_ERROR(DimAttr(c, &dim));
      ShapeHandle out;
      TF_RETURN_IF_ERROR(c->Concatenate(c->input(1), c->Vector(dim), &out));
      c->set_output(0, out);
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
Rows of `ids` (any shape); values has shape ids.shape + [dim]. With
insert_missing (training) a missing id is inserted with its initial value;
without it (serving) a missing id reads as zeros and nothing is inserted.
)doc");

REGISTER_OP("MonolithHashTableApplyGradients")
    .Input("table_handle: resource")
    .Input("ids: int64")
    .Input("grads: float32")
    .Input("learning_rate: float32")
    .Input("timestamps: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle expected, unused;
      TF_RETURN_IF_ERROR(
          c->Concatenate(c->input(1), c->Vector(InferenceContext::kUnknownDim), &expected));
      TF_RETURN_IF_ERROR(c->Merge(c->input(2), expected, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 0, &unused));
      return CheckTimestamps(c, c->input(1), c->input(4));
    })
    .Doc(R"doc(
One in-place optimizer step on the rows of `ids`: grads has shape
ids.shape + [dim]; gradients of duplicate ids are summed first. timestamps
(data time, seconds) is a scalar or one per id; each row keeps the largest.
)doc");

REGISTER_OP("MonolithHashTableAssign")
    .Input("table_handle: resource")
    .Input("ids: int64")
    .Input("values: float32")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle expected, unused;
      TF_RETURN_IF_ERROR(
          c->Concatenate(c->input(1), c->Vector(InferenceContext::kUnknownDim), &expected));
      return c->Merge(c->input(2), expected, &unused);
    })
    .Doc("Inserts or overwrites the embeddings of `ids` (values: ids.shape + [dim]).");

REGISTER_OP("MonolithHashTableRemove")
    .Input("table_handle: resource")
    .Input("ids: int64")
    .Output("removed: int64")
    .SetIsStateful()
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc("Removes `ids`; returns how many were present.");

REGISTER_OP("MonolithHashTableSize")
    .Input("table_handle: resource")
    .Output("size: int64")
    .SetIsStateful()
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc("Number of rows in the table.");

REGISTER_OP("MonolithHashTableEvictExpired")
    .Input("table_handle: resource")
    .Output("evicted: int64")
    .SetIsStateful()
    .SetShapeFn(tensorflow::shape_inference::ScalarShape)
    .Doc("Removes entries idle for more than expire_after seconds of data time.");

REGISTER_OP("MonolithHashTableStats")
    .Input("table_handle: resource")
    .Output("stats: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(TableStats::kNumFields));
      return tensorflow::OkStatus();
    })
    .Doc("Counters in the order of the core's TableStats::FieldNames(): size, admitted, "
         "rejected, evicted, memory_bytes, now (data time).");

REGISTER_OP("MonolithHashTableSaveFilter")
    .Input("table_handle: resource")
    .Output("state: uint8")
    .Output("now: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      c->set_output(1, c->Scalar());
      return tensorflow::OkStatus();
    })
    .Doc("Admission filter state (empty without a filter) and the newest data time.");

REGISTER_OP("MonolithHashTableRestoreFilter")
    .Input("table_handle: resource")
    .Input("state: uint8")
    .Input("now: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &unused));
      return c->WithRank(c->input(2), 0, &unused);
    })
    .Doc("Restores what MonolithHashTableSaveFilter returned.");

REGISTER_OP("MonolithHashTableWriteRows")
    .Input("table_handle: resource")
    .Input("prefix: string")
    .Input("rows_per_block: int64")
    .Input("file_bytes: int64")
    .Output("files: string")
    .Output("rows: int64")
    .Output("bytes: int64")
    .Output("crc32: int64")
    .Output("oldest_update: int64")
    .Output("newest_update: int64")
    .Attr("only_dirty: bool = false")
    .Attr("clear_dirty: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle unused;
      for (int i = 1; i < 4; ++i) TF_RETURN_IF_ERROR(c->WithRank(c->input(i), 0, &unused));
      const ShapeHandle files = c->Vector(InferenceContext::kUnknownDim);
      for (int i = 0; i < 6; ++i) c->set_output(i, files);
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
Writes the table's rows (with only_dirty, the rows changed since the last
clear_dirty export) as sparse-checkpoint row files `<prefix>.00000`, ... in
the process that holds the table, one block of rows_per_block rows at a time,
a new file past file_bytes. Returns per file its path, rows, bytes, CRC-32 and
the oldest and newest row data times (0 for a file without rows).
)doc");

REGISTER_OP("MonolithHashTableExport")
    .Input("table_handle: resource")
    .Input("chunk: int64")
    .Input("num_chunks: int64")
    .Output("keys: int64")
    .Output("values: float32")
    .Output("state: float32")
    .Output("timestamps: int64")
    .Output("counts: int64")
    .Attr("dim: int")
    .Attr("only_dirty: bool = false")
    .Attr("clear_dirty: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      int64_t dim;
      TF_RETURN_IF_ERROR(DimAttr(c, &dim));
      ShapeHandle unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 0, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 0, &unused));
      const DimensionHandle rows = c->UnknownDim();
      c->set_output(0, c->Vector(rows));
      c->set_output(1, c->Matrix(rows, dim));
      c->set_output(2, c->Matrix(rows, InferenceContext::kUnknownDim));
      c->set_output(3, c->Vector(rows));
      c->set_output(4, c->Vector(rows));
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
Rows of chunk `chunk` of `num_chunks` (slices of the hash index): keys,
embeddings, optimizer state, last-update data times and occurrence counts.
only_dirty keeps rows changed since their last clear_dirty export (deltas).
)doc");

REGISTER_OP("MonolithHashTableTakeRemoved")
    .Input("table_handle: resource")
    .Output("keys: int64")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      c->set_output(0, c->Vector(InferenceContext::kUnknownDim));
      return tensorflow::OkStatus();
    })
    .Doc("Keys removed or evicted since the previous call (for delta checkpoints).");

REGISTER_OP("MonolithHashTableTakeSyncChanges")
    .Input("table_handle: resource")
    .Output("keys: int64")
    .Output("values: float32")
    .Output("timestamps: int64")
    .Output("removed: int64")
    .Attr("dim: int")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      int64_t dim;
      TF_RETURN_IF_ERROR(DimAttr(c, &dim));
      const DimensionHandle rows = c->UnknownDim();
      c->set_output(0, c->Vector(rows));
      c->set_output(1, c->Matrix(rows, dim));
      c->set_output(2, c->Vector(rows));
      c->set_output(3, c->Vector(InferenceContext::kUnknownDim));
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
Rows inserted or updated since the previous call (keys, embeddings, data
times) and keys removed or evicted since, for sync pushes; a record of its
own, apart from delta checkpoints. The first call starts it (no rows).
)doc");

REGISTER_OP("MonolithHashTableImport")
    .Input("table_handle: resource")
    .Input("keys: int64")
    .Input("values: float32")
    .Input("state: float32")
    .Input("timestamps: int64")
    .Input("counts: int64")
    .Attr("clear: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      ShapeHandle keys, unused;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(1), 1, &keys));
      const DimensionHandle rows = c->Dim(keys, 0);
      TF_RETURN_IF_ERROR(c->WithRank(c->input(2), 2, &unused));
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3), 2, &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->input(4), c->Vector(rows), &unused));
      TF_RETURN_IF_ERROR(c->Merge(c->input(5), c->Vector(rows), &unused));
      return tensorflow::OkStatus();
    })
    .Doc("Upserts full rows (as Export returns them); `clear` empties the table first.");

}  // namespace monolith

namespace monolith {

// Fused forms for many features: one op call per step for all of a model's
// tables, instead of one per feature.
REGISTER_OP("MonolithHashTableLookupMulti")
    .Input("table_handles: N * resource")
    .Input("ids: N * int64")
    .Output("values: N * float32")
    .Attr("N: int >= 1")
    .Attr("dims: list(int)")
    .Attr("insert_missing: bool = false")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      std::vector<int64_t> dims;
      TF_RETURN_IF_ERROR(c->GetAttr("dims", &dims));
      const int n = c->num_outputs();
      if (static_cast<int>(dims.size()) != n) {
        return tensorflow::errors::InvalidArgument("dims has ", dims.size(),
                                                   " entries for ", n, " tables");
      }
      for (int i = 0; i < n; ++i) {
        if (dims[i] <= 0) {
          return tensorflow::errors::InvalidArgument("dims[", i, "] must be > 0, got ",
                                                     dims[i]);
        }
        ShapeHandle out;
        TF_RETURN_IF_ERROR(c->Concatenate(c->input(n + i), c->Vector(dims[i]), &out));
        c->set_output(i, out);
      }
      return tensorflow::OkStatus();
    })
    .Doc("MonolithHashTableLookup over N (table, ids) pairs in one call.");

REGISTER_OP("MonolithHashTableApplyGradientsMulti")
    .Input("table_handles: N * resource")
    .Input("ids: N * int64")
    .Input("grads: N * float32")
    .Input("learning_rates: float32")
    .Input("timestamps: N * int64")
    .Output("updated_rows: int64")
    .Attr("N: int >= 1")
    .SetIsStateful()
    .SetShapeFn([](InferenceContext* c) {
      int n;
      TF_RETURN_IF_ERROR(c->GetAttr("N", &n));
      ShapeHandle rates;
      TF_RETURN_IF_ERROR(c->WithRank(c->input(3 * n), 1, &rates));
      DimensionHandle unused_dim;
      TF_RETURN_IF_ERROR(c->WithValue(c->Dim(rates, 0), n, &unused_dim));
      for (int i = 0; i < n; ++i) {
        ShapeHandle expected, unused;
        TF_RETURN_IF_ERROR(c->Concatenate(
            c->input(n + i), c->Vector(InferenceContext::kUnknownDim), &expected));
        TF_RETURN_IF_ERROR(c->Merge(c->input(2 * n + i), expected, &unused));
        TF_RETURN_IF_ERROR(CheckTimestamps(c, c->input(n + i), c->input(3 * n + 1 + i)));
      }
      c->set_output(0, c->Scalar());
      return tensorflow::OkStatus();
    })
    .Doc(R"doc(
MonolithHashTableApplyGradients over N (table, ids, grads) triples in one
call; learning_rates holds one rate per table, timestamps one tensor per table.
updated_rows counts the distinct rows updated; consuming it (rather than a
control dependency) keeps the update alive in gradient functions.
)doc");

}  // namespace monolith
