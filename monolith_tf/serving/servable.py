"""One loaded version of a served model: predictions, and the updates a
live model takes (rows, removals, dense swaps) while requests run.

A ``Servable`` wraps a SavedModel loaded with ``tf.saved_model.load``. Any
SavedModel can be served; an export of ``monolith_tf.serving.export`` (its
``assets/monolith_serving.json`` names the tables and dense inputs) also
takes updates:

- ``apply_rows`` / ``remove_rows`` run the export's ``upsert`` / ``remove``
  signatures. Stock hash tables lock per call (shared to find, exclusive to
  insert), so a request sees each row wholly old or wholly new. Updates are
  checked first (known table, dim, dtype, lengths, finite values); a
  refused update changes nothing.
- ``swap_dense`` runs ``assign_dense``, which writes the inactive slot of
  the double-buffered dense weights and then flips the active one. Before
  writing a slot it waits until no request still reads it (requests that
  began before the previous swap), so every response is computed from one
  dense version.
"""

import contextlib
import os
import threading

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from monolith_tf.config import ServerConfig
from monolith_tf.export_format import METADATA_FILE, read_metadata, unpack_half_rows
from monolith_tf.serving.batching import RequestBatcher
from monolith_tf.serving.errors import ServingError, from_tf_error, invalid

DEFAULT_SIGNATURE = "serving_default"
UPDATE_SIGNATURES = ("upsert", "remove", "assign_dense")


class BatchingOptions:
    """Server-side batching: wait up to ``batch_timeout_seconds`` for
    requests to merge; ``threads`` merged calls at once."""

    def __init__(self, batch_timeout_seconds=0.0, threads=2):
        if batch_timeout_seconds < 0 or threads < 1:
            raise ValueError("batching needs batch_timeout_seconds >= 0 and threads >= 1")
        self.batch_timeout_seconds, self.threads = batch_timeout_seconds, threads


class _DenseSlots:
    """Which slot of the double-buffered dense weights new requests read, the
    dense version each slot holds, and how many requests still run per slot."""

    def __init__(self, active, versions):
        self._changed = threading.Condition()
        self._active = active
        self._versions = list(versions)
        self._readers = [0, 0]

    @property
    def version(self):
        """Dense version of the active slot."""
        with self._changed:
            return self._versions[self._active]

    @contextlib.contextmanager
    def reading(self):
        """Counts a request as a reader of the active slot while it runs;
        yields that slot's dense version."""
        with self._changed:
            slot = self._active
            self._readers[slot] += 1
            version = self._versions[slot]
        try:
            yield version
        finally:
            with self._changed:
                self._readers[slot] -= 1
                if not self._readers[slot]:
                    self._changed.notify_all()

    def swap(self, write, version, timeout):
        """Waits until the inactive slot has no readers, runs ``write()``
        (which fills that slot and flips the graph's active slot), then sends
        new requests to it. Callers serialize swaps."""
        with self._changed:
            target = 1 - self._active
            if not self._changed.wait_for(lambda: self._readers[target] == 0, timeout):
                raise ServingError(grpc.StatusCode.UNAVAILABLE,
                                   f"dense swap: requests on the previous dense version did "
                                   f"not finish within {timeout} s; nothing was changed")
        # A request that counted itself on the old slot may already read the
        # new one (the graph flipped first): it is waited for one swap late,
        # which is safe; the reverse cannot happen.
        write()
        with self._changed:
            self._versions[target] = version
            self._active = target


