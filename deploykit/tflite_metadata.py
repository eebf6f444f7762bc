"""TFLite Metadata from a model contract: what Android's Task Library, MediaPipe Tasks and Android Studio's ML Model
Binding read from a .tflite file.

tflite-support, the maintained writer, does not install beside current TensorFlow (it pins protobuf < 4, and its
native parts need libusb), so the metadata is built here with the flatbuffers library, field by field as the
published schema (tensorflow_lite_support/metadata/metadata_schema.fbs, file identifier "M001") numbers them,
and stored the way that writer stores it: a model buffer referenced by the metadata entry ``TFLITE_METADATA``,
with the associated files (labels, the full contract) appended to the model as a zip archive. The model
flatbuffer is re-packed with LiteRT's own generated schema (``ai_edge_litert.schema_py_generated``); callers
re-run the model on golden vectors afterwards, because its bytes changed.
"""
from __future__ import annotations

import io
import json
import zipfile
from typing import Optional

from deploykit.errors import UnsupportedModelError

METADATA_NAME = "TFLITE_METADATA"
CONTRACT_FILE = "deploykit_contract.json"
MIN_PARSER_VERSION = "1.0.0"     # image/feature properties, normalization, stats, label files: all 1.0.0 features
# Field slots of the tables used (a union takes two: its type, then its value).
_FILE = {"name": 0, "description": 1, "type": 2}
_TENSOR = {"name": 0, "description": 1, "content": 3, "process_units": 4, "stats": 5, "associated_files": 6}
_SUBGRAPH = {"name": 0, "input_tensor_metadata": 2, "output_tensor_metadata": 3}
_MODEL = {"name": 0, "description": 1, "version": 2, "subgraph_metadata": 3, "author": 4,
          "associated_files": 6, "min_parser_version": 7}
_FEATURE_PROPERTIES, _IMAGE_PROPERTIES, _NORMALIZATION_OPTIONS = 1, 2, 1
_RGB, _GRAYSCALE = 1, 2
_DESCRIPTIONS, _TENSOR_AXIS_LABELS = 1, 2


def embed(model_bytes: bytes, contract: dict, labels: Optional[list], name: str, description: str) -> bytes:
    """``model_bytes`` with TFLite Metadata for ``contract`` (replacing any there) and labels packed in."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    if any(getattr(buffer, "offset", 0) > 1 for buffer in model.buffers or []):
        raise UnsupportedModelError("the .tflite keeps its weights outside the flatbuffer (a model over 2 GB): "
                                    "deploykit cannot re-pack it with metadata", "ship contract.json beside it")
    contract = _in_tensor_order(model, contract)
    metadata = schema.BufferT()
    metadata.data = np.frombuffer(_metadata_flatbuffer(contract, labels is not None, name, description), np.uint8)
    model.buffers = (model.buffers or []) + [metadata]
    entry = schema.MetadataT()
    entry.name, entry.buffer = METADATA_NAME, len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if _text(m.name) != METADATA_NAME] + [entry]
    import flatbuffers

    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    packed = io.BytesIO(bytes(builder.Output()))
    packed.seek(0, io.SEEK_END)
    with zipfile.ZipFile(packed, "a") as archive:
        if labels is not None:
            archive.writestr("labels.txt", "\n".join(labels) + "\n")
        archive.writestr(CONTRACT_FILE, json.dumps(contract, indent=2) + "\n")
    return packed.getvalue()


def _in_tensor_order(model, contract: dict) -> dict:
    """The contract's tensors in the order of the subgraph's inputs/outputs, as the metadata schema requires (the
    contract follows the signature's names; the signature maps them to tensor indices)."""
    signatures = model.signatureDefs or []
    if not signatures:
        return contract
    signature = signatures[0]
    subgraph = model.subgraphs[signature.subgraphIndex or 0]
    ordered = dict(contract)
    for kind, entries, order in (("inputs", signature.inputs, subgraph.inputs),
                                 ("outputs", signature.outputs, subgraph.outputs)):
        index_of = {_text(entry.name): entry.tensorIndex for entry in entries or []}
        position = {int(tensor): i for i, tensor in enumerate(list(order) if order is not None else [])}
        if all(t["name"] in index_of and index_of[t["name"]] in position for t in contract[kind]):
            ordered[kind] = sorted(contract[kind], key=lambda t: position[index_of[t["name"]]])
    return ordered


def carried_contract(path: str, fmt) -> Optional[dict]:
    """The deploykit contract a model file carries — ONNX ``metadata_props``, a .tflite's packed contract file —
    or None; a damaged one is ignored (it is metadata beside the model, as untrusted as the file)."""
    from deploykit.contract import validate
    from deploykit.errors import DeploykitError

    try:
        found = read_carried(path, fmt)
        return validate(found) if found is not None else None
    except (DeploykitError, ValueError, RecursionError):
        return None


def read_carried(path: str, fmt):
    """The parsed JSON of the contract ``path`` carries (not validated; None when it carries none). Raises
    ModelLoadError for a damaged model, ValueError (RecursionError) for a contract that is no JSON: `verify BUNDLE`
    reports those as tampering, where `inspect` only leaves the contract out."""
    from deploykit.contract import ONNX_KEY
    from deploykit.errors import ModelLoadError
    from deploykit.formats import Format

    if fmt == Format.ONNX:
        from deploykit.onnx_io import read_onnx

        props = {p.key: p.value for p in read_onnx(path).metadata_props}
        return json.loads(props[ONNX_KEY]) if ONNX_KEY in props else None
    if fmt == Format.TFLITE:
        from deploykit.formats import ZIP_ERRORS, read_member

        try:
            with zipfile.ZipFile(path) as archive:
                if CONTRACT_FILE not in archive.namelist():
                    return None
                return json.loads(read_member(archive, CONTRACT_FILE))
        except ZIP_ERRORS as exc:
            raise ModelLoadError(f"{path}: its packed metadata is damaged ({type(exc).__name__})",
                                 "re-package the model") from None
    if fmt == Format.ORT:        # ONNX Runtime Mobile keeps an ONNX model's metadata_props in the .ort itself
        from deploykit.ort_metadata import read_metadata

        with open(path, "rb") as handle:
            text = read_metadata(handle.read()).get(ONNX_KEY)
        return json.loads(text) if text is not None else None
    return None


def packed_contract(path: str) -> Optional[dict]:
    """The contract a .tflite carries among its associated files (None when it carries none, or a damaged one).
    zipfile reads the archive from the file's end: the model itself is not read."""
    from deploykit.formats import ZIP_ERRORS, read_member
    from deploykit.errors import ModelLoadError

    try:
        with zipfile.ZipFile(path) as archive:
            if CONTRACT_FILE not in archive.namelist():
                return None
            return json.loads(read_member(archive, CONTRACT_FILE))
    except (*ZIP_ERRORS, ModelLoadError, RecursionError):
        return None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value or "")


