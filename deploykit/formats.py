"""Detect a model's format from its content, never from its file extension alone."""
from __future__ import annotations

import enum
import json
import os
import pickletools
import re
import zipfile
import zlib
from pathlib import Path

from deploykit.errors import ModelLoadError, UnsupportedModelError


class Format(str, enum.Enum):
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "exported_program"
    STATE_DICT = "state_dict"
    TORCH_PICKLE = "torch_pickle"          # torch.save(model): arbitrary code on load
    PYTHON_FACTORY = "python_factory"      # "package.module:factory" (+ optional weights)
    ONNX = "onnx"
    TFLITE = "tflite"
    KERAS = "keras"
    KERAS_H5 = "keras_h5"
    SAVED_MODEL = "saved_model"
    EXECUTORCH = "executorch"              # a .pte program (flatbuffer "ET12")
    ORT = "ort"                            # ONNX Runtime Mobile's ORT format (.ort, flatbuffer "ORTM")
    COREAI = "coreai"                      # an Apple Core AI asset: an .aimodel folder (metadata.json + *.mlirb)
    COREML = "coreml"                      # a Core ML package: an .mlpackage folder (Manifest.json + Data/)
    HF_CAUSAL_LM = "hf_causal_lm"          # a Hugging Face causal LM folder (config.json + safetensors + tokenizer)
    GGUF = "gguf"                          # a GGUF file (llama.cpp's format; weights dequantized on load)

    @property
    def framework(self) -> str:
        if self in TORCH_FORMATS:
            return "torch"
        if self in (Format.KERAS, Format.KERAS_H5, Format.SAVED_MODEL):
            return "tensorflow"
        return self.value


TORCH_FORMATS = frozenset({Format.TORCHSCRIPT, Format.EXPORTED_PROGRAM, Format.STATE_DICT,
                           Format.TORCH_PICKLE, Format.PYTHON_FACTORY})

# Causal language models: routed, verified and benchmarked by deploykit.llm (prefill/decode with a KV cache).
LLM_FORMATS = frozenset({Format.HF_CAUSAL_LM, Format.GGUF})

# Formats whose artifact is a folder, not a file (written, replaced and hashed as a tree).
DIRECTORY_FORMATS = frozenset({Format.SAVED_MODEL, Format.COREAI, Format.COREML})

_ZIP_MAGIC = b"PK\x03\x04"
# What zipfile raises on a damaged or crafted archive (RuntimeError: an encrypted member; NotImplementedError:
# flag bits or a compression it does not support; zlib.error: a broken deflate stream) — found by fuzzing.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, RuntimeError, EOFError, OSError,
              ValueError, KeyError, zlib.error)
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
# An ExecuTorch program is a flatbuffer whose file identifier (bytes 4..8) is "ET" and a schema version ("ET12").
_PTE_IDENTIFIER = re.compile(rb"^ET\d\d$")
# ONNX Runtime's ORT format is a flatbuffer whose file identifier is "ORTM" (ort.fbs: file_identifier "ORTM").
_ORT_IDENTIFIER = b"ORTM"
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
# onnx.ModelProto's fields (onnx.proto): field number -> protobuf wire type (0 varint, 2 length-delimited). A
# first byte alone is no proof — "2 apples", "Bonjour", "(x)" start with one of these tags — so detection walks
# the fields (see _onnx_fields).
_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2, 26: 2}
_MODEL_STRINGS = {2, 3, 4, 6}           # producer_name, producer_version, domain, doc_string: UTF-8
# ONNX's IR version is 11 in onnx 1.23 and grows by one every year or two; 255 leaves decades of room and
# still refuses a random varint.
_MAX_IR_VERSION = 255
# Fields walked (each a seek and a read of a few bytes: a 2 GB file costs the same) and string bytes checked.
_ONNX_FIELDS_WALKED = 16
_STRING_BYTES_CHECKED = 4096
# Globals a plain state_dict pickle refers to; anything else means a pickled object.
_STATE_DICT_GLOBALS = re.compile(
    r"^(collections (OrderedDict)|torch\._utils _rebuild_\w+|torch \w*Storage|torch (Size|device|dtype"
    r"|float\d*|int\d*|bfloat16|bool)|builtins? (set|dict|list|tuple|int|float|str)|_codecs encode"
    r"|numpy\S* \w+)$"
)


def is_factory_reference(text: str) -> bool:
    """True for ``package.module:factory`` references that are not existing paths."""
    return bool(_FACTORY_RE.match(text)) and not os.path.exists(text)


