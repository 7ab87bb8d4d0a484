"""Serving export with stock TensorFlow ops only.

``export_saved_model(model, path)`` writes a SavedModel in which every hash
table of the model's HashEmbedding layers is a stock
``tf.lookup.experimental.MutableHashTable`` (int64 id -> float32 row) holding
the table's rows, so unmodified TF Serving and ``saved_model_cli`` load it
without this package's op library. Signatures:

- ``serving_default``: the model's prediction (output ``output``) from raw
  ids; unseen ids read the default row (zeros), as in the training
  process's serving mode.
- ``upsert``: ``(table: string, ids: int64 [n], values: float32 [n, dim])``
  inserts or overwrites rows of one table in the loaded model, so a serving
  process applies fresh sparse rows without a reload. Returns the row count.
  Values holding NaN or Inf are refused.
- ``remove``: ``(table: string, ids: int64 [n])`` removes rows of one table
  (rows that training evicted by expiry leave the server too); removed ids
  read the default row (zeros) again, absent ids are ignored. Returns the
  number of ids given.
- ``assign_dense``: ``(version: int64, dense_0 ... dense_<n-1>)`` replaces
  all dense weights at once and returns ``version``. Inputs follow
  ``model.variables`` order without the hash layers' counters (listed in
  ``assets/monolith_serving.json``).
Table names are ``<layer name>/<feature>`` (``schema.table_name``); an
unknown table name is an InvalidArgumentError and changes nothing. A stock
hash table takes a shared lock to find and an exclusive one to insert or
remove, so a lookup sees each row wholly old or wholly new.

Dense weights are double-buffered: the export holds two slots of dense
variables (the model's and those of a clone sharing its hash layers) and an
``active_slot`` variable. ``serving_default`` reads ``active_slot`` once and
runs the model of that slot, so a response is computed from one slot only;
``assign_dense`` checks every weight first, writes the inactive slot, then
flips ``active_slot``. A request that began before a flip still reads the old
slot, which the *next* ``assign_dense`` overwrites: under stock TF Serving,
space dense swaps further apart than the longest request (dense pushes come
minutes apart); ``monolith_tf``'s server also waits for such requests to
finish before it writes a slot. The dense weights are held twice.

``row_dtype="float16"`` stores rows at half size. Stock hash tables have no
float16 values, so each pair of float16 halves is packed into one int32
(``tf.bitcast``, a stock op) and unpacked at lookup. Rounding error per
element: at most 2^-11 (about 4.9e-4) relative for |x| >= 6.1e-5, at most
2^-25 (about 3e-8) absolute below; rows beyond float16's range (65504) are
refused at export and at upsert.

``export_version(model, base_path)`` writes the next version directory of a
TF Serving model base path atomically (``base_path/<version>/``).
"""

import contextlib
import os
import shutil
import tempfile

import tensorflow as tf

from monolith_tf.dense_checkpoint import as_tf_variable
from monolith_tf.export_format import (FLOAT16_MAX, check_row_dtype, fits_float16, list_versions,
                                       version_path, write_metadata_file, write_sync_state)
from monolith_tf.layers import hash_embedding_layers
from monolith_tf.schema import table_name
from monolith_tf.sparse_checkpoint import write_error_parts

keras = tf.keras


def _input_specs(model):
    inputs = getattr(model, "input", None)
    if inputs is None:
        raise ValueError("export_saved_model needs a model with defined inputs "
                         "(a functional or built Sequential model)")
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype, name=getattr(t, "name", None)), inputs)


class ExportError(OSError):
    """A serving export could not be written (e.g. the disk is full); no
    version directory was created and no staging files are left."""


class _FloatRows(tf.Module):
    """Serving rows in a stock MutableHashTable, int64 id -> float32 row."""

    def __init__(self, dim):
        super().__init__()
        self.table = tf.lookup.experimental.MutableHashTable(
            tf.int64, tf.float32, default_value=tf.zeros([dim]))

    def insert(self, ids, values):
        return self.table.insert(ids, values)

    def remove(self, ids):
        return self.table.remove(ids)

    def lookup(self, ids):
        return self.table.lookup(ids)