def _metadata_flatbuffer(contract: dict, with_labels: bool, name: str, description: str) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    inputs = [_tensor(builder, t, with_labels) for t in contract["inputs"]]
    outputs = [_tensor(builder, t, with_labels) for t in contract["outputs"]]
    subgraph = _table(builder, _SUBGRAPH, {"name": builder.CreateString("main"),
                                           "input_tensor_metadata": _offsets(builder, inputs),
                                           "output_tensor_metadata": _offsets(builder, outputs)})
    contract_file = _file(builder, CONTRACT_FILE, "the deploykit model contract (deploykit.contract v1)", _DESCRIPTIONS)
    fields = {"name": builder.CreateString(name), "description": builder.CreateString(description),
              "version": builder.CreateString(f"deploykit.contract v{contract['version']}"),
              "subgraph_metadata": _offsets(builder, [subgraph]), "author": builder.CreateString("deploykit"),
              "associated_files": _offsets(builder, [contract_file]),
              "min_parser_version": builder.CreateString(MIN_PARSER_VERSION)}
    builder.Finish(_table(builder, _MODEL, fields), file_identifier=b"M001")
    return bytes(builder.Output())


def _tensor(builder, tensor: dict, with_labels: bool) -> int:
    """TensorMetadata: name, description, content (image or feature), normalization, stats, label file."""
    image = tensor.get("image")
    fields = {"name": builder.CreateString(tensor["name"]),
              "description": builder.CreateString(_description(tensor))}
    if image and tensor.get("layout") == "NCHW":
        # Task Library reads ImageProperties as NHWC pixels; an NCHW input is described, normalised, as a feature.
        fields["content"] = _content(builder, _FEATURE_PROPERTIES, _table(builder, {}, {}))
        fields["process_units"] = _offsets(builder, [_normalization(builder, image)])
    elif image:
        size = _table(builder, {"width": 0, "height": 1}, {}, uint32={"width": image["width"],
                                                                     "height": image["height"]})
        properties = _table(builder, {"color_space": 0, "default_size": 1}, {"default_size": size},
                            int8={"color_space": _RGB if image["channels"] == 3 else _GRAYSCALE})
        fields["content"] = _content(builder, _IMAGE_PROPERTIES, properties)
        fields["process_units"] = _offsets(builder, [_normalization(builder, image)])
    else:
        fields["content"] = _content(builder, _FEATURE_PROPERTIES, _table(builder, {}, {}))
    if tensor.get("value_range") and tensor["dtype"].startswith("float"):
        low, high = tensor["value_range"]
        fields["stats"] = _table(builder, {"max": 0, "min": 1}, {"max": _floats(builder, [high]),
                                                                  "min": _floats(builder, [low])})
    if with_labels and tensor.get("labels"):
        label_file = _file(builder, tensor["labels"], "class names, one per line, in class order",
                           _TENSOR_AXIS_LABELS)
        fields["associated_files"] = _offsets(builder, [label_file])
    return _table(builder, _TENSOR, fields)