def detect(path: "str | os.PathLike") -> Format:
    """Return the Format of the model at ``path`` by reading its bytes.

    Raises ModelLoadError for missing, empty, truncated or unknown files.
    """
    text = str(path)
    if is_factory_reference(text):
        return Format.PYTHON_FACTORY
    p = Path(text)
    if not p.exists():
        raise ModelLoadError(f"{text}: no such file or directory",
                             "check the path, or give a Python factory as package.module:function")
    if p.is_dir():
        return _detect_dir(p)
    if not p.is_file():
        raise ModelLoadError(f"{text} is not a regular file (a FIFO, device or socket)", "give a model file")
    size = p.stat().st_size
    if size == 0:
        raise ModelLoadError(f"{text}: the file is empty", "re-export or re-download the model")
    try:
        with open(p, "rb") as handle:
            head = handle.read(16)
    except OSError as exc:
        raise ModelLoadError(f"{text}: cannot read the file ({exc.strerror or exc})",
                             "check its permissions, or copy it somewhere readable") from None
    if head.startswith(_ZIP_MAGIC):
        return _detect_zip(p)
    if head.startswith(_HDF5_MAGIC):
        return Format.KERAS_H5
    if head.startswith(b"GGUF"):
        return Format.GGUF
    if len(head) >= 8 and head[4:8] == b"TFL3":
        return Format.TFLITE
    if len(head) >= 8 and _PTE_IDENTIFIER.match(head[4:8]):
        return Format.EXECUTORCH
    if len(head) >= 8 and head[4:8] == _ORT_IDENTIFIER:
        return Format.ORT
    if head[:1] == b"\x80":
        raise UnsupportedModelError(
            f"{text}: legacy (pre-1.6, non-zip) torch.save file",
            "load it with the torch that wrote it and re-save with torch.save (zip format) or torch.jit.save")
    if _onnx_fields(p, size):
        return Format.ONNX
    raise ModelLoadError(
        f"{text}: unknown model format (first bytes {head[:8].hex()})",
        "give a TorchScript (.pt), torch.export (.pt2), state_dict, ONNX, ORT (.ort), Keras, SavedModel, TFLite or "
        "ExecuTorch (.pte) file")


def _onnx_fields(p: Path, size: int) -> bool:
    """Whether the file is a serialized onnx.ModelProto: walking its fields from the start (at most
    _ONNX_FIELDS_WALKED), each is a ModelProto field of the right wire type, whole, with a UTF-8 string where one
    is due, until ir_version comes with a plausible value.

    Every protobuf serializer writes fields in number order, so a real model starts with ir_version (ONNX
    Runtime and onnx's checker refuse a model without one). A file that starts with it is taken for ONNX even if
    it is cut inside that field or damaged after it: the loader then names it truncated or corrupt, a better
    message than "unknown format". Text never starts with 0x08 (a backspace); "2 apples", "Bonjour" or "(x)"
    start with other ModelProto tags and fail the walk.
    """
    pos = 0
    with open(p, "rb") as handle:
        for _ in range(_ONNX_FIELDS_WALKED):
            tag, pos = _varint(handle, pos)
            if tag is None or _MODEL_FIELDS.get(tag >> 3) != tag & 7:
                return False
            value, pos = _varint(handle, pos)
            if tag == 0x08:                                 # ir_version
                return pos == -1 or value is not None and 1 <= value <= _MAX_IR_VERSION
            if value is None:
                return False
            if tag & 7 == 2:
                if value > size - pos or tag >> 3 in _MODEL_STRINGS and not _utf8_prefix(handle, pos, value):
                    return False
                pos += value
            if pos >= size:
                return False                                # whole fields, but no ir_version
    return False


def _varint(handle, pos: int) -> tuple:
    """(value, next position) of the protobuf varint at ``pos``; (None, -1) if the file ends inside it, (None, 0)
    if it is malformed (over 10 bytes)."""
    handle.seek(pos)
    data = handle.read(10)
    value = 0
    for index, byte in enumerate(data):
        value |= (byte & 0x7F) << (7 * index)
        if not byte & 0x80:
            return value, pos + index + 1
    return None, (-1 if len(data) < 10 else 0)


def _utf8_prefix(handle, pos: int, length: int) -> bool:
    """Whether the first bytes of a string field decode as UTF-8 (a character cut at the end is allowed)."""
    import codecs

    handle.seek(pos)
    try:
        codecs.getincrementaldecoder("utf-8")().decode(handle.read(min(length, _STRING_BYTES_CHECKED)), final=False)
    except UnicodeDecodeError:
        return False
    return True


