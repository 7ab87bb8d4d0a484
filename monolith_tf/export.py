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
  Table names are ``<layer name>/<feature>`` (see ``table_names``).
"""

import contextlib

import tensorflow as tf

from monolith_tf.dense_checkpoint import as_tf_variable
from monolith_tf.layers import hash_embedding_layers, model_tables


def table_names(model):
    """Names of the model's tables in the exported ``upsert`` signature."""
    return list(model_tables(model))


@contextlib.contextmanager
def _serving_tables(specs_and_tables):
    for spec, table in specs_and_tables:
        spec.serving_table = table
    try:
        yield
    finally:
        for spec, _ in specs_and_tables:
            spec.serving_table = None


def _input_specs(model):
    inputs = getattr(model, "input", None)
    if inputs is None:
        raise ValueError("export_saved_model needs a model with defined inputs "
                         "(a functional or built Sequential model)")
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec(t.shape, t.dtype, name=getattr(t, "name", None)), inputs)


def export_saved_model(model, path):
    """Writes ``model`` as a stock-ops SavedModel at ``path`` (see module doc).

    Raises ValueError for a model without HashEmbedding layers. The rows are
    copied once into the stock tables (one export of each table in memory).
    """
    layers = hash_embedding_layers(model)
    if not layers:
        raise ValueError("export_saved_model: the model has no HashEmbedding or "
                         "HashEmbeddingCollection layer; save it with tf.saved_model.save")
    module = tf.Module()
    names, stock, specs_and_tables = [], [], []
    for layer in layers:
        for feature, (table, spec) in layer.feature_tables().items():
            rows = table.export()
            stock_table = tf.lookup.experimental.MutableHashTable(
                tf.int64, tf.float32, default_value=tf.zeros([table.dim]))
            stock_table.insert(rows["keys"], rows["values"])
            names.append(f"{layer.name}/{feature}")
            stock.append(stock_table)
            specs_and_tables.append((spec, stock_table))
    module.tables = stock
    module.dense_variables = [as_tf_variable(v) for v in model.variables]
    input_spec = _input_specs(model)

    with _serving_tables(specs_and_tables):
        if isinstance(input_spec, dict):
            def serve(**features):
                return {"output": model(features, training=False)}

            serving = tf.function(serve).get_concrete_function(**input_spec)
        else:
            specs = input_spec if isinstance(input_spec, (list, tuple)) else [input_spec]

            def serve(*features):
                inputs = features if isinstance(input_spec, (list, tuple)) else features[0]
                return {"output": model(inputs, training=False)}

            serving = tf.function(serve).get_concrete_function(*specs)

    table_names_const = tf.constant(names)

    @tf.function(input_signature=[tf.TensorSpec([], tf.string, name="table"),
                                  tf.TensorSpec([None], tf.int64, name="ids"),
                                  tf.TensorSpec([None, None], tf.float32, name="values")])
    def upsert(table, ids, values):
        matches = tf.where(tf.equal(table_names_const, table))
        tf.debugging.assert_equal(tf.size(matches), 1,
                                  message="upsert: unknown table name")
        index = tf.cast(tf.reshape(matches, [-1])[0], tf.int32)

        def insert_into(i):
            def branch():
                with tf.control_dependencies([stock[i].insert(ids, values)]):
                    return tf.size(ids, out_type=tf.int64)
            return branch

        return {"rows": tf.switch_case(index, [insert_into(i) for i in range(len(stock))])}

    module.upsert = upsert
    tf.saved_model.save(module, path, signatures={"serving_default": serving,
                                                  "upsert": upsert.get_concrete_function()})
    return names
