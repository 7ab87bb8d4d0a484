"""HashEmbedding and HashEmbeddingCollection under whichever Keras tf.keras is.

`make test` runs this file twice: under Keras 3 (TensorFlow's default) and
with TF_USE_LEGACY_KERAS=1 (tf_keras, which TFRS needs).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf.ops  # noqa: F401  (loads the ops)
from monolith_tf.layers import HashEmbedding, HashEmbeddingCollection, ids_to_int64

# Layer code differs between Keras 3 and tf_keras: `make test` runs these under both.
pytestmark = pytest.mark.keras_flavours

keras = tf.keras
LEGACY = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
DIM, VOCAB, BATCH, STEPS = 4, 64, 16, 50


def test_the_intended_keras_is_running():
    # tf.keras is tf_keras's v2 API module under TF_USE_LEGACY_KERAS=1, Keras 3 otherwise.
    assert keras.__name__.startswith("tf_keras") == LEGACY, keras.__name__


def keras_optimizer(kind, lr):
    if kind == "sgd":
        return keras.optimizers.SGD(lr)
    return keras.optimizers.Adagrad(lr, initial_accumulator_value=0.1, epsilon=1e-7)


def table_optimizer(kind):
    return "sgd" if kind == "sgd" else "adagrad(initial_accumulator=0.1, epsilon=1e-7)"


def click_data(seed=0, duplicates=True):
    """Raw 64-bit ids, their 0..VOCAB-1 positions and labels. Without
    duplicates no id repeats inside a batch: Keras 3's Adagrad squares each
    occurrence's gradient separately (sum of squares), while tf_keras and the
    table square the summed gradient, so only duplicate-free batches can
    match across all three."""
    rng = np.random.default_rng(seed)
    raw_vocab = rng.integers(1, 2**62, size=VOCAB, dtype=np.int64)
    if duplicates:
        index = rng.integers(0, VOCAB, size=(BATCH * STEPS, 3))
    else:
        index = np.concatenate([rng.permutation(VOCAB)[:BATCH * 3].reshape(BATCH, 3)
                                for _ in range(STEPS)])
    labels = rng.random((BATCH * STEPS, 1)).astype(np.float32)
    return raw_vocab, index, labels


def head(seed):
    return keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed),
                              name="head")


@pytest.mark.parametrize("kind", ["sgd", "adagrad"])
def test_fit_matches_a_dense_embedding_over_a_remapped_vocabulary(kind):
    raw_vocab, index, labels = click_data(duplicates=kind == "sgd")
    lr = 0.05
    initial = np.random.default_rng(1).normal(0, 0.1, (VOCAB, DIM)).astype(np.float32)

    dense_in = keras.Input(shape=(3,), dtype="int64")
    dense_emb = keras.layers.Embedding(VOCAB, DIM, name="emb")
    dense_out = head(3)(keras.layers.Flatten()(dense_emb(dense_in)))
    dense = keras.Model(dense_in, dense_out)
    dense_emb.set_weights([initial])

    hash_in = keras.Input(shape=(3,), dtype="int64")
    hash_emb = HashEmbedding(DIM, initializer="zeros", optimizer=table_optimizer(kind),
                             learning_rate=lr)
    hash_out = head(3)(keras.layers.Flatten()(hash_emb(hash_in)))
    hashed = keras.Model(hash_in, hash_out)
    hash_emb.table.assign(raw_vocab, initial)
    hashed.get_layer("head").set_weights(dense.get_layer("head").get_weights())

    dense.compile(optimizer=keras_optimizer(kind, lr), loss="mse")
    hashed.compile(optimizer=keras_optimizer(kind, lr), loss="mse")
    dense.fit(index, labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
    hashed.fit(raw_vocab[index], labels, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)

    np.testing.assert_allclose(hash_emb.table.lookup(raw_vocab).numpy(),
                               dense_emb.get_weights()[0], atol=1e-5)
    head_got, head_want = (hashed.get_layer("head").get_weights(),
                           dense.get_layer("head").get_weights())
    assert len(head_got) == len(head_want) == 2
    for got, want in zip(head_got, head_want):
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert float(hash_emb.update_trigger.numpy()) == 0.0
    assert int(hash_emb.update_steps.numpy()) == STEPS


@pytest.mark.parametrize("run_eagerly", [True, False])
def test_fit_updates_rows_eagerly_and_compiled(run_eagerly):
    emb = HashEmbedding(DIM, initializer="ones", optimizer="sgd", learning_rate=0.1)
    inputs = keras.Input(shape=(2,), dtype="int64")
    model = keras.Model(inputs, head(0)(keras.layers.Flatten()(emb(inputs))))
    model.compile(optimizer="sgd", loss="mse", run_eagerly=run_eagerly)
    model.fit(np.array([[1, 2], [3, 1]]), np.array([[1.0], [0.0]]), batch_size=2, epochs=2,
              verbose=0)
    exported = emb.table.export()
    counts = dict(zip(exported["keys"].numpy(), exported["counts"].numpy()))
    assert counts == {1: 4, 2: 2, 3: 2}
    assert not np.allclose(emb.table.lookup([1]).numpy(), 1.0)


def test_predict_and_evaluate_do_not_insert_or_update():
    emb = HashEmbedding(DIM, initializer="ones", optimizer="sgd", learning_rate=1.0)
    inputs = keras.Input(shape=(2,), dtype="int64")
    model = keras.Model(inputs, head(0)(keras.layers.Flatten()(emb(inputs))))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.array([[1, 2]]), np.array([[1.0]]), verbose=0)
    before = emb.table.export()
    unseen = np.array([[777, 888]])
    rows = keras.Model(inputs, emb(inputs)).predict(unseen, verbose=0)
    np.testing.assert_array_equal(rows, 0.0)
    model.evaluate(np.array([[1, 999]]), np.array([[0.0]]), verbose=0)
    after = emb.table.export()
    assert int(emb.table.size()) == 2
    np.testing.assert_array_equal(before["values"].numpy(), after["values"].numpy())


def test_string_ids_train():
    emb = HashEmbedding(DIM, initializer="zeros", optimizer="sgd", learning_rate=0.5)
    inputs = keras.Input(shape=(1,), dtype="string")
    model = keras.Model(inputs, head(0)(keras.layers.Flatten()(emb(inputs))))
    model.compile(optimizer="sgd", loss="mse")
    words = tf.data.Dataset.from_tensor_slices(
        (tf.constant([["apple"], ["pear"], ["apple"]]), tf.constant([[1.0], [0.0], [1.0]])))
    model.fit(words.batch(3), epochs=3, verbose=0)
    assert int(emb.table.size()) == 2
    apple = ids_to_int64(tf.constant(["apple"]))
    assert np.abs(emb.table.lookup(apple).numpy()).sum() > 0


def dense_reference(table_rows, sparse_ids, combiner):
    """tf.nn.safe_embedding_lookup_sparse over a dense copy of the rows."""
    keys, position = np.unique(sparse_ids.values.numpy(), return_inverse=True)
    remapped = tf.SparseTensor(sparse_ids.indices, position.astype(np.int64),
                               sparse_ids.dense_shape)
    dense_table = tf.constant(table_rows(keys))
    return tf.nn.safe_embedding_lookup_sparse(dense_table, remapped, combiner=combiner).numpy()


@pytest.mark.parametrize("combiner", ["sum", "mean", "sqrtn"])
def test_multi_hot_combiners_match_safe_embedding_lookup_sparse(combiner):
    emb = HashEmbedding(DIM, initializer="normal(stddev=1)", combiner=combiner, seed=4)
    sparse = tf.SparseTensor(indices=[[0, 0], [0, 1], [0, 2], [2, 0], [3, 1]],
                             values=tf.constant([5, 9, 5, 11, 12], tf.int64),
                             dense_shape=[4, 3])
    emb(sparse, training=True)  # insert the ids

    def rows(keys):
        return emb.table.lookup(keys).numpy()

    want = dense_reference(rows, sparse, combiner)
    np.testing.assert_allclose(emb(sparse).numpy(), want, rtol=1e-6, atol=1e-6)
    # The same examples as ragged rows (the sparse one has a gap in row 3).
    ragged = tf.ragged.constant([[5, 9, 5], [], [11], [12]], dtype=tf.int64)
    np.testing.assert_allclose(emb(ragged).numpy(), want, rtol=1e-6, atol=1e-6)
    dense = tf.constant([[5, 9, 5], [11, 11, 11]], tf.int64)
    np.testing.assert_allclose(
        emb(dense).numpy(),
        dense_reference(rows, tf.sparse.from_dense(dense), combiner), rtol=1e-6, atol=1e-6)


def test_combiner_none_keeps_the_sequence():
    emb = HashEmbedding(DIM, initializer="ones")
    ragged = tf.ragged.constant([[1, 2], [3]], dtype=tf.int64)
    out = emb(ragged, training=True)
    assert isinstance(out, tf.RaggedTensor)
    assert out.shape.as_list() == [2, None, DIM]
    assert emb(tf.constant([[1, 2, 3]], tf.int64)).shape == (1, 3, DIM)


def test_bad_input_is_a_clear_error():
    emb = HashEmbedding(DIM)
    with pytest.raises(tf.errors.InvalidArgumentError, match="int64, int32 or string ids"):
        emb(tf.constant([1.5, 2.5]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"\[batch\] or \[batch, n\]"):
        emb(tf.zeros([2, 2, 2], tf.int64))
    bad = tf.SparseTensor(indices=[[0, 5]], values=tf.constant([1], tf.int64),
                          dense_shape=[1, 2])
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)):
        emb(bad)
    with pytest.raises(ValueError, match="combiner"):
        HashEmbedding(DIM, combiner="max")


def test_get_config_round_trip_with_a_schedule():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    emb = HashEmbedding(8, optimizer="adam(beta1=0.8)", learning_rate=schedule, combiner="mean",
                        capacity_hint=100, seed=3, name="user_emb")
    config = emb.get_config()
    clone = HashEmbedding.from_config(config)
    assert clone.get_config() == config
    assert isinstance(clone.learning_rate,
                      keras.optimizers.schedules.ExponentialDecay)


def test_learning_rate_schedule_uses_the_update_count():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([2], [1.0, 0.0])
    emb = HashEmbedding(1, initializer="zeros", optimizer="sgd", learning_rate=schedule)
    ids = tf.constant([7], tf.int64)
    for _ in range(4):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(emb(ids, training=True))
        tape.gradient(loss, emb.trainable_weights)
    # Updates 1 and 2 use rate 1.0 (step <= 2), then 0.0.
    np.testing.assert_allclose(emb.table.lookup(ids).numpy(), [[-2.0]])


def collection_model():
    collection = HashEmbeddingCollection({
        "user": {"dim": DIM, "initializer": "ones", "optimizer": "sgd", "learning_rate": 0.1},
        "item": {"dim": 2 * DIM, "initializer": "zeros", "optimizer": "adagrad"},
        "tags": {"dim": DIM, "combiner": "mean"},
    })
    inputs = {"user": keras.Input(shape=(), dtype="int64", name="user"),
              "item": keras.Input(shape=(), dtype="int64", name="item"),
              "tags": keras.Input(shape=(3,), dtype="int64", name="tags")}
    rows = collection(inputs)
    joined = keras.layers.Concatenate()([rows["user"], rows["item"], rows["tags"]])
    return collection, keras.Model(inputs, head(0)(joined))


def collection_data(n=64):
    rng = np.random.default_rng(0)
    return ({"user": rng.integers(0, 20, n), "item": rng.integers(0, 30, n),
             "tags": rng.integers(0, 50, (n, 3))}, rng.random((n, 1)).astype(np.float32))


def test_collection_trains_every_table_with_one_fused_op_each_way():
    collection, model = collection_model()
    model.compile(optimizer="adam", loss="mse")
    x, y = collection_data()
    model.fit(x, y, batch_size=16, verbose=0)
    assert int(collection.tables["user"].size()) == len(set(x["user"]))
    assert int(collection.tables["tags"].size()) == len(set(x["tags"].ravel()))
    assert int(collection.update_steps.numpy()) == 4
    assert not np.allclose(collection.tables["user"].lookup(x["user"][:1]).numpy(), 1.0)

    @tf.function
    def step(features):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(features, training=True))
        return tape.gradient(loss, model.trainable_weights)

    batch = {k: tf.constant(v[:4]) for k, v in x.items()}
    graph = step.get_concrete_function(batch).graph
    kinds = [op.type for op in graph.get_operations()]
    assert kinds.count("MonolithHashTableLookupMulti") == 1
    assert kinds.count("MonolithHashTableApplyGradientsMulti") == 1
    assert "MonolithHashTableLookup" not in kinds


def test_collection_config_round_trip():
    collection, _ = collection_model()
    clone = HashEmbeddingCollection.from_config(collection.get_config())
    assert clone.get_config()["features"] == collection.get_config()["features"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="lack features"):
        clone({"user": tf.constant([1], tf.int64)})


def test_model_save_and_load_predicts_identically(tmp_path):
    collection, model = collection_model()
    model.compile(optimizer="adam", loss="mse")
    x, y = collection_data()
    model.fit(x, y, batch_size=16, verbose=0)
    probe = {k: v[:8] for k, v in x.items()}
    probe["user"] = np.concatenate([probe["user"][:4], [10**9] * 4])  # some unseen
    expected = model.predict(probe, verbose=0)

    path = str(tmp_path / ("model" if LEGACY else "model.keras"))
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(probe, verbose=0), expected, rtol=1e-6)

    class Serving(tf.Module):
        def __init__(self, keras_model):
            super().__init__()
            self.model = keras_model

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64),
                                      tf.TensorSpec([None], tf.int64),
                                      tf.TensorSpec([None, 3], tf.int64)])
        def serve(self, user, item, tags):
            return self.model({"user": user, "item": item, "tags": tags}, training=False)

    export_dir = str(tmp_path / "saved_model")
    tf.saved_model.save(Serving(model), export_dir)
    reloaded = tf.saved_model.load(export_dir)
    served = reloaded.serve(*(tf.constant(probe[k]) for k in ("user", "item", "tags")))
    # atol: outputs near zero differ by float32 roundoff between the graphs.
    np.testing.assert_allclose(served.numpy(), expected, rtol=1e-6, atol=1e-7)