def _detect_dir(p: Path) -> Format:
    if (p / "saved_model.pb").exists() or (p / "saved_model.pbtxt").exists():
        return Format.SAVED_MODEL
    # A Core AI asset: coreai-core's metadata.json beside one bytecode program per entry point (main.mlirb).
    if (p / "metadata.json").is_file() and any(f.is_file() for f in p.glob("*.mlirb")):
        return Format.COREAI
    # A Core ML package: its Manifest.json names the spec under Data/com.apple.CoreML/.
    if (p / "Manifest.json").is_file() and (p / "Data" / "com.apple.CoreML").is_dir():
        return Format.COREML
    # A Hugging Face model folder: transformers' config.json beside safetensors weights.
    if (p / "config.json").is_file() and any(f.is_file() for f in p.glob("*.safetensors")):
        return Format.HF_CAUSAL_LM
    raise ModelLoadError(f"{p}: a directory that holds no known model (no saved_model.pb, no Core AI "
                         "metadata.json + .mlirb, no Core ML Manifest.json, no config.json + safetensors)",
                         "give a model file, a TensorFlow SavedModel, a Core AI .aimodel, a Core ML .mlpackage or a "
                         "Hugging Face causal LM folder")


MAX_MANIFEST_BYTES = 1 << 20        # coremltools writes a few hundred bytes


def coreml_manifest_paths(package: "str | os.PathLike") -> list:
    """The files a Core ML package's Manifest.json names, relative to the package (``Data/<path>``), the root spec
    first. Refuses (ModelLoadError) a manifest that is a link, too large or not JSON coremltools writes, and any path
    that leaves the package's Data folder (absolute, '..', or through a link): coremltools follows whatever path
    the manifest gives — a crafted package made it read another file on the machine as its spec."""
    package = Path(package)
    manifest = package / "Manifest.json"
    try:
        if manifest.is_symlink() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
            raise ValueError("a link, or larger than any manifest coremltools writes")
        info = json.loads(manifest.read_text(encoding="utf-8"))
        entries = info["itemInfoEntries"]
        root = entries[info["rootModelIdentifier"]]["path"]
        names = [root] + [entry["path"] for key, entry in entries.items() if key != info["rootModelIdentifier"]]
    except (OSError, ValueError, UnicodeDecodeError, RecursionError, KeyError, TypeError, AttributeError) as exc:
        why = f"no {exc}" if isinstance(exc, KeyError) else str(exc)[:120]
        raise ModelLoadError(f"{package}: its Manifest.json is not one coremltools writes ({why})",
                             "export the package again") from None
    data = (package / "Data").resolve()
    for name in names:
        parts = name.split("/") if isinstance(name, str) else [""]
        inside = all(part not in ("", ".", "..") for part in parts) and "\\" not in name and "\0" not in name \
            and not Path(name).is_absolute() and data in (package / "Data" / name).resolve().parents
        if not inside:
            raise ModelLoadError(f"{package}: its Manifest.json names {name!r:.100}, outside the package's Data "
                                 "folder: refused, never read", "export the package again")
    return [f"Data/{name}" for name in names]


def _detect_zip(p: Path) -> Format:
    try:
        with zipfile.ZipFile(p) as archive:
            names = archive.namelist()
            if any(n.endswith("/archive_format") or n == "archive_format" for n in names):
                return Format.EXPORTED_PROGRAM
            if any("/code/" in n for n in names) and any(n.endswith("constants.pkl") for n in names):
                return Format.TORCHSCRIPT
            if "config.json" in names and any(n.startswith("model.weights") for n in names):
                return Format.KERAS
            pickles = [n for n in names if n.endswith("data.pkl")]
            if pickles:
                return _classify_pickle(read_member(archive, pickles[0]))
    except ZIP_ERRORS as exc:
        raise ModelLoadError(f"{p}: truncated or corrupt archive ({exc})",
                             "the file was cut short or damaged: save or copy it again") from None
    raise ModelLoadError(f"{p}: a zip archive that holds no known model",
                         "give a TorchScript, torch.export, state_dict or Keras .keras file")


# Members read whole to classify an archive (pickles, JSON configs) are kilobytes in a real model; a larger
# one is a decompression bomb.
MAX_MEMBER_BYTES = 64 * 1024**2


def read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    """One archive member, refused when it inflates to more than MAX_MEMBER_BYTES (checked before reading)."""
    info = archive.getinfo(name)
    size = info.file_size
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ModelLoadError(f"{archive.filename}: the member {name} uses compression method {info.compress_type}; "
                             "model archives are stored or deflated", "give the model as its exporter wrote it")
    if size > MAX_MEMBER_BYTES:
        raise ModelLoadError(f"{archive.filename}: the member {name} inflates to {size:,} bytes (the limit is "
                             f"{MAX_MEMBER_BYTES:,}): a decompression bomb, or no model deploykit reads",
                             "give the model as its exporter wrote it")
    with archive.open(info) as member:      # the declared size can lie: never inflate past the limit
        data = member.read(MAX_MEMBER_BYTES + 1)
    if len(data) > MAX_MEMBER_BYTES:
        raise ModelLoadError(f"{archive.filename}: the member {name} inflates past {MAX_MEMBER_BYTES:,} bytes: a "
                             "decompression bomb, or no model deploykit reads", "give the model as its exporter wrote it")
    return data