class _HalfRows(tf.Module):
    """Serving rows as float16, two per int32 value of a stock MutableHashTable
    (stock tables hold no float16); read back as float32."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.packed_dim = (dim + 1) // 2
        self.table = tf.lookup.experimental.MutableHashTable(
            tf.int64, tf.int32, default_value=tf.zeros([self.packed_dim], tf.int32))

    def insert(self, ids, values):
        check = tf.debugging.assert_less_equal(
            tf.reduce_max(tf.abs(values)), FLOAT16_MAX,
            message="upsert: values beyond the float16 range of this model")
        with tf.control_dependencies([check]):
            halves = tf.cast(values, tf.float16)
        if self.dim % 2:
            halves = tf.pad(halves, [[0, 0], [0, 1]])
        packed = tf.bitcast(tf.reshape(halves, [-1, self.packed_dim, 2]), tf.int32)
        return self.table.insert(ids, packed)

    def remove(self, ids):
        return self.table.remove(ids)

    def lookup(self, ids):
        halves = tf.bitcast(self.table.lookup(ids), tf.float16)  # [..., packed, 2]
        shape = tf.concat([tf.shape(ids), [2 * self.packed_dim]], axis=0)
        return tf.cast(tf.reshape(halves, shape)[..., :self.dim], tf.float32)


_ROW_TABLES = {"float32": _FloatRows, "float16": _HalfRows}


def dense_layers_clone(model, shared_layers):
    """A clone of ``model`` that shares ``shared_layers`` (its hash embedding
    layers: one set of tables) and has its own dense variables, holding the
    same values. Keras' ``clone_model`` rebuilds functional and Sequential
    models from their layer configs."""
    shared = {id(layer) for layer in shared_layers}

    def clone_layer(layer):
        return layer if id(layer) in shared else layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone_layer)


def dense_variables(model, hash_layers):
    """The model's variables minus those of its hash embedding layers (their
    training counters do nothing at serving time), in ``model.variables`` order:
    the order of ``assign_dense``'s ``dense_<i>`` inputs."""
    skip = {id(as_tf_variable(v)) for layer in hash_layers for v in layer.variables}
    return [as_tf_variable(v) for v in model.variables if id(as_tf_variable(v)) not in skip]


def _check_same_variables(first, second):
    if [(tuple(a.shape), a.dtype) for a in first] != [(tuple(b.shape), b.dtype) for b in second]:
        raise ValueError("export_saved_model: the model's clone has other variables than the "
                         "model (a layer whose config does not rebuild it?); cannot double-"
                         "buffer its dense weights")


def export_saved_model(model, path, row_dtype="float32", dense_version=0):
    """Writes ``model`` as a stock-ops SavedModel at ``path`` (see module doc).

    ``row_dtype``: ``"float32"`` (exact rows) or ``"float16"`` (half the
    bytes; error bounds in the module doc). ``dense_version``: the number the
    export's dense weights are known by (int >= 0; ``assign_dense`` replaces
    it). Raises ValueError for a model without HashEmbedding layers or rows
    out of float16 range. The rows are copied once into the stock tables (one
    export of each table in memory); the dense weights are held twice (the
    two slots). Returns the table names.
    """
    check_row_dtype(row_dtype)
    if isinstance(dense_version, bool) or not isinstance(dense_version, int) or dense_version < 0:
        raise ValueError(f"dense_version must be an int >= 0, got {dense_version!r}")
    layers = hash_embedding_layers(model)
    if not layers:
        raise ValueError("export_saved_model: the model has no HashEmbedding or "
                         "HashEmbeddingCollection layer; save it with tf.saved_model.save")
    input_spec = _input_specs(model)
    module = tf.Module()
    names, dims, stock, lookups = [], [], [], []  # lookups: one {feature: fn} per layer
    for layer in layers:
        lookups.append({})
        for feature, table in layer.feature_tables().items():
            name = table_name(layer.name, feature)
            rows = table.export()
            if row_dtype == "float16" and not fits_float16(rows["values"].numpy()):
                raise ValueError(f"{name}: rows exceed the float16 range "
                                 f"({FLOAT16_MAX}); export with row_dtype='float32'")
            stock_table = _ROW_TABLES[row_dtype](table.dim)
            stock_table.insert(rows["keys"], rows["values"])
            names.append(name)
            dims.append(table.dim)
            stock.append(stock_table)
            lookups[-1][feature] = stock_table.lookup
    module.tables = stock

    # Two slots of dense weights: slot 0 is the model's, slot 1 a clone's.
    clone = dense_layers_clone(model, layers)
    slots = [dense_variables(model, layers), dense_variables(clone, layers)]
    _check_same_variables(*slots)
    for source, target in zip(*slots):
        target.assign(source)
    module.dense_slots = slots
    # The hash layers' own counters, read by their call: tracked, never swapped.
    module.layer_counters = [as_tf_variable(v) for layer in layers for v in layer.variables]
    module.active_slot = tf.Variable(0, dtype=tf.int32, name="active_slot")
    module.slot_versions = tf.Variable([dense_version, dense_version], dtype=tf.int64,
                                       name="slot_versions")

    # The model's layers read the stock tables while the serving graph is traced.
    with contextlib.ExitStack() as serving:
        for layer, layer_lookups in zip(layers, lookups):
            serving.enter_context(layer.serving_lookups(layer_lookups))
        serving_fn = _serving_function([model, clone], module.active_slot, input_spec)

    table_names_const = tf.constant(names)

    def table_index(table):
        """Position of ``table`` among the stock tables; fails for an unknown name."""
        matches = tf.where(tf.equal(table_names_const, table))
        check = tf.debugging.assert_equal(tf.size(matches), 1,
                                          message="unknown table name")
        with tf.control_dependencies([check]):
            return tf.cast(tf.reshape(matches, [-1])[0], tf.int32)

    def apply_to_table(table, ids, update):
        """Runs ``update(stock_table)`` on the named table; returns len(ids)."""
        def branch_for(stock_table):
            def branch():
                with tf.control_dependencies([update(stock_table)]):
                    return tf.size(ids, out_type=tf.int64)
            return branch

        return tf.switch_case(table_index(table), [branch_for(t) for t in stock])

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="table"),
                                  tf.TensorSpec([None], tf.int64, name="ids"),
                                  tf.TensorSpec([None, None], tf.float32, name="values")])
    def upsert(table, ids, values):
        finite = tf.debugging.check_numerics(values, "upsert: values hold NaN or Inf")
        return {"rows": apply_to_table(table, ids, lambda t: t.insert(ids, finite))}

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="table"),
                                  tf.TensorSpec([None], tf.int64, name="ids")])
    def remove(table, ids):
        return {"rows": apply_to_table(table, ids, lambda t: t.remove(ids))}

    assign_dense = _assign_dense_function(module)
    module.upsert, module.remove, module.assign_dense = upsert, remove, assign_dense
    with tempfile.TemporaryDirectory(prefix="monolith_export_") as scratch:
        module.serving_metadata = tf.saved_model.Asset(write_metadata_file(
            scratch, list(zip(names, dims)), row_dtype,
            [(v.name, v.shape, v.dtype.name) for v in slots[0]], dense_version))
        tf.saved_model.save(module, path, signatures={
            "serving_default": serving_fn,
            "upsert": upsert.get_concrete_function(),
            "remove": remove.get_concrete_function(),
            "assign_dense": assign_dense.get_concrete_function()})
    return names


