"""Record schema of the feature log, the action log and joined examples.

Every record is a serialized ``tf.train.Example`` (TensorFlow's convention,
written and read here through ``monolith_tf.example_proto``, without TensorFlow;
no pickle). Times are seconds of event time (int64).

Feature log record (one per impression, written when the request is served):
  ``request_id``   bytes [1]   joins the record with its actions
  ``user_id``      int64 [1]
  ``item_id``      int64 [1]
  ``event_time``   int64 [1]   impression time
  ``sparse/<name>`` int64 [n]  any number of extra id features
  ``dense/<name>``  float [n]  numeric features

Action log record (one per user action, e.g. a click or a rating):
  ``request_id``   bytes [1]
  ``action``       bytes [1]   action type, e.g. b"click"
  ``value``        float [1]   e.g. 1.0 for a click, the stars of a rating
  ``event_time``   int64 [1]

Joined example (the training input): every feature-log field, plus
  ``timestamp``      int64 [1]  the impression time: the tables' data time
  ``label/<action>`` float [1]  the largest value of that action type seen
                                for the impression, 0 when none arrived
  ``sample_rate``    float [1]  the probability this example was kept: 1
                                for impressions with an action, the negative
                                sampling rate for those without (a model
                                corrects its log-odds by log(sample_rate)).
"""

import dataclasses

from google.protobuf.message import DecodeError

from monolith_tf import example_proto


class RecordError(ValueError):
    """A record is not a valid feature, action or joined record."""


@dataclasses.dataclass
class FeatureRecord:
    """One impression: who saw what, when, with which features."""

    request_id: bytes
    user_id: int
    item_id: int
    event_time: int
    sparse: dict = dataclasses.field(default_factory=dict)  # name -> list of int ids
    dense: dict = dataclasses.field(default_factory=dict)   # name -> list of floats


@dataclasses.dataclass
class ActionRecord:
    """One user action on an impression."""

    request_id: bytes
    action: str
    value: float
    event_time: int


_int64 = example_proto.int64_feature
_float = example_proto.float_feature
_bytes = example_proto.bytes_feature


def _as_bytes(value, what):
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes) or not value:
        raise RecordError(f"{what} must be non-empty bytes or str, got {value!r}")
    return value


def encode_feature(record):
    """Serializes a FeatureRecord (validated) to bytes."""
    features = {"request_id": _bytes([_as_bytes(record.request_id, "request_id")]),
                "user_id": _int64([int(record.user_id)]),
                "item_id": _int64([int(record.item_id)]),
                "event_time": _int64([int(record.event_time)])}
    for name, ids in record.sparse.items():
        features[f"sparse/{name}"] = _int64(int(i) for i in ids)
    for name, values in record.dense.items():
        features[f"dense/{name}"] = _float(float(v) for v in values)
    return _serialize(features)


def encode_action(record):
    """Serializes an ActionRecord (validated) to bytes."""
    features = {"request_id": _bytes([_as_bytes(record.request_id, "request_id")]),
                "action": _bytes([_as_bytes(record.action, "action")]),
                "value": _float([float(record.value)]),
                "event_time": _int64([int(record.event_time)])}
    return _serialize(features)


def _serialize(features):
    return example_proto.Example(
        features=example_proto.Features(feature=features)).SerializeToString()


def _parse(data, kind):
    if not isinstance(data, bytes):
        raise RecordError(f"{kind} record must be bytes, got {type(data).__name__}")
    example = example_proto.Example()
    try:
        example.ParseFromString(data)
    except DecodeError as error:
        raise RecordError(f"{kind} record is not a tf.train.Example: {error}") from error
    return example.features.feature


def _one(features, name, kind, field):
    if name not in features:
        raise RecordError(f"{kind} record lacks {name!r}")
    values = getattr(features[name], field).value
    if len(values) != 1:
        raise RecordError(f"{kind} record: {name!r} must hold one {field[:-5]} value, "
                          f"got {len(values)}")
    return values[0]


def decode_feature(data):
    """Parses a feature-log record; raises RecordError when malformed."""
    features = _parse(data, "feature")
    record = FeatureRecord(
        request_id=_one(features, "request_id", "feature", "bytes_list"),
        user_id=int(_one(features, "user_id", "feature", "int64_list")),
        item_id=int(_one(features, "item_id", "feature", "int64_list")),
        event_time=int(_one(features, "event_time", "feature", "int64_list")))
    if not record.request_id:
        raise RecordError("feature record has an empty request_id")
    for name, feature in features.items():
        if name.startswith("sparse/"):
            record.sparse[name[len("sparse/"):]] = list(feature.int64_list.value)
        elif name.startswith("dense/"):
            record.dense[name[len("dense/"):]] = list(feature.float_list.value)
    return record


def decode_action(data):
    """Parses an action-log record; raises RecordError when malformed."""
    features = _parse(data, "action")
    record = ActionRecord(
        request_id=_one(features, "request_id", "action", "bytes_list"),
        action=_one(features, "action", "action", "bytes_list").decode("utf-8", "replace"),
        value=float(_one(features, "value", "action", "float_list")),
        event_time=int(_one(features, "event_time", "action", "int64_list")))
    if not record.request_id or not record.action:
        raise RecordError("action record has an empty request_id or action")
    return record


def encode_joined(feature, labels, sample_rate):
    """A joined example: the impression's features, ``labels`` ({action
    type: value}, every configured type present) and ``sample_rate``."""
    if not 0.0 < sample_rate <= 1.0:
        raise RecordError(f"sample_rate must be in (0, 1], got {sample_rate}")
    example = example_proto.Example()
    example.ParseFromString(encode_feature(feature))
    fields = example.features.feature
    fields["timestamp"].CopyFrom(_int64([int(feature.event_time)]))
    for action, value in labels.items():
        fields[f"label/{action}"].CopyFrom(_float([float(value)]))
    fields["sample_rate"].CopyFrom(_float([float(sample_rate)]))
    return example.SerializeToString()
