"""Memory control through HashTable and the Keras layers."""

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.layers import HashEmbedding

# Admission and expiry through the layers: `make test` runs these under both Kerases.
pytestmark = pytest.mark.keras_flavours

Invalid = tf.errors.InvalidArgumentError


def stats(table):
    return {k: int(v) for k, v in table.stats().items()}


def test_threshold_admission_and_counters():
    table = mt.HashTable(2, initializer="ones", optimizer="sgd", occurrence_threshold=2)
    np.testing.assert_array_equal(table.lookup([1, 2], training=True), 0.0)
    np.testing.assert_array_equal(table.lookup([1], training=True), 1.0)
    s = stats(table)
    assert (s["size"], s["admitted"], s["rejected"]) == (1, 1, 2)
    assert s["memory_bytes"] > 0


def test_expiry_and_stats_in_tf_function():
    table = mt.HashTable(1, initializer="zeros", optimizer="sgd", expire_after=10)

    @tf.function
    def step(ids, now):
        table.lookup(ids, training=True)
        table.apply_gradients(ids, tf.ones([tf.size(ids), 1]), 0.1, timestamps=now)

    step(tf.constant([1, 2], tf.int64), tf.constant(100, tf.int64))
    step(tf.constant([2], tf.int64), tf.constant(120, tf.int64))
    assert int(table.evict_expired()) == 1
    assert stats(table)["now"] == 120 and stats(table)["evicted"] == 1
    np.testing.assert_array_equal(table.export()["keys"].numpy(), [2])


def test_checkpoint_keeps_filter_state_and_data_time(tmp_path):
    spec = "counting(width=1024, depth=2)"
    table = mt.HashTable(2, initializer="ones", occurrence_threshold=2, admission_filter=spec,
                         expire_after=50)
    table.lookup([7, 8], training=True)          # first sighting of both
    table.apply_gradients([9], tf.ones([1, 2]), 0.1, timestamps=1234)  # dropped: 9 not admitted
    path = tf.train.Checkpoint(table=table).save(str(tmp_path / "ckpt"))
    restored = mt.HashTable(2, initializer="ones", occurrence_threshold=2,
                            admission_filter=spec, expire_after=50)
    tf.train.Checkpoint(table=restored).restore(path)
    assert stats(restored)["now"] == 1234
    np.testing.assert_array_equal(restored.lookup([7], training=True), 1.0)  # second sighting
    assert int(restored.size()) == 1


def test_evict_on_save(tmp_path):
    table = mt.HashTable(1, expire_after=5, evict_on_save=True)
    table.apply_gradients([1], tf.ones([1, 1]), 0.1, timestamps=1)
    table.apply_gradients([2], tf.ones([1, 1]), 0.1, timestamps=100)
    tf.train.Checkpoint(table=table).save(str(tmp_path / "ckpt"))
    assert int(table.size()) == 1


def test_layer_option_filters_ids_in_fit():
    emb = HashEmbedding(2, initializer="ones", optimizer="sgd", learning_rate=0.1,
                        occurrence_threshold=3)
    inputs = tf.keras.Input(shape=(1,), dtype="int64")
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(1)(tf.keras.layers.Flatten()(
        emb(inputs))))
    model.compile(optimizer="sgd", loss="mse")
    ids = np.array([[1], [1], [1], [1], [2], [2]])
    model.fit(ids, np.ones((6, 1)), batch_size=6, epochs=1, verbose=0)
    assert sorted(emb.table.export()["keys"].numpy()) == [1]
    assert emb.get_config()["occurrence_threshold"] == 3
    clone = HashEmbedding.from_config(emb.get_config())
    assert clone.table.get_config()["occurrence_threshold"] == 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(occurrence_threshold=-1), "occurrence_threshold"),
    (dict(expire_after=0), "expire_after"),
    (dict(expire_after=-3), "expire_after"),
    (dict(evict_every=0), "evict_every"),
    (dict(occurrence_threshold=2, admission_filter="bloom"), "unknown admission filter"),
])
def test_bad_memory_control_options(kwargs, message):
    with pytest.raises(Invalid, match=message):
        mt.HashTable(2, **kwargs)


def test_timestamps_of_the_wrong_shape():
    table = mt.HashTable(2, expire_after=10)
    with pytest.raises((Invalid, ValueError)):
        table.apply_gradients([1, 2], tf.ones([2, 2]), 0.1, timestamps=[1, 2, 3])
    with pytest.raises(Invalid, match="timestamps must be int64"):
        table.apply_gradients([1, 2], tf.ones([2, 2]), 0.1, timestamps=[1.5, 2.5])


def test_collection_timestamps_stamp_rows_and_drive_expiry():
    from monolith_tf.layers import HashEmbeddingCollection

    collection = HashEmbeddingCollection(
        {"user": {"dim": 2, "optimizer": "sgd", "expire_after": 10}})
    for ids, now in (([1, 2], 100), ([2], 150)):
        with tf.GradientTape() as tape:
            rows = collection({"user": tf.constant(ids, tf.int64),
                               "timestamp": tf.constant([now] * len(ids), tf.int64)},
                              training=True)
            loss = tf.reduce_sum(rows["user"])
        tape.gradient(loss, collection.trainable_weights)
    table = collection.tables["user"]
    exported = table.export()
    stamps = dict(zip(exported["keys"].numpy(), exported["timestamps"].numpy()))
    assert stamps == {1: 100, 2: 150}
    assert int(table.evict_expired()) == 1 and int(table.size()) == 1
