"""The contract inside an ORT-format model: the ``metadata_props`` of ONNX Runtime Mobile's ``.ort``.

The ORT schema (ort.fbs) keeps an ONNX model's ``metadata_props`` in its Model table, and ONNX Runtime reads them in
every build, the minimal one included (``Model::LoadFromOrtFormat``), where an app gets them from the session's
model metadata (``get_modelmeta().custom_metadata_map``; Java's ``OrtSession.getMetadata()``). So a bundle's
``model.ort`` carries the contract as ``model.onnx`` does. Nothing in ONNX Runtime edits an .ort file, and a
FlatBuffer cannot be merged into the way a protobuf can, so ``with_metadata`` writes the few tables that change in
front of the untouched bytes of the original:

    [root → new InferenceSession][new Model][metadata_props][padding to 64] [the original file, byte for byte]

FlatBuffer references (uoffsets) only point forward, which is why the new tables come first: every one of their
references to the original's graph, strings and kernel tables points into the bytes that follow, whose own
references are relative and so unchanged. The original's root tables stay as dead bytes; the padding keeps every
alignment the original had. ONNX Runtime verifies the whole buffer when it loads it (measured: a 2-byte shift is
refused with "ORT model verification failed"), and the bundle's model is then run on its golden vectors.
"""
from __future__ import annotations

import struct

from deploykit.errors import ModelLoadError

# Field numbers of ort.fbs (the order of the generated bindings' vtable offsets 4, 6, 8, ...).
_SESSION_FIELDS = 4                     # ort_version, model, session_state (deprecated), kernel_type_str_resolver
_SESSION_MODEL = 1
_MODEL_FIELDS = 10                      # ir_version ... metadata_props
_MODEL_INT64 = (0, 5)                   # ir_version, model_version: the Model table's only scalars
_MODEL_METADATA = 9
_ALIGN = 64                             # the original's bytes start on a 64-byte boundary: any alignment it had stays
_REMEDY = "convert it again with deploykit export --to ort"


def read_metadata(data: bytes) -> dict:
    """{key: value} of the ORT-format model ``data``'s metadata_props ({} when it has none). Raises ModelLoadError
    for bytes that are no ORT-format model this reader can follow (every offset is checked against the buffer)."""
    reader = _Reader(data)
    session = reader.fields(reader.ref(0), _SESSION_FIELDS)
    model = reader.fields(reader.model(session[_SESSION_MODEL]), _MODEL_FIELDS)
    if model[_MODEL_METADATA] is None:
        return {}
    vector = reader.ref(model[_MODEL_METADATA])
    found = {}
    for index in range(reader.count(vector)):
        entry = reader.fields(reader.ref(vector + 4 + 4 * index), 2)
        key, value = (reader.string(reader.ref(at)) if at is not None else "" for at in entry)
        found[key] = value
    return found


def with_metadata(data: bytes, props: dict) -> bytes:
    """``data`` (an ORT-format model) with ``props`` in its metadata_props: entries of other keys kept, these
    written over. The graph, its weights and any saved runtime optimisations are the original's bytes."""
    reader = _Reader(data)
    session = reader.fields(reader.ref(0), _SESSION_FIELDS)
    model = reader.fields(reader.model(session[_SESSION_MODEL]), _MODEL_FIELDS)
    merged = {**{k: v for k, v in read_metadata(data).items() if k not in props}, **props}
    out = _Writer(data[4:8])          # the file identifier, "ORTM"
    out.table("session", [("ref", "model") if i == _SESSION_MODEL else _old(reader, at)
                          for i, at in enumerate(session)])
    out.table("model", [("int64", data[at:at + 8]) if i in _MODEL_INT64 and at is not None
                        else ("ref", "metadata") if i == _MODEL_METADATA
                        else None if i in _MODEL_INT64 else _old(reader, at) for i, at in enumerate(model)])
    out.vector("metadata", [f"entry{i}" for i in range(len(merged))])
    for i in range(len(merged)):
        out.table(f"entry{i}", [("ref", f"key{i}"), ("ref", f"value{i}")])
    for i, (key, value) in enumerate(merged.items()):
        out.string(f"key{i}", key)
        out.string(f"value{i}", value)
    return out.finish(data)


def _old(reader: "_Reader", at) -> "tuple | None":
    """A reference field of the original, as a reference to the same object in the original's bytes."""
    return None if at is None else ("old", reader.ref(at))