def _serving_function(slot_models, active_slot, input_spec):
    """``serving_default``: reads ``active_slot`` once, then runs the model
    whose dense variables are that slot's, so a response never mixes slots."""
    def run(features):
        return tf.switch_case(active_slot.read_value(),
                              [lambda m=m: {"output": m(features, training=False)}
                               for m in slot_models])

    if isinstance(input_spec, dict):
        def serve(**features):
            return run(features)

        return tf.function(serve).get_concrete_function(**input_spec)
    specs = input_spec if isinstance(input_spec, (list, tuple)) else [input_spec]

    def serve(*features):
        return run(list(features) if isinstance(input_spec, (list, tuple)) else features[0])

    return tf.function(serve).get_concrete_function(*specs)


def _assign_dense_function(module):
    """``assign_dense(version, dense_0, ..., dense_<n-1>)``: checks every
    weight (shape, finite) before writing any, writes them into the inactive
    slot, then makes it the active one."""
    slots = module.dense_slots
    specs = [tf.TensorSpec([], tf.int64, name="version")] + [
        tf.TensorSpec(v.shape, v.dtype, name=f"dense_{i}") for i, v in enumerate(slots[0])]

    @tf.function(input_signature=specs)
    def assign_dense(version, *weights):
        checks = [tf.debugging.assert_greater_equal(version, tf.constant(0, tf.int64),
                                                    message="version must be >= 0")]
        for i, weight in enumerate(weights):
            if weight.dtype.is_floating:
                checks.append(tf.debugging.check_numerics(
                    weight, f"assign_dense: dense_{i} holds NaN or Inf"))
        with tf.control_dependencies(checks):
            target = 1 - module.active_slot.read_value()
        writes = []
        for index, slot in enumerate(slots):
            def write(slot=slot):
                with tf.control_dependencies([v.assign(w) for v, w in zip(slot, weights)]):
                    return tf.constant(True)
            writes.append(write)
        # Slot `index` is written when target == index: one switch over the two.
        written = tf.switch_case(target, writes)
        with tf.control_dependencies([written]):
            set_version = module.slot_versions.scatter_nd_update([[target]], [version])
        with tf.control_dependencies([set_version]):
            flip = module.active_slot.assign(target)
        with tf.control_dependencies([flip]):
            return {"version": tf.identity(version)}

    return assign_dense


def export_version(model, base_path, version=None, sync_state=None, **export_options):
    """Exports ``model`` as version ``version`` (default: newest + 1, or 1)
    under the model base path ``base_path``, atomically: written to a hidden
    directory, then renamed to ``base_path/<version>``, so a server polling
    the base path never loads half an export. ``sync_state`` (a JSON-able
    dict, ``export_format.sync_state``) is stored as
    ``assets.extra/monolith_sync.json`` (``export_format.read_sync_state``).
    Returns the version.
    Raises FileExistsError if that version exists. ``export_options`` go to
    ``export_saved_model``."""
    os.makedirs(base_path, exist_ok=True)
    if version is None:
        existing = list_versions(base_path)
        version = existing[-1] + 1 if existing else 1
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be an int >= 0, got {version!r}")
    final = version_path(base_path, version)
    if os.path.exists(final):
        raise FileExistsError(f"{final} exists; versions are never overwritten")
    staging = os.path.join(base_path, f".tmp-{version}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        export_saved_model(model, staging, **export_options)
        if sync_state is not None:
            write_sync_state(staging, sync_state)
        os.rename(staging, final)
    except (OSError, tf.errors.OpError) as error:
        if isinstance(error, FileExistsError):
            raise
        code, message = write_error_parts(error)
        raise ExportError(code, f"export {final} not written ({message}); "
                                f"nothing of it was kept") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version
