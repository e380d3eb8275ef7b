"""TensorFlow's `tf.train` record messages (SequenceExample and what it holds), without TensorFlow.

The messages of tensorflow/core/example/{feature,example}.proto, field for field, built in a descriptor pool of
their own (so that importing TensorFlow later in the same process finds no clash): the same wire format, so
TensorFlow reads what these write. Writing a record this way spares a worker process that only writes records
TensorFlow's import (4 s and 650 MB a process).
"""

from __future__ import annotations

import functools

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PACKAGE = "tensorflow"


def _field(name: str, number: int, kind: int, label: int = _F.LABEL_OPTIONAL, type_name: str = "",
           oneof: int | None = None) -> _F:
    field = _F(name=name, number=number, type=kind, label=label)
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"
    if oneof is not None:
        field.oneof_index = oneof
    return field


def _map(message: descriptor_pb2.DescriptorProto, name: str, entry: str, value_type: str) -> None:
    """`map<string, value_type> name = 1;` as protoc writes it: a nested entry message and a repeated field."""
    nested = message.nested_type.add(name=entry)
    nested.options.map_entry = True
    nested.field.extend([_field("key", 1, _F.TYPE_STRING), _field("value", 2, _F.TYPE_MESSAGE, type_name=value_type)])
    message.field.append(_field(name, 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, f"{message.name}.{entry}"))


@functools.lru_cache(maxsize=1)
def _classes() -> dict:
    proto = descriptor_pb2.FileDescriptorProto(name="video_annotation/tensorflow_example.proto", package=_PACKAGE,
                                               syntax="proto3")
    for name, kind in (("BytesList", _F.TYPE_BYTES), ("FloatList", _F.TYPE_FLOAT), ("Int64List", _F.TYPE_INT64)):
        proto.message_type.add(name=name).field.append(_field("value", 1, kind, _F.LABEL_REPEATED))
    feature = proto.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    feature.field.extend([_field("bytes_list", 1, _F.TYPE_MESSAGE, type_name="BytesList", oneof=0),
                          _field("float_list", 2, _F.TYPE_MESSAGE, type_name="FloatList", oneof=0),
                          _field("int64_list", 3, _F.TYPE_MESSAGE, type_name="Int64List", oneof=0)])
    _map(proto.message_type.add(name="Features"), "feature", "FeatureEntry", "Feature")
    proto.message_type.add(name="FeatureList").field.append(
        _field("feature", 1, _F.TYPE_MESSAGE, _F.LABEL_REPEATED, "Feature"))
    _map(proto.message_type.add(name="FeatureLists"), "feature_list", "FeatureListEntry", "FeatureList")
    sequence = proto.message_type.add(name="SequenceExample")
    sequence.field.extend([_field("context", 1, _F.TYPE_MESSAGE, type_name="Features"),
                           _field("feature_lists", 2, _F.TYPE_MESSAGE, type_name="FeatureLists")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return {message.name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.{message.name}"))
            for message in proto.message_type}


def __getattr__(name: str):
    """`example_pb.Feature`, `example_pb.SequenceExample`, ...: the message classes, as `tf.train` names them."""
    try:
        return _classes()[name]
    except KeyError:
        raise AttributeError(name) from None