def read_signature_defs(export_dir, tags=("serve",)):
    """``{name: SignatureDef}`` of the MetaGraph tagged ``tags`` in the
    SavedModel at ``export_dir``, as TF Serving reports them in
    GetModelMetadata. ValueError if no MetaGraph has exactly those tags."""
    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(export_dir, "saved_model.pb"), "rb") as source:
        saved_model.ParseFromString(source.read())
    for meta_graph in saved_model.meta_graphs:
        if set(meta_graph.meta_info_def.tags) == set(tags):
            return dict(meta_graph.signature_def)
    available = [sorted(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise ValueError(f"Could not find meta graph def matching supplied tags: "
                     f"{{ {' '.join(sorted(tags))} }}; the SavedModel has {available}")


def _numpy_dtype_name(array):
    if array.dtype.kind in "OSU":
        return "string"
    return tf.as_dtype(array.dtype).name


class Servable:
    """Version ``version`` of model ``name``, loaded from ``path``.

    Args:
      name, version: what requests call it by.
      path: a SavedModel directory (``BASE/<version>``).
      metrics: a ``ServingMetrics`` the updates count into.
      max_batch_size: most rows (first dimension) one prediction request may
        carry; larger ones get INVALID_ARGUMENT. With batching, also the
        most rows of a merged call.
      batching: None, or ``BatchingOptions``: concurrent requests of a
        signature are merged into one model call (``batching.py``).
      tags: the tags of the MetaGraph to load (``--saved_model_tags``).
    """

    def __init__(self, name, version, path, metrics, max_batch_size=ServerConfig.max_batch_size,
                 batching=None, tags=("serve",)):
        self.name, self.version, self.path = name, version, path
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self._batching = batching
        self._batchers = {}
        self._batchers_lock = threading.Lock()
        self._closed = False
        self.signature_defs = read_signature_defs(path, tags)
        self._loaded = tf.saved_model.load(path, tags=list(tags))
        self._signatures = dict(self._loaded.signatures)
        self._input_specs = {name: fn.structured_input_signature[1]
                             for name, fn in self._signatures.items()}
        self._output_names = {name: sorted(fn.structured_outputs)
                              for name, fn in self._signatures.items()}
        self.facts = None
        if os.path.isfile(os.path.join(path, "assets", METADATA_FILE)):
            self.facts = read_metadata(path)
        self._table_dims = {t["name"]: t["dim"] for t in (self.facts or {}).get("tables", [])}
        self._dense_slots = None
        if self.facts is not None:
            self._dense_slots = _DenseSlots(int(self._loaded.active_slot.numpy()),
                                            self._loaded.slot_versions.numpy().tolist())
        self._swap_lock = threading.Lock()

    # ----------------------------------------------------------- predictions

    @property
    def takes_updates(self):
        """Whether this is a ``monolith_tf`` export (rows and dense swaps)."""
        return self.facts is not None

    @property
    def dense_version(self):
        """Dense version new requests read (None for other SavedModels)."""
        return self._dense_slots.version if self._dense_slots else None

    def input_specs(self, signature_name):
        """``{input name: tf.TensorSpec}`` of a signature; INVALID_ARGUMENT
        for an unknown one (what TF Serving's REST API answers)."""
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self._input_specs:
            raise invalid(f'Serving signature name: "{name}" not found in signature def')
        return self._input_specs[name]

    def signature_def(self, signature_name):
        """The SignatureDef of a signature; FAILED_PRECONDITION for an
        unknown one (TF Serving's Predict)."""
        name = signature_name or DEFAULT_SIGNATURE
        if name not in self._input_specs:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f'Serving signature key "{name}" not found.')
        return self.signature_defs[name]

    def predict(self, signature_name, inputs, output_filter=()):
        """Runs a signature on ``inputs`` (``{name: numpy array}``); returns
        ``{output name: numpy array}`` (only ``output_filter``'s names if
        given). Inputs must be the signature's, of its dtypes; their shapes
        are left to TensorFlow, as TF Serving does (a ``[-1, 1]`` input fed
        ``[3]`` runs). The update signatures of an export go through
        ``apply_rows``/``remove_rows``/``swap_dense``. Raises ServingError."""
        name = signature_name or DEFAULT_SIGNATURE
        self.signature_def(name)
        self._check_inputs(name, self._input_specs[name], inputs)
        outputs = self._output_names[name]
        for alias in output_filter:
            if alias not in outputs:
                raise invalid(f"output tensor alias not found in signature: {alias} "
                              f"Outputs expected to be in the set {{{','.join(outputs)}}}.")
        if len(set(output_filter)) != len(output_filter):
            duplicate = next(a for a in output_filter if list(output_filter).count(a) > 1)
            raise invalid(f"duplicate output tensor alias: {duplicate}")
        if self.takes_updates and name in UPDATE_SIGNATURES:
            result = self._update_through_predict(name, inputs)
        else:
            result = self._runner(name)(inputs)
        if output_filter:
            result = {key: result[key] for key in output_filter}
        return result

    def run(self, signature_name, inputs):
        """Runs a signature on ``inputs`` as they are (Classify and Regress,
        which check their signatures themselves); returns ``{output name:
        numpy array}``. Raises ServingError."""
        return self._runner(signature_name or DEFAULT_SIGNATURE)(inputs)

    def _runner(self, name):
        """``run(inputs) -> outputs`` for a signature: direct, or through its
        RequestBatcher when batching is on."""
        if self._batching is None or self._closed:  # closed: the last requests run alone
            return lambda inputs: self._call(name, inputs)
        batcher = self._batchers.get(name)
        if batcher is None:
            with self._batchers_lock:
                batcher = self._batchers.get(name)
                if batcher is None:
                    batcher = RequestBatcher(
                        lambda inputs: self._call(name, inputs), self.max_batch_size,
                        self._batching.batch_timeout_seconds, self._batching.threads,
                        on_call=self.metrics.batched_call)
                    self._batchers[name] = batcher
        return batcher

    def _call(self, name, inputs):
        specs = self._input_specs[name]
        tensors = {key: tf.constant(value, dtype=specs[key].dtype)
                   for key, value in inputs.items()}
        with self._reading_dense():
            try:
                return {key: value.numpy()
                        for key, value in self._signatures[name](**tensors).items()}
            except tf.errors.OpError as error:
                raise from_tf_error(error) from None
            except (TypeError, ValueError) as error:  # refused by the function's own checks
                raise invalid(f"signature {name}: {error}") from None

    def close(self):
        """Stops the batch threads (after the requests they hold)."""
        with self._batchers_lock:
            self._closed = True
            batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            batcher.close()

    def _reading_dense(self):
        return self._dense_slots.reading() if self._dense_slots else contextlib.nullcontext()

    def _check_inputs(self, name, specs, inputs):
        sent, expected = set(inputs), set(specs)
        if sent != expected:
            raise invalid(f"input size does not match signature: {len(sent)}!={len(expected)} "
                          f"len({sorted(sent)}) != len({sorted(expected)}). Sent extra: "
                          f"{sorted(sent - expected)}. Missing but required: "
                          f"{sorted(expected - sent)}.")
        for key, value in inputs.items():
            spec = specs[key]
            got = _numpy_dtype_name(value)
            if got != spec.dtype.name:
                raise invalid(f"Expects arg[{key}] to be {spec.dtype.name} but {got} is provided")
            if (name not in UPDATE_SIGNATURES and value.ndim and
                    value.shape[0] > self.max_batch_size):
                raise invalid(f"input {key}: batch of {value.shape[0]} rows exceeds the "
                              f"server's limit of {self.max_batch_size} (--max_batch_size)")

    def warm_up(self):
        """Runs the default signature once on a batch of one zero example, so
        the first real request does not pay for lazy initialization."""
        specs = self._input_specs.get(DEFAULT_SIGNATURE)
        if not specs:
            return
        inputs = {}
        for key, spec in specs.items():
            if spec.shape.rank is None:
                return
            shape = [1 if size is None else size for size in spec.shape.as_list()]
            inputs[key] = (np.full(shape, b"", dtype=object) if spec.dtype == tf.string
                           else np.zeros(shape, spec.dtype.as_numpy_dtype))
        self.predict(DEFAULT_SIGNATURE, inputs)

    # --------------------------------------------------------------- updates

    def _require_updates(self):
        if not self.takes_updates:
            raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"model {self.name} version {self.version} is not a monolith_tf "
                               "export (no assets/monolith_serving.json): it takes no updates")

    def _check_table_ids(self, table, ids):
        self._require_updates()
        if table not in self._table_dims:
            raise invalid(f"unknown table {table!r}; this model has {sorted(self._table_dims)}")
        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu" and not (ids.size == 0 and ids.dtype.kind == "f"):
            raise invalid(f"ids must be integers (int64), got {ids.dtype.name}")
        if ids.ndim != 1:
            raise invalid(f"ids must be a vector, got shape {list(ids.shape)}")
        return ids.astype(np.int64)

    def check_rows(self, table, ids, values):
        """Checks rows as ``apply_rows`` would, applying nothing; returns them
        as (int64 ids, float32 values). Raises ServingError."""
        ids = self._check_table_ids(table, ids)
        values = np.asarray(values)
        if values.dtype.kind != "f" and not (values.size == 0 and values.dtype.kind in "iu"):
            raise invalid(f"values must be float32, got {values.dtype.name}")
        dim = self._table_dims[table]
        if values.shape != (len(ids), dim):
            raise invalid(f"values of {table} must have shape [{len(ids)}, {dim}] "
                          f"(ids, dim), got {list(values.shape)}")
        values = values.astype(np.float32)
        if not np.isfinite(values).all():
            raise invalid(f"values of {table} hold NaN or Inf; nothing was applied")
        return ids, values

    def apply_rows(self, table, ids, values, data_time=None):
        """Inserts or overwrites rows ``ids`` of ``table`` with ``values``
        (float32 ``[len(ids), dim]``); ``data_time``: the newest data time
        (seconds) the rows reflect, for freshness metrics. Returns the row
        count. Raises ServingError (INVALID_ARGUMENT) and applies nothing for
        an unknown table, wrong dim, non-float values or NaN/Inf."""
        ids, values = self.check_rows(table, ids, values)
        self._run_update("upsert", table=tf.constant(table), ids=tf.constant(ids),
                         values=tf.constant(values))
        self.metrics.rows_applied(table, "upsert", len(ids), data_time)
        return len(ids)

    def remove_rows(self, table, ids, data_time=None):
        """Removes rows ``ids`` of ``table`` (absent ids are ignored; removed
        ids read the default row again). Returns the number of ids given."""
        ids = self._check_table_ids(table, ids)
        self._run_update("remove", table=tf.constant(table), ids=tf.constant(ids))
        self.metrics.rows_applied(table, "remove", len(ids), data_time)
        return len(ids)

    def swap_dense(self, weights, version, timeout=30.0):
        """Replaces all dense weights with ``weights`` (arrays in the order of
        the export's ``dense`` list) as dense version ``version``, atomically
        for requests (module doc). Raises ServingError and changes nothing
        for a wrong count, shape, dtype or non-finite weight."""
        self._require_updates()
        expected = self.facts["dense"]
        if isinstance(version, bool) or not isinstance(version, (int, np.integer)) or version < 0:
            raise invalid(f"dense version must be an int >= 0, got {version!r}")
        if len(weights) != len(expected):
            raise invalid(f"dense swap needs {len(expected)} weights, got {len(weights)}")
        arrays = []
        for spec, weight in zip(expected, weights):
            weight = np.asarray(weight)
            if list(weight.shape) != spec["shape"]:
                raise invalid(f"dense weight {spec['name']} must have shape {spec['shape']}, "
                              f"got {list(weight.shape)}")
            target = np.dtype(tf.as_dtype(spec["dtype"]).as_numpy_dtype)
            if weight.dtype.kind != target.kind:
                raise invalid(f"dense weight {spec['name']} must be {spec['dtype']}, "
                              f"got {weight.dtype.name}")
            if target.kind == "f" and not np.isfinite(weight).all():
                raise invalid(f"dense weight {spec['name']} holds NaN or Inf; nothing was "
                              "applied")
            arrays.append(tf.constant(weight.astype(target)))
        inputs = {"version": tf.constant(int(version), tf.int64)}
        inputs.update({spec["input"]: array for spec, array in zip(expected, arrays)})
        with self._swap_lock:
            self._dense_slots.swap(lambda: self._run_update("assign_dense", **inputs),
                                   int(version), timeout)
        self.metrics.dense_swapped(self.name, int(version))
        return int(version)

    def table_rows(self, table):
        """Every row of ``table`` in this version: ``(ids int64 [n], values
        float32 [n, dim])`` sorted by id (for checks and debugging: copies
        the table)."""
        self._require_updates()
        names = [t["name"] for t in self.facts["tables"]]
        if table not in names:
            raise invalid(f"unknown table {table!r}; this model has {sorted(names)}")
        dim = self._table_dims[table]
        half = self.facts["row_dtype"] == "float16"  # two float16 halves per int32
        keys, values = tf.raw_ops.LookupTableExportV2(
            table_handle=self._loaded.tables[names.index(table)].table.resource_handle,
            Tkeys=tf.int64, Tvalues=tf.int32 if half else tf.float32)
        ids, rows = keys.numpy(), values.numpy()
        if half:
            rows = unpack_half_rows(rows, dim)
        order = np.argsort(ids)
        return ids[order], rows[order].reshape(len(ids), dim)

    def dense_weights(self):
        """The dense weights new requests read, in the export's order."""
        self._require_updates()
        slot = int(self._loaded.active_slot.numpy())
        return [v.numpy() for v in self._loaded.dense_slots[slot]]

    def _run_update(self, signature, **inputs):
        try:
            return self._signatures[signature](**inputs)
        except tf.errors.OpError as error:
            raise from_tf_error(error) from None

    def _update_through_predict(self, name, inputs):
        """A Predict call on an update signature, run as the matching update
        (so dense swaps keep their reader accounting)."""
        if name == "assign_dense":
            weights = [inputs[spec["input"]] for spec in self.facts["dense"]]
            version = self.swap_dense(weights, int(inputs["version"]))
            return {"version": np.int64(version)}
        table = inputs["table"].item()
        table = table.decode("utf-8", "replace") if isinstance(table, bytes) else str(table)
        if name == "upsert":
            return {"rows": np.int64(self.apply_rows(table, inputs["ids"], inputs["values"]))}
        return {"rows": np.int64(self.remove_rows(table, inputs["ids"]))}

