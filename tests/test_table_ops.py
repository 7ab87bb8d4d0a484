"""HashTable and its ops: modes, optimizers, errors, shapes, concurrency."""

import threading

import numpy as np
import pytest
import tensorflow as tf

import monolith_tf as mt
from monolith_tf.ops import table_ops
from numpy_reference import Reference


def test_training_lookup_inserts_and_is_stable():
    table = mt.HashTable(4, initializer="normal(stddev=1)", seed=3)
    first = table.lookup([10, 20, 10], training=True)
    assert int(table.size()) == 2
    np.testing.assert_array_equal(first[0], first[2])
    again = table.lookup([20, 10], training=True)
    np.testing.assert_array_equal(again.numpy(), first.numpy()[[1, 0]])
    assert int(table.size()) == 2


def test_serving_lookup_inserts_nothing():
    table = mt.HashTable(3, initializer="ones")
    table.lookup([1], training=True)
    out = table.lookup([1, 2], training=False)
    np.testing.assert_array_equal(out, [[1, 1, 1], [0, 0, 0]])
    assert int(table.size()) == 1


def test_initial_rows_depend_on_seed_and_key_only():
    a = mt.HashTable(8, initializer="truncated_normal(stddev=0.1)", seed=5)
    b = mt.HashTable(8, initializer="truncated_normal(stddev=0.1)", seed=5)
    a.lookup(tf.range(100, dtype=tf.int64), training=True)
    rows_a = a.lookup([7, 99, 3], training=True)
    rows_b = b.lookup([7, 99, 3], training=True)
    np.testing.assert_array_equal(rows_a, rows_b)


def test_lookup_keeps_the_ids_shape():
    table = mt.HashTable(5, initializer="zeros")
    assert table.lookup(tf.zeros([2, 3, 4], tf.int64), training=True).shape == (2, 3, 4, 5)
    assert table.lookup(tf.constant(7, tf.int64)).shape == (5,)
    assert table.lookup(tf.zeros([0], tf.int64)).shape == (0, 5)


def test_int32_ids_are_widened():
    table = mt.HashTable(2, initializer="ones")
    out = table.lookup(tf.constant([1, 2], tf.int32), training=True)
    assert out.shape == (2, 2) and int(table.size()) == 2


def test_static_shapes_inside_tf_function():
    table = mt.HashTable(6)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.int64)])
    def f(ids):
        values = table.lookup(ids, training=True)
        assert values.shape.as_list() == [None, 3, 6]
        exported = table.export()
        assert exported["values"].shape.as_list() == [None, 6]
        assert table.size().shape.rank == 0
        return values

    assert f(tf.ones([4, 3], tf.int64)).shape == (4, 3, 6)


@pytest.mark.parametrize("optimizer, params", [
    ("sgd", {}), ("adagrad", {"initial_accumulator": 0.2}), ("adam", {"beta1": 0.5}),
    ("ftrl", {"l1": 0.001, "l2": 0.01})])
def test_apply_gradients_in_tf_function_matches_numpy(optimizer, params):
    dim = 4
    table = mt.HashTable(dim, initializer="uniform(minval=-0.1, maxval=0.1)",
                         optimizer=mt.make_spec(optimizer, **params), seed=1)
    reference = Reference(optimizer, dim, **params)

    @tf.function
    def step(ids, grads, lr):
        table.lookup(ids, training=True)
        table.apply_gradients(ids, grads, lr, timestamps=tf.constant(100, tf.int64))

    rng = np.random.default_rng(0)
    vocab = np.array([1, 2, 3, 2**50], np.int64)
    for _ in range(40):
        ids = rng.choice(vocab, size=6)
        new = [k for k in ids if k not in reference.weights]
        if new:
            for key, row in zip(new, table.lookup(np.array(new), training=True).numpy()):
                reference.init_row(key, row)
        grads = rng.normal(size=(6, dim)).astype(np.float32)
        step(tf.constant(ids), tf.constant(grads), tf.constant(0.05))
        reference.apply(ids, grads, 0.05)
    got = table.lookup(vocab).numpy()
    for key, row in zip(vocab, got):
        np.testing.assert_allclose(row, reference.weights[key], rtol=1e-6, atol=1e-6)