def _normalization(builder, image: dict) -> int:
    """A ProcessUnit with NormalizationOptions: TFLite Metadata normalises raw 0..255 pixels, (pixel - mean) / std;
    the contract's mean/std are on [0, 1] pixels."""
    mean = _floats(builder, [m / image["scale"] for m in image["mean"]])
    std = _floats(builder, [s / image["scale"] for s in image["std"]])
    options = _table(builder, {"mean": 0, "std": 1}, {"mean": mean, "std": std})
    return _table(builder, {"options_type": 0, "options": 1}, {"options": options},
                  uint8={"options_type": _NORMALIZATION_OPTIONS})


def _description(tensor: dict) -> str:
    image = tensor.get("image")
    if image:
        return (f"{image['width']}x{image['height']} {image['color_order']} image, resized by {image['resize']}, "
                f"{tensor.get('layout') or ''} layout; values (pixels/255 - mean) / std with mean {image['mean']}, "
                f"std {image['std']}").replace("  ", " ")
    if tensor.get("meaning") == "class_scores":
        return f"class scores; apply {tensor['postprocess']} then top-{tensor['top_k']}"
    return tensor.get("meaning", "input tensor")


def _content(builder, kind: int, properties: int) -> int:
    return _table(builder, {"content_properties_type": 0, "content_properties": 1}, {"content_properties": properties},
                  uint8={"content_properties_type": kind})


def _file(builder, name: str, description: str, kind: int) -> int:
    return _table(builder, _FILE, {"name": builder.CreateString(name), "description": builder.CreateString(description)},
                  int8={"type": kind})


def _floats(builder, values: list) -> int:
    builder.StartVector(4, len(values), 4)
    for value in reversed(values):
        builder.PrependFloat32(float(value))
    return builder.EndVector()


def _offsets(builder, offsets: list) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _table(builder, slots: dict, offsets: dict, int8: dict = None, uint8: dict = None, uint32: dict = None) -> int:
    """One table: ``offsets`` are children built before it; scalars are written with their slot's type."""
    builder.StartObject(max(slots.values(), default=-1) + 1)
    for field, offset in offsets.items():
        builder.PrependUOffsetTRelativeSlot(slots[field], offset, 0)
    for field, value in (uint32 or {}).items():
        builder.PrependUint32Slot(slots[field], int(value), 0)
    for field, value in (int8 or {}).items():
        builder.PrependInt8Slot(slots[field], int(value), 0)
    for field, value in (uint8 or {}).items():
        builder.PrependUint8Slot(slots[field], int(value), 0)
    return builder.EndObject()


def pin_input_shapes(model_bytes: bytes, shapes: dict) -> bytes:
    """``model_bytes`` with dynamic input dims (-1 in shape_signature) fixed: to ``shapes[name]`` (signature
    or tensor names) where given, else to the placeholder the file stores (1). For runtimes that cannot
    resize inputs (LiteRT.js): every op recomputes its output shapes from its inputs when tensors are
    allocated, so only the inputs change."""
    import numpy as np
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    names = {index: _text(graph.tensors[index].name) for index in graph.inputs}
    for signature in model.signatureDefs or []:
        names.update({entry.tensorIndex: _text(entry.name) for entry in signature.inputs or []})
    for index in graph.inputs:
        tensor = graph.tensors[index]
        if tensor.shapeSignature is None or (np.asarray(tensor.shapeSignature) >= 0).all():
            continue
        wanted = shapes.get(names[index])
        fixed = list(wanted) if wanted is not None else [int(d) if s < 0 else int(s) for d, s in
                                                           zip(tensor.shape, tensor.shapeSignature)]
        tensor.shape = np.asarray(fixed, np.int32)
        tensor.shapeSignature = np.asarray(fixed, np.int32)
    import flatbuffers

    builder = flatbuffers.Builder(len(model_bytes) + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def custom_ops(model_bytes: bytes) -> list:
    """Names of the custom (non-builtin) ops a .tflite file uses: a runtime without their kernels cannot run it."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    custom = schema.BuiltinOperator.CUSTOM
    return sorted({_text(code.customCode) for code in model.operatorCodes or []
                   if max(code.builtinCode or 0, code.deprecatedBuiltinCode or 0) == custom})
