"""The few TensorFlow protobuf messages weightcli reads, declared here with only the
fields it needs (field numbers as in TensorFlow's .proto files). The protobuf
runtime skips every other field, so no TensorFlow import is needed.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
OPT, REP = F.LABEL_OPTIONAL, F.LABEL_REPEATED

# message name -> [(field name, number, type, label, type_name)]
MESSAGES: dict[str, list[tuple[str, int, int, int, str | None]]] = {
    "Dim": [("size", 1, F.TYPE_INT64, OPT, None), ("name", 2, F.TYPE_STRING, OPT, None)],
    "TensorShapeProto": [
        ("dim", 2, F.TYPE_MESSAGE, REP, ".wc.Dim"),
        ("unknown_rank", 3, F.TYPE_BOOL, OPT, None),
    ],
    "TensorSliceProto": [("extent", 1, F.TYPE_BYTES, REP, None)],
    "VersionDef": [
        ("producer", 1, F.TYPE_INT32, OPT, None),
        ("min_consumer", 2, F.TYPE_INT32, OPT, None),
    ],
    "BundleHeaderProto": [
        ("num_shards", 1, F.TYPE_INT32, OPT, None),
        ("endianness", 2, F.TYPE_INT32, OPT, None),
        ("version", 3, F.TYPE_MESSAGE, OPT, ".wc.VersionDef"),
    ],
    "BundleEntryProto": [
        ("dtype", 1, F.TYPE_INT32, OPT, None),
        ("shape", 2, F.TYPE_MESSAGE, OPT, ".wc.TensorShapeProto"),
        ("shard_id", 3, F.TYPE_INT32, OPT, None),
        ("offset", 4, F.TYPE_INT64, OPT, None),
        ("size", 5, F.TYPE_INT64, OPT, None),
        ("crc32c", 6, F.TYPE_FIXED32, OPT, None),
        ("slices", 7, F.TYPE_MESSAGE, REP, ".wc.TensorSliceProto"),
    ],
    # saved_model.pb: SavedModel -> MetaGraphDef -> SavedObjectGraph -> SavedObject
    "SavedModel": [
        ("saved_model_schema_version", 1, F.TYPE_INT64, OPT, None),
        ("meta_graphs", 2, F.TYPE_MESSAGE, REP, ".wc.MetaGraphDef"),
    ],
    "MetaInfoDef": [
        ("meta_graph_version", 1, F.TYPE_STRING, OPT, None),
        ("tags", 4, F.TYPE_STRING, REP, None),
        ("tensorflow_version", 5, F.TYPE_STRING, OPT, None),
    ],
    "MetaGraphDef": [
        ("meta_info_def", 1, F.TYPE_MESSAGE, OPT, ".wc.MetaInfoDef"),
        # map<string, CollectionDef>: on the wire, repeated key/value entries.
        ("collection_def", 4, F.TYPE_MESSAGE, REP, ".wc.CollectionDefEntry"),
        ("object_graph_def", 7, F.TYPE_MESSAGE, OPT, ".wc.SavedObjectGraph"),
    ],
    "CollectionDefEntry": [
        ("key", 1, F.TYPE_STRING, OPT, None),
        ("value", 2, F.TYPE_MESSAGE, OPT, ".wc.CollectionDef"),
    ],
    "CollectionDef": [("bytes_list", 2, F.TYPE_MESSAGE, OPT, ".wc.BytesList")],
    "BytesList": [("value", 1, F.TYPE_BYTES, REP, None)],
    "VariableDef": [("variable_name", 1, F.TYPE_STRING, OPT, None)],
    "SavedObjectGraph": [("nodes", 1, F.TYPE_MESSAGE, REP, ".wc.SavedObject")],
    "ObjectReference": [
        ("node_id", 1, F.TYPE_INT32, OPT, None),
        ("local_name", 2, F.TYPE_STRING, OPT, None),
    ],
    "SavedObject": [
        ("children", 1, F.TYPE_MESSAGE, REP, ".wc.ObjectReference"),
        ("user_object", 4, F.TYPE_MESSAGE, OPT, ".wc.SavedUserObject"),
        ("variable", 7, F.TYPE_MESSAGE, OPT, ".wc.SavedVariable"),
    ],
    "SavedUserObject": [
        ("identifier", 1, F.TYPE_STRING, OPT, None),
        ("metadata", 3, F.TYPE_STRING, OPT, None),
    ],
    "SavedVariable": [
        ("dtype", 1, F.TYPE_INT32, OPT, None),
        ("shape", 2, F.TYPE_MESSAGE, OPT, ".wc.TensorShapeProto"),
        ("trainable", 3, F.TYPE_BOOL, OPT, None),
        ("name", 6, F.TYPE_STRING, OPT, None),
    ],
    # The checkpoint's own object graph (the _CHECKPOINTABLE_OBJECT_GRAPH string tensor).
    "TrackableObjectGraph": [("nodes", 1, F.TYPE_MESSAGE, REP, ".wc.TrackableObject")],
    "SerializedTensor": [
        ("name", 1, F.TYPE_STRING, OPT, None),
        ("full_name", 2, F.TYPE_STRING, OPT, None),
        ("checkpoint_key", 3, F.TYPE_STRING, OPT, None),
    ],
    "SlotVariableReference": [
        ("original_variable_node_id", 1, F.TYPE_INT32, OPT, None),
        ("slot_name", 2, F.TYPE_STRING, OPT, None),
        ("slot_variable_node_id", 3, F.TYPE_INT32, OPT, None),
    ],
    "TrackableObject": [
        ("children", 1, F.TYPE_MESSAGE, REP, ".wc.ObjectReference"),
        ("attributes", 2, F.TYPE_MESSAGE, REP, ".wc.SerializedTensor"),
        ("slot_variables", 3, F.TYPE_MESSAGE, REP, ".wc.SlotVariableReference"),
    ],
    # tf-keras keras_metadata.pb
    "SavedMetadata": [("nodes", 1, F.TYPE_MESSAGE, REP, ".wc.KerasObject")],
    "KerasObject": [
        ("node_id", 2, F.TYPE_INT32, OPT, None),
        ("node_path", 3, F.TYPE_STRING, OPT, None),
        ("identifier", 4, F.TYPE_STRING, OPT, None),
        ("metadata", 5, F.TYPE_STRING, OPT, None),
    ],
}


def _build() -> dict[str, Any]:
    fdp = descriptor_pb2.FileDescriptorProto(
        name="weightcli_tf.proto", package="wc", syntax="proto3"
    )
    for full, fields in MESSAGES.items():
        msg = fdp.message_type.add(name=full)
        for name, number, ftype, label, type_name in fields:
            field = msg.field.add(name=name, number=number, type=ftype, label=label)
            if type_name:
                field.type_name = type_name
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    out = {}
    for full in MESSAGES:
        out[full] = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"wc.{full}"))
    return out


_CLASSES = _build()
BundleHeaderProto = _CLASSES["BundleHeaderProto"]
BundleEntryProto = _CLASSES["BundleEntryProto"]
SavedModel = _CLASSES["SavedModel"]
TrackableObjectGraph = _CLASSES["TrackableObjectGraph"]
SavedMetadata = _CLASSES["SavedMetadata"]
MetaGraphDef = _CLASSES["MetaGraphDef"]
VariableDef = _CLASSES["VariableDef"]


def trainable_variables(meta_graph: Any) -> set[str] | None:
    """The names in a MetaGraphDef's ``trainable_variables`` collection (``dense/kernel``,
    without ``:0``); None when it has none."""
    for entry in meta_graph.collection_def:
        if entry.key == "trainable_variables":
            names = set()
            for raw in entry.value.bytes_list.value:
                var = VariableDef()
                var.ParseFromString(raw)
                names.add(var.variable_name.split(":")[0])
            return names
    return None