def _classify_pickle(payload: bytes) -> Format:
    """State dict if the pickle only names tensor-rebuilding globals, else a pickled object."""
    try:
        for opcode, arg, _pos in pickletools.genops(payload):
            if opcode.name == "GLOBAL" and not _STATE_DICT_GLOBALS.match(str(arg)):
                return Format.TORCH_PICKLE
            if opcode.name == "STACK_GLOBAL":
                return Format.TORCH_PICKLE
    except Exception:  # noqa: BLE001 - a broken pickle is reported as corrupt by the loader
        return Format.STATE_DICT
    return Format.STATE_DICT


def pickled_globals(path: "str | os.PathLike") -> list:
    """The module.class names a torch.save pickle refers to (for the --trust-pickle message)."""
    with zipfile.ZipFile(path) as archive:
        payload = read_member(archive, next(n for n in archive.namelist() if n.endswith("data.pkl")))
    found = []
    try:
        for opcode, arg, _pos in pickletools.genops(payload):
            if opcode.name == "GLOBAL" and not _STATE_DICT_GLOBALS.match(str(arg)):
                found.append(str(arg).replace(" ", "."))
    except Exception:  # noqa: BLE001 - a pickle broken after its first globals: name those (found by fuzzing)
        pass
    return sorted(set(found))


def pt2_pickled_parts(path: "str | os.PathLike") -> list:
    """The parts of a torch.export archive that torch.export.load would unpickle with code execution allowed.

    torch.export.load calls ``torch.load(weights_only=False)`` on weights and constants whose payload config
    says ``use_pickle``, ``pickle.loads`` on opaque-object constants, torch's own unpickler on custom objects,
    and retries sample inputs with ``weights_only=False`` when the safe load fails. Plain archives (what
    ``torch.export.save`` writes for ordinary tensors) have none of these. Read from the zip directly: nothing
    is unpickled here.
    """
    found = []
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if name.endswith("_config.json") and "/data/" in name:
                    found += _pickled_payloads(name, read_member(archive, name))
                elif "/data/sample_inputs/" in name:
                    found += _pickled_sample_inputs(name, read_member(archive, name))
    except ZIP_ERRORS as exc:
        raise ModelLoadError(f"{path}: truncated or corrupt archive ({exc})",
                             "the file was cut short or damaged: save or copy it again") from None
    return found


def _pickled_payloads(name: str, payload: bytes) -> list:
    """Entries of a weights/constants payload config that torch.export.load would unpickle."""
    import json

    try:
        config = json.loads(payload).get("config", {})
        entries = [(str(fqn), meta or {}) for fqn, meta in config.items()]
        flagged = [f"{fqn} ({meta.get('path_name', '')})" for fqn, meta in entries
                   if meta.get("use_pickle") or str(meta.get("path_name", "")).startswith(("custom_obj_", "opaque_obj_"))]
    except (ValueError, AttributeError, TypeError, RecursionError):
        return [f"{name} (unreadable payload config)"]   # not what torch.export.save writes: refused unread
    return flagged


def _pickled_sample_inputs(name: str, payload: bytes) -> list:
    """Sample inputs are a torch.save zip of tensors; anything else (a raw pickle, named classes) is refused."""
    import io

    if not payload.startswith(_ZIP_MAGIC):
        return [f"{name} (a raw pickle)"]
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as inner:
            pickles = [n for n in inner.namelist() if n.endswith("data.pkl")]
            if pickles and _classify_pickle(read_member(inner, pickles[0])) == Format.STATE_DICT:
                return []
    except ZIP_ERRORS:
        pass
    return [f"{name} (sample inputs that name Python classes)"]


# What `export --to ort` writes beside a .ort: the operators and types a reduced ONNX Runtime build must include, in
# the format of ONNX Runtime's own tool, under the name that tool gives it (<model stem>.<this suffix>).
ORT_CONFIG_SUFFIX = ".required_operators_and_types.config"


def ort_operators_config(artifact: "str | os.PathLike") -> Path:
    """The required-operators config beside the ORT-format file ``artifact`` (which may not exist)."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + ORT_CONFIG_SUFFIX)
