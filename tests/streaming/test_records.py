"""Record schema: round trips, malformed records, joined examples parsed
with tf.io.parse_example."""

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf.streaming import records
from monolith_tf.streaming.records import (ActionRecord, FeatureRecord, RecordError,
                                           decode_action, decode_feature, encode_action,
                                           encode_feature, encode_joined, joined_feature_spec)


def test_feature_and_action_records_round_trip():
    feature = FeatureRecord(b"req-1", 42, 2**40, 1_700_000_000, sparse={"genres": [3, 5]},
                            dense={"age": [0.5]})
    assert decode_feature(encode_feature(feature)) == feature
    action = ActionRecord(b"req-1", "click", 1.0, 1_700_000_010)
    assert decode_action(encode_action(action)) == action


@pytest.mark.parametrize("data, message", [
    (b"\xff\xfe garbage", "not a tf.train.Example"),
    (encode_action(ActionRecord(b"r", "click", 1.0, 5)), "lacks 'user_id'"),
    ("text", "must be bytes"),
])
def test_malformed_feature_records(data, message):
    with pytest.raises(RecordError, match=message):
        decode_feature(data)


def test_malformed_action_records_and_bad_fields():
    with pytest.raises(RecordError, match="lacks 'action'"):
        decode_action(encode_feature(FeatureRecord(b"r", 1, 2, 3)))
    with pytest.raises(RecordError, match="request_id must be non-empty"):
        encode_action(ActionRecord(b"", "click", 1.0, 5))
    with pytest.raises(RecordError, match="sample_rate"):
        encode_joined(FeatureRecord(b"r", 1, 2, 3), {"click": 0.0}, 0.0)


def test_joined_examples_parse_into_training_features():
    joined = [encode_joined(FeatureRecord(f"r{i}".encode(), i, 100 + i, 1000 + i,
                                          sparse={"genres": list(range(i))},
                                          dense={"age": [i / 10, 1.0]}),
                            {"click": float(i % 2), "like": 0.0}, 1.0 if i % 2 else 0.25)
              for i in range(4)]
    spec = joined_feature_spec(["click", "like"], sparse=["genres"], dense={"age": 2})
    parsed = tf.io.parse_example(tf.constant(joined), spec)
    np.testing.assert_array_equal(parsed["user_id"], [0, 1, 2, 3])
    np.testing.assert_array_equal(parsed["timestamp"], [1000, 1001, 1002, 1003])
    np.testing.assert_array_equal(parsed["label/click"], [0, 1, 0, 1])
    np.testing.assert_allclose(parsed["sample_rate"], [0.25, 1, 0.25, 1])
    assert parsed["sparse/genres"].to_list() == [[], [0], [0, 1], [0, 1, 2]]
    np.testing.assert_allclose(parsed["dense/age"][:, 0], [0, 0.1, 0.2, 0.3], rtol=1e-6)
    assert records.decode_feature(joined[2]).user_id == 2  # a joined example is a feature record