class _Reader:
    """Bounds-checked reads of a FlatBuffer: any offset out of the buffer is a ModelLoadError, never an IndexError
    or a read of the wrong bytes."""

    def __init__(self, data: bytes):
        self.data = data
        if len(data) < 8 or data[4:8] != b"ORTM":
            raise ModelLoadError("the model is not an ORT-format file (no ORTM identifier)", _REMEDY)

    def _unpack(self, kind: str, at: int) -> int:
        if not 0 <= at <= len(self.data) - struct.calcsize(kind):
            raise ModelLoadError("the ORT-format model is damaged (an offset leaves the file)", _REMEDY)
        return struct.unpack_from(kind, self.data, at)[0]

    def ref(self, at: int) -> int:
        """Where the reference (a uoffset, relative to itself) at ``at`` points."""
        return at + self._unpack("<I", at)

    def model(self, at) -> int:
        """The Model table the InferenceSession's field at ``at`` refers to."""
        if at is None:
            raise ModelLoadError("the ORT-format file holds no model", _REMEDY)
        return self.ref(at)

    def fields(self, table: int, known: int) -> list:
        """The position of each of the table's first ``known`` fields (None where absent). A table with fields
        past those is from a newer schema, whose kinds (reference or scalar) this module cannot know."""
        vtable = table - self._unpack("<i", table)
        count = (self._unpack("<H", vtable) - 4) // 2
        offsets = [self._unpack("<H", vtable + 4 + 2 * i) for i in range(max(count, 0))]
        if any(offsets[known:]):
            raise ModelLoadError("the ORT-format model has fields this deploykit does not know (a newer ONNX "
                                 "Runtime wrote it)", "package it with the onnxruntime deploykit pins, or convert "
                                 "it again with deploykit export --to ort")
        return [table + o if o else None for o in (offsets + [0] * known)[:known]]

    def count(self, vector: int) -> int:
        """The length of the vector at ``vector``, once its last element is known to lie inside the buffer."""
        number = self._unpack("<I", vector)
        if number:
            self._unpack("<I", vector + 4 * number)
        return number

    def string(self, at: int) -> str:
        size = self._unpack("<I", at)
        if at + 4 + size > len(self.data):
            raise ModelLoadError("the ORT-format model is damaged (a string leaves the file)", _REMEDY)
        try:
            return bytes(self.data[at + 4:at + 4 + size]).decode("utf-8")
        except UnicodeDecodeError:
            raise ModelLoadError("the ORT-format model holds metadata that is not UTF-8", _REMEDY) from None


class _Writer:
    """The new front of the buffer, laid out forward; references are patched once every target has a place."""

    def __init__(self, identifier: bytes):
        self.buffer = bytearray(b"\0\0\0\0" + identifier)
        self.places: dict = {}
        self.patches = [(0, "session")]     # the root reference

    def _align(self, size: int) -> None:
        self.buffer += bytes(-len(self.buffer) % size)

    def table(self, name: str, fields: list) -> None:
        """A table of ``fields``: None (absent), ("ref", target) or ("old", position) references, or ("int64",
        8 raw bytes). Its vtable goes first; the int64s sit 8-aligned right after the table's soffset slot."""
        slots, size = {}, 8 if any(f and f[0] == "int64" for f in fields) else 4
        for i, f in enumerate(fields):
            if f and f[0] == "int64":
                slots[i], size = size, size + 8
        for i, f in enumerate(fields):
            if f and f[0] != "int64":
                slots[i], size = size, size + 4
        self._align(2)
        vtable = len(self.buffer)
        self.buffer += struct.pack(f"<HH{len(fields)}H", 4 + 2 * len(fields), size,
                                   *(slots.get(i, 0) for i in range(len(fields))))
        self._align(8)
        start = self.places[name] = len(self.buffer)
        self.buffer += bytes(size)
        struct.pack_into("<i", self.buffer, start, start - vtable)
        for i, f in enumerate(fields):
            if f and f[0] == "int64":
                self.buffer[start + slots[i]:start + slots[i] + 8] = f[1]
            elif f:
                self.patches.append((start + slots[i], f if f[0] == "old" else f[1]))

    def vector(self, name: str, targets: list) -> None:
        self._align(4)
        self.places[name] = len(self.buffer)
        self.buffer += struct.pack("<I", len(targets))
        for target in targets:
            self.patches.append((len(self.buffer), target))
            self.buffer += bytes(4)

    def string(self, name: str, text: str) -> None:
        raw = text.encode("utf-8")
        self._align(4)
        self.places[name] = len(self.buffer)
        self.buffer += struct.pack("<I", len(raw)) + raw + b"\0"

    def finish(self, original: bytes) -> bytes:
        self._align(_ALIGN)
        shift = len(self.buffer)
        for at, target in self.patches:
            where = shift + target[1] if isinstance(target, tuple) else self.places[target]
            struct.pack_into("<I", self.buffer, at, where - at)      # always forward: targets follow their slots
        return bytes(self.buffer) + bytes(original)
