"""The sync record format: round trips, float16 rows within their error
bound, and every kind of damage refused with SyncRecordError."""

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf.sync.records import (DensePush, RowsPush, SyncRecordError, checksum_of,
                                             decode, encode_dense, encode_rows)


def rows_push(row_dtype="float32", n=50, dim=8):
    rng = np.random.default_rng(0)
    return RowsPush("layer/user", rng.integers(-2**62, 2**62, n), rng.normal(size=(n, dim)),
                    np.array([7, 9]), publisher="host:1", push=12, step=340, data_time=1234,
                    wall_time=1700000000.25, row_dtype=row_dtype)


def test_rows_round_trip_exactly_in_float32():
    push = rows_push()
    got = decode(encode_rows(push))
    np.testing.assert_array_equal(got.ids, push.ids)
    np.testing.assert_array_equal(got.values, push.values.astype(np.float32))
    np.testing.assert_array_equal(got.removed, [7, 9])
    assert (got.table, got.publisher, got.push, got.step, got.data_time) == (
        "layer/user", "host:1", 12, 340, 1234)
    assert got.wall_time == pytest.approx(1700000000.25, abs=1e-6)


def test_float16_rows_are_half_size_within_the_bound():
    full, half = encode_rows(rows_push()), encode_rows(rows_push("float16"))
    assert abs((len(full) - len(half)) - 50 * 8 * 2) <= 8  # 2 bytes less per value
    push = rows_push()
    got = decode(half)
    assert got.row_dtype == "float16" and got.values.dtype == np.float32
    np.testing.assert_allclose(got.values, push.values, rtol=2**-11, atol=2**-24)
    with pytest.raises(ValueError, match="float16"):
        encode_rows(RowsPush("t", np.array([1]), np.array([[1e6]]), np.zeros(0),
                             row_dtype="float16"))


def test_dense_round_trip_keeps_dtypes_and_shapes():
    weights = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], np.int64),
               np.float32(3.5)]
    got = decode(encode_dense(DensePush(7, weights, push=3)))
    assert got.version == 7 and got.push == 3
    for a, b in zip(got.weights, weights):
        assert a.dtype == np.asarray(b).dtype and a.shape == np.asarray(b).shape
        np.testing.assert_array_equal(a, b)


def _example_with(field, feature):
    """A well-formed record (valid checksum) with one field changed."""
    example = tf.train.Example.FromString(encode_rows(rows_push()))
    features = example.features.feature
    features[field].CopyFrom(feature)
    features["checksum"].CopyFrom(tf.train.Feature(
        int64_list=tf.train.Int64List(value=[checksum_of(features)])))
    return example.SerializeToString()


@pytest.mark.parametrize("damage,message", [
    (lambda data: data[: len(data) // 3], "unreadable"),
    (lambda data: data[:-40] + bytes([data[-40] ^ 0x10]) + data[-39:], ""),
    (lambda data: b"", "empty"),
    (lambda data: b"\x00\x01garbage", ""),
    (lambda data: _example_with("format", tf.train.Feature(
        int64_list=tf.train.Int64List(value=[2]))), "format 2"),
    (lambda data: _example_with("kind", tf.train.Feature(
        bytes_list=tf.train.BytesList(value=[b"what"]))), "unknown sync record kind"),
    (lambda data: _example_with("dim", tf.train.Feature(
        int64_list=tf.train.Int64List(value=[7]))), "values hold"),
    (lambda data: data.replace(b"layer/user", b"layer/usex"), "checksum"),
])
def test_damaged_records_are_refused(damage, message):
    with pytest.raises(SyncRecordError, match=message):
        decode(damage(encode_rows(rows_push())))