def test_apply_gradients_accepts_ids_of_any_rank():
    table = mt.HashTable(2, initializer="zeros", optimizer="sgd")
    ids = tf.constant([[1, 2], [2, 3]], tf.int64)
    table.apply_gradients(ids, tf.ones([2, 2, 2]), 1.0, timestamps=tf.constant([[5, 6], [7, 8]],
                                                                                tf.int64))
    np.testing.assert_array_equal(table.lookup([1, 2, 3]), [[-1, -1], [-2, -2], [-1, -1]])
    exported = table.export()
    order = np.argsort(exported["keys"].numpy())
    np.testing.assert_array_equal(exported["timestamps"].numpy()[order], [5, 7, 8])
    np.testing.assert_array_equal(exported["counts"].numpy()[order], [1, 2, 1])


def test_assign_remove_size():
    table = mt.HashTable(2, initializer="ones", optimizer="adagrad")
    table.assign([5, 6], [[1, 2], [3, 4]])
    np.testing.assert_array_equal(table.lookup([6, 5]), [[3, 4], [1, 2]])
    assert int(table.remove([5, 7])) == 1
    assert int(table.size()) == 1
    np.testing.assert_array_equal(table.lookup([5]), [[0, 0]])


def test_export_in_chunks_covers_the_table_once():
    table = mt.HashTable(3, initializer="zeros")
    table.lookup(tf.range(5000, dtype=tf.int64), training=True)
    keys = np.concatenate([table.export(c, 4)["keys"].numpy() for c in range(4)])
    np.testing.assert_array_equal(np.sort(keys), np.arange(5000))


def test_shared_name_shares_one_table():
    a = mt.HashTable(2, initializer="ones", shared_name="shared_test_table")
    b = mt.HashTable(2, initializer="ones", shared_name="shared_test_table")
    a.lookup([1, 2, 3], training=True)
    assert int(b.size()) == 3
    with pytest.raises(tf.errors.InvalidArgumentError, match="already exists"):
        mt.HashTable(4, initializer="ones", shared_name="shared_test_table")


def test_anonymous_tables_are_separate():
    a, b = mt.HashTable(2), mt.HashTable(2)
    a.lookup([1], training=True)
    assert int(b.size()) == 0


def test_concurrent_lookups_and_updates_through_ops():
    table = mt.HashTable(8, initializer="zeros", optimizer="sgd")
    keys = tf.range(1000, dtype=tf.int64)
    table.lookup(keys, training=True)
    errors = []

    def writer():
        for _ in range(50):
            table.apply_gradients(keys, -tf.ones([1000, 8]), 1.0)

    def reader():
        for _ in range(50):
            rows = table.lookup(keys).numpy()
            if not (rows == rows[:, :1]).all():
                errors.append("torn row")

    def inserter():
        for start in range(10_000, 60_000, 5000):
            table.lookup(tf.range(start, start + 5000, dtype=tf.int64), training=True)

    threads = [threading.Thread(target=f) for f in (writer, writer, reader, reader, inserter)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    np.testing.assert_array_equal(table.lookup(keys).numpy(), 100.0)
    assert int(table.size()) == 1000 + 50_000


def test_keras3_infers_output_specs_from_the_shape_functions():
    import keras

    table = mt.HashTable(4)

    class Lookup(keras.layers.Layer):
        def __init__(self, hash_table, **kwargs):
            super().__init__(**kwargs)
            self._hash_table = hash_table

        def call(self, ids):
            return self._hash_table.lookup(ids)

    inputs = keras.Input(shape=(3,), dtype="int64")
    outputs = Lookup(table)(inputs)
    assert tuple(outputs.shape) == (None, 3, 4)
    model = keras.Model(inputs, outputs)
    assert model.predict(tf.constant([[1, 2, 3]], tf.int64), verbose=0).shape == (1, 3, 4)
