"""Serving export with stock TensorFlow ops only.

``export_saved_model(model, path)`` writes a SavedModel in which every hash
table of the model's HashEmbedding layers is a stock
``tf.lookup.experimental.MutableHashTable`` (int64 id -> float32 row) holding
the table's rows, so unmodified TF Serving and ``saved_model_cli`` load it
without this package's op library. Signatures:

- ``serving_default``: the model's prediction from raw ids; unseen ids read
  the default row (zeros), as in the training process's serving mode.
- ``upsert``: ``(table: string, ids: int64 [n], values: float32 [n, dim])``
  inserts or overwrites rows of one table in the loaded model, so a serving
  process applies fresh sparse rows without a reload. Returns the row count.
- ``remove``: ``(table: string, ids: int64 [n])`` removes rows of one table
  (rows that training evicted by expiry leave the server too); removed ids
  read the default row (zeros) again, absent ids are ignored. Returns the
  number of ids given.
Table names are ``<layer name>/<feature>`` (see ``table_names``); an
unknown table name is an InvalidArgumentError and changes nothing.

``row_dtype="float16"`` stores rows at half size. Stock hash tables have no
float16 values, so each pair of float16 halves is packed into one int32
(``tf.bitcast``, a stock op) and unpacked at lookup. Rounding error per
element: at most 2^-11 (about 4.9e-4) relative for |x| >= 6.1e-5, at most
2^-25 (about 3e-8) absolute below; rows beyond float16's range (65504) are
refused at export and at upsert.
"""

import contextlib

import tensorflow as tf

from monolith_tf.dense_checkpoint import as_tf_variable
from monolith_tf.layers import hash_embedding_layers, model_tables
from monolith_tf.schema import table_name


def table_names(model):
    """Names of the model's tables in the exported ``upsert`` signature."""
    return list(model_tables(model))


def _input_specs(model):
    inputs = getattr(model, "input", None)
    if inputs is None:
        raise ValueError("export_saved_model needs a model with defined inputs "
                         "(a functional or built Sequential model)")
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype, name=getattr(t, "name", None)), inputs)


_FLOAT16_MAX = 65504.0


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
            tf.reduce_max(tf.abs(values)), _FLOAT16_MAX,
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


def export_saved_model(model, path, row_dtype="float32"):
    """Writes ``model`` as a stock-ops SavedModel at ``path`` (see module doc).

    ``row_dtype``: ``"float32"`` (exact rows) or ``"float16"`` (half the
    bytes; error bounds in the module doc). Raises ValueError for a model
    without HashEmbedding layers or rows out of float16 range. The rows are
    copied once into the stock tables (one export of each table in memory).
    """
    if row_dtype not in _ROW_TABLES:
        raise ValueError(f"row_dtype must be one of {sorted(_ROW_TABLES)}, got {row_dtype!r}")
    layers = hash_embedding_layers(model)
    if not layers:
        raise ValueError("export_saved_model: the model has no HashEmbedding or "
                         "HashEmbeddingCollection layer; save it with tf.saved_model.save")
    module = tf.Module()
    names, stock, lookups = [], [], []  # lookups: one {feature: fn} per layer
    for layer in layers:
        lookups.append({})
        for feature, table in layer.feature_tables().items():
            name = table_name(layer.name, feature)
            rows = table.export()
            if row_dtype == "float16" and len(rows["values"]) and float(
                    tf.reduce_max(tf.abs(rows["values"]))) > _FLOAT16_MAX:
                raise ValueError(f"{name}: rows exceed the float16 range "
                                 f"({_FLOAT16_MAX}); export with row_dtype='float32'")
            stock_table = _ROW_TABLES[row_dtype](table.dim)
            stock_table.insert(rows["keys"], rows["values"])
            names.append(name)
            stock.append(stock_table)
            lookups[-1][feature] = stock_table.lookup
    module.tables = stock
    module.dense_variables = [as_tf_variable(v) for v in model.variables]
    input_spec = _input_specs(model)

    # The model's layers read the stock tables while the serving graph is traced.
    with contextlib.ExitStack() as serving:
        for layer, layer_lookups in zip(layers, lookups):
            serving.enter_context(layer.serving_lookups(layer_lookups))
        if isinstance(input_spec, dict):
            def serve(**features):
                return {"output": model(features, training=False)}

            serving_fn = tf.function(serve).get_concrete_function(**input_spec)
        else:
            specs = input_spec if isinstance(input_spec, (list, tuple)) else [input_spec]

            def serve(*features):
                inputs = features if isinstance(input_spec, (list, tuple)) else features[0]
                return {"output": model(inputs, training=False)}

            serving_fn = tf.function(serve).get_concrete_function(*specs)

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
        return {"rows": apply_to_table(table, ids, lambda t: t.insert(ids, values))}

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="table"),
                                  tf.TensorSpec([None], tf.int64, name="ids")])
    def remove(table, ids):
        return {"rows": apply_to_table(table, ids, lambda t: t.remove(ids))}

    module.upsert, module.remove = upsert, remove
    tf.saved_model.save(module, path, signatures={"serving_default": serving_fn,
                                                  "upsert": upsert.get_concrete_function(),
                                                  "remove": remove.get_concrete_function()})
    return names
