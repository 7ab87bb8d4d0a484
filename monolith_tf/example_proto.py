"""``tf.train.Example`` messages without importing TensorFlow.

The logs, the joiner and the sync stream write and read records as
serialized ``tf.train.Example`` protos, but a process that only joins logs
or follows the sync stream should not pay for loading TensorFlow (seconds
of start-up). This module declares the same messages (same package, names
and field numbers as ``tensorflow/core/example/{example,feature}.proto``)
to protobuf in a descriptor pool of its own, so the wire format is
identical and TensorFlow's registration of the same names, in the default
pool, never clashes with it. Bytes written here parse as ``tf.train.Example``
and the other way round; the message classes are distinct from
``tf.train.Example`` (compare serialized bytes, not objects).

``Example``, ``Features``, ``Feature``, ``BytesList``, ``Int64List``,
``FloatList``: the message classes. ``int64_feature``, ``float_feature``,
``bytes_feature``: a ``Feature`` from an iterable of values.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_FIELD = descriptor_pb2.FieldDescriptorProto


def _file_descriptor():
    """The FileDescriptorProto of the six messages, as TensorFlow declares
    them (field numbers and packing matter for the wire format)."""
    proto = descriptor_pb2.FileDescriptorProto(name="monolith_tf/example.proto",
                                               package="tensorflow", syntax="proto3")

    def message(name, fields):
        added = proto.message_type.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            field = added.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
            if kind in (_FIELD.TYPE_INT64, _FIELD.TYPE_FLOAT) and label == _FIELD.LABEL_REPEATED:
                field.options.packed = True
        return added

    repeated, optional = _FIELD.LABEL_REPEATED, _FIELD.LABEL_OPTIONAL
    message("BytesList", [("value", 1, _FIELD.TYPE_BYTES, repeated, None)])
    message("FloatList", [("value", 1, _FIELD.TYPE_FLOAT, repeated, None)])
    message("Int64List", [("value", 1, _FIELD.TYPE_INT64, repeated, None)])
    feature = message("Feature", [
        ("bytes_list", 1, _FIELD.TYPE_MESSAGE, optional, ".tensorflow.BytesList"),
        ("float_list", 2, _FIELD.TYPE_MESSAGE, optional, ".tensorflow.FloatList"),
        ("int64_list", 3, _FIELD.TYPE_MESSAGE, optional, ".tensorflow.Int64List")])
    for field in feature.field:
        field.oneof_index = 0
    feature.oneof_decl.add(name="kind")
    features = message("Features", [
        ("feature", 1, _FIELD.TYPE_MESSAGE, repeated, ".tensorflow.Features.FeatureEntry")])
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_FIELD.TYPE_STRING, label=optional)
    entry.field.add(name="value", number=2, type=_FIELD.TYPE_MESSAGE, label=optional,
                    type_name=".tensorflow.Feature")
    message("Example", [("features", 1, _FIELD.TYPE_MESSAGE, optional, ".tensorflow.Features")])
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file_descriptor())


def _message_class(name):
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"tensorflow.{name}"))


BytesList = _message_class("BytesList")
FloatList = _message_class("FloatList")
Int64List = _message_class("Int64List")
Feature = _message_class("Feature")
Features = _message_class("Features")
Example = _message_class("Example")


def int64_feature(values):
    """A ``Feature`` holding int64 ``values``."""
    return Feature(int64_list=Int64List(value=list(values)))


def float_feature(values):
    """A ``Feature`` holding float32 ``values``."""
    return Feature(float_list=FloatList(value=list(values)))


def bytes_feature(values):
    """A ``Feature`` holding bytes ``values``."""
    return Feature(bytes_list=BytesList(value=list(values)))
