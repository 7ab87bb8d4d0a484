"""Bad input gets InvalidArgument naming the problem, and changes nothing."""

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, HealthCheck
from hypothesis import strategies as st

import monolith_tf as mt
from monolith_tf.ops import table_ops

Invalid = tf.errors.InvalidArgumentError


@pytest.fixture
def table():
    t = mt.HashTable(4, initializer="ones", optimizer="adagrad")
    t.lookup([1, 2, 3], training=True)
    return t


def snapshot(t):
    exported = t.export()
    order = np.argsort(exported["keys"].numpy())
    return {k: v.numpy()[order] for k, v in exported.items()}


def assert_unchanged(t, before):
    after = snapshot(t)
    for field in before:
        np.testing.assert_array_equal(before[field], after[field])


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=0), "dim must be"),
    (dict(dim=-1), "dim must be"),
    (dict(dim=4, capacity_hint=-5), "capacity_hint must be"),
    (dict(dim=4, optimizer="rmsprop"), "unknown optimizer 'rmsprop'"),
    (dict(dim=4, initializer="xavier"), "unknown initializer 'xavier'"),
    (dict(dim=4, optimizer="adam(beta2=1.5)"), "beta1, beta2 in"),
    (dict(dim=4, optimizer="sgd(momentum=0.9)"), "no parameter 'momentum'"),
])
def test_bad_table_config(kwargs, message):
    with pytest.raises(Invalid, match=message):
        mt.HashTable(**kwargs)


@pytest.mark.parametrize("attrs, message", [
    (dict(dim=0), "dim must be"),
    (dict(dim=3, capacity_hint=-1), "capacity_hint must be >= 0"),
    (dict(dim=3, optimizer="nope"), "unknown optimizer"),
    (dict(dim=3, initializer="uniform(minval=1,maxval=0)"), "minval <= maxval"),
])
def test_bad_attrs_reach_the_kernel_as_invalid_argument(attrs, message):
    # Straight to the op, past the Python checks.
    with pytest.raises(Invalid, match=message):
        table_ops.monolith_hash_table(**attrs)


def test_wrong_id_dtype(table):
    before = snapshot(table)
    with pytest.raises(Invalid, match="ids must be int64, got float32"):
        table.lookup(tf.constant([1.0, 2.0]))
    with pytest.raises(Invalid, match="ids must be int64, got string"):
        table.lookup(tf.constant(["a"]), training=True)
    with pytest.raises(Invalid, match="int64"):
        table_ops.monolith_hash_table_lookup(table.resource_handle, tf.constant([1.0]), dim=4)
    assert_unchanged(table, before)


def test_gradient_rows_must_match_ids(table):
    before = snapshot(table)
    with pytest.raises((Invalid, ValueError), match="grads"):
        table.apply_gradients([1, 2], tf.ones([3, 4]), 0.1)
    with pytest.raises((Invalid, ValueError)):
        table.apply_gradients([1, 2], tf.ones([2, 5]), 0.1)
    with pytest.raises(Invalid, match="grads must have shape"):
        table_ops.monolith_hash_table_apply_gradients(
            table.resource_handle, tf.constant([1, 2], tf.int64), tf.ones([2, 5]),
            tf.constant(0.1), tf.constant(0, tf.int64))
    with pytest.raises((Invalid, ValueError)):
        table.apply_gradients([1, 2], tf.ones([2, 4]), [0.1, 0.2])
    with pytest.raises((Invalid, ValueError)):
        table.apply_gradients([1, 2], tf.ones([2, 4]), 0.1, timestamps=[1, 2, 3])
    with pytest.raises(Invalid, match="learning_rate"):
        table.apply_gradients([1, 2], tf.ones([2, 4]), float("nan"))
    assert_unchanged(table, before)


def test_wrong_rank_and_dim_mismatch(table):
    with pytest.raises(Invalid, match="does not match the table's dim"):
        table_ops.monolith_hash_table_lookup(table.resource_handle,
                                             tf.constant([1], tf.int64), dim=8)
    with pytest.raises((Invalid, ValueError)):
        table.import_rows(tf.constant([[1]], tf.int64), tf.ones([1, 4]), tf.ones([1, 4]),
                          tf.constant([0], tf.int64), tf.constant([0], tf.int64))


def test_import_with_bad_state_shape_loses_nothing(table):
    before = snapshot(table)
    with pytest.raises(Invalid, match="state must have shape"):
        table.import_rows([9], tf.ones([1, 4]), tf.ones([1, 3]), [0], [0], clear=True)
    with pytest.raises(Invalid, match="counts"):
        table.import_rows([9], tf.ones([1, 4]), tf.ones([1, 4]), [0], [-4], clear=True)
    assert_unchanged(table, before)


def test_bad_export_chunk(table):
    with pytest.raises(Invalid, match="chunk"):
        table.export(3, 3)
    with pytest.raises(Invalid, match="chunk"):
        table.export(0, 0)


ID_DTYPES = [tf.int64, tf.int32, tf.float32, tf.string, tf.bool]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    id_shape=st.lists(st.integers(0, 4), max_size=3),
    grad_shape=st.lists(st.integers(0, 5), max_size=4),
    id_dtype=st.sampled_from(ID_DTYPES),
    lr=st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                 st.lists(st.floats(-1, 1, width=32), max_size=2)),
    ts_shape=st.lists(st.integers(0, 4), max_size=2),
    training=st.booleans(),
)
def test_fuzz_op_inputs_never_crash(id_shape, grad_shape, id_dtype, lr, ts_shape, training):
    """Random shapes, dtypes and values: each call succeeds or raises
    InvalidArgumentError, and a call that raises changes nothing; the process
    never dies and the table stays usable."""
    table = FUZZ_TABLE
    rng = np.random.default_rng(len(id_shape) * 7 + len(grad_shape))
    raw = rng.integers(-50, 50, size=id_shape)
    if id_dtype == tf.string:
        ids = tf.constant(raw.astype(str))
    else:
        ids = tf.cast(tf.constant(raw), id_dtype)
    grads = tf.constant(rng.normal(size=grad_shape).astype(np.float32))
    timestamps = tf.constant(rng.integers(0, 100, size=ts_shape), tf.int64)
    raw_lr = tf.constant(lr, tf.float32)  # a scalar, or a wrongly shaped vector
    calls = [
        lambda: table.lookup(ids, training=training),
        lambda: table.apply_gradients(ids, grads, lr, timestamps=timestamps),
        lambda: table_ops.monolith_hash_table_apply_gradients(
            table.resource_handle, tf.cast(tf.constant(raw), tf.int64), grads, raw_lr,
            timestamps),
    ]
    for index, call in enumerate(calls):
        before = snapshot(table)
        try:
            result = call()
        except Invalid:
            assert_unchanged(table, before)
            continue
        if index == 0:
            assert result.shape == tuple(id_shape) + (3,)
    assert table.lookup([1]).shape == (1, 3)


FUZZ_TABLE = mt.HashTable(3, initializer="zeros", optimizer="ftrl")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.integers(-3, 5))
def test_fuzz_specs_never_crash(initializer, optimizer, dim):
    try:
        table = table_ops.monolith_hash_table(dim=dim, initializer=initializer,
                                              optimizer=optimizer)
    except Invalid:
        return
    assert table.dtype == tf.resource
