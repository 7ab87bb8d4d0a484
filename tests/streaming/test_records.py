"""Record schema: round trips, malformed records, joined examples parsed
with tf.io.parse_example; records written without TensorFlow are
tf.train.Examples byte for byte."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from monolith_tf import example_proto
from monolith_tf.streaming import records
from monolith_tf.streaming.dataset import joined_feature_spec
from monolith_tf.streaming.records import (ActionRecord, FeatureRecord, RecordError,
                                           decode_action, decode_feature, encode_action,
                                           encode_feature, encode_joined)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_example_proto_is_tf_train_example_on_the_wire():
    """Every field kind, negative and large ints, empty lists: bytes written
    by either class parse in the other to the same message."""
    features = {"ids": [-1, 0, 2**62], "floats": [0.5, -3.25], "bytes": [b"", b"\xff\x00"],
                "empty": []}
    ours = example_proto.Example()
    theirs = tf.train.Example()
    for name, values in features.items():
        if name == "floats":
            ours.features.feature[name].CopyFrom(example_proto.float_feature(values))
            theirs.features.feature[name].float_list.value.extend(values)
        elif name == "bytes":
            ours.features.feature[name].CopyFrom(example_proto.bytes_feature(values))
            theirs.features.feature[name].bytes_list.value.extend(values)
        else:
            ours.features.feature[name].CopyFrom(example_proto.int64_feature(values))
            theirs.features.feature[name].int64_list.value.extend(values)
    assert ours.SerializeToString(deterministic=True) == \
        theirs.SerializeToString(deterministic=True)
    parsed = tf.train.Example.FromString(ours.SerializeToString())
    assert list(parsed.features.feature["ids"].int64_list.value) == [-1, 0, 2**62]
    back = example_proto.Example.FromString(theirs.SerializeToString())
    assert list(back.features.feature["bytes"].bytes_list.value) == [b"", b"\xff\x00"]
    assert back.features.feature["empty"].WhichOneof("kind") == "int64_list"


@pytest.mark.integration
def test_the_logs_joiner_and_record_codecs_import_no_tensorflow():
    modules = ["monolith_tf", "monolith_tf.streaming", "monolith_tf.streaming.joiner",
               "monolith_tf.streaming.replay", "monolith_tf.streaming.records",
               "monolith_tf.streaming.embedded_log", "monolith_tf.sync.records",
               "monolith_tf.export_format", "monolith_tf.topics"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in modules) +
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'keras', 'tf_keras')))")
    env = dict(os.environ, PYTHONPATH=REPO)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "[]"


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
], ids=["garbage", "an action record", "text"])  # ids from bytes vary by process (xdist)
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
