"""The model every experiment trains: DeepFM (the paper's model for its
Criteo runs) on HashEmbedding rows.

logit = FM term (sum over field pairs of <e_a, e_b>) + MLP(concat of the
field rows and the dense features); output = sigmoid(logit). One
``HashEmbeddingCollection`` holds a table per categorical field, so every
step does one fused lookup and one fused sparse update.
"""

import tensorflow as tf

from monolith_tf.layers import HashEmbeddingCollection

keras = tf.keras


@keras.utils.register_keras_serializable(package="experiments")
class PairwiseInteraction(keras.layers.Layer):
    """Factorization-machine term of a list of ``[batch, dim]`` rows:
    0.5 * sum_k ((sum_f e_fk)^2 - sum_f e_fk^2), shape ``[batch, 1]``."""

    def call(self, rows):
        stacked = tf.stack(rows, axis=1)
        total = tf.reduce_sum(stacked, axis=1)
        squares = tf.reduce_sum(tf.square(stacked), axis=1)
        return 0.5 * tf.reduce_sum(tf.square(total) - squares, axis=1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], 1)


def table_options(dim, learning_rate=0.05, **memory_control):
    """HashEmbedding arguments shared by the experiments' fields."""
    return {"dim": dim, "initializer": "truncated_normal(stddev=0.01)",
            "optimizer": "adagrad(initial_accumulator=0.1)", "learning_rate": learning_rate,
            **memory_control}


def deepfm(categorical, dense=(), dim=8, hidden=(64, 32), learning_rate=0.05,
           dense_learning_rate=0.002, seed=0, table=None, timestamp=True):
    """A compiled DeepFM over int64 id fields ``categorical`` and float
    features ``dense``, with a ``timestamp`` input (data time for the
    tables) unless ``timestamp`` is False. ``table``: per-field
    HashEmbedding arguments (default ``table_options(dim, learning_rate)``);
    ``seed`` seeds the tables' initializers and the dense layers."""
    keras.utils.set_random_seed(seed)
    options = table or table_options(dim, learning_rate)
    inputs = {name: keras.Input(shape=(), dtype="int64", name=name) for name in categorical}
    if timestamp:
        inputs["timestamp"] = keras.Input(shape=(), dtype="int64", name="timestamp")
    for name in dense:
        inputs[name] = keras.Input(shape=(), dtype="float32", name=name)
    rows = HashEmbeddingCollection({name: dict(options, seed=seed + i)
                                    for i, name in enumerate(categorical)},
                                   name="embeddings")(inputs)
    field_rows = [rows[name] for name in categorical]
    deep_inputs = list(field_rows)
    if dense:
        deep_inputs.append(keras.layers.Concatenate(name="dense_features")(
            [keras.layers.Reshape((1,))(inputs[name]) for name in dense]))
    hidden_out = keras.layers.Concatenate(name="deep_inputs")(deep_inputs)
    for i, width in enumerate(hidden):
        hidden_out = keras.layers.Dense(width, activation="relu", name=f"deep_{i}")(hidden_out)
    deep = keras.layers.Dense(1, name="deep_logit")(hidden_out)
    logit = deep
    if len(field_rows) > 1:
        logit = keras.layers.Add(name="logit")([deep, PairwiseInteraction(name="fm")(field_rows)])
    output = keras.layers.Activation("sigmoid", name="probability")(logit)
    model = keras.Model(inputs, output)
    model.compile(optimizer=keras.optimizers.Adam(dense_learning_rate),
                  loss="binary_crossentropy")
    return model
