"""Tensor and model signatures, independent of any framework."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from typing import Optional, Union

Dim = Union[int, str]  # an int, or a symbol name for a dynamic dim ("batch", "?")

FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")
INT_DTYPES = ("int8", "uint8", "int16", "int32", "int64")
KNOWN_DTYPES = FLOAT_DTYPES + INT_DTYPES + ("bool",)

_DTYPE_ALIASES = {
    "float": "float32", "fp32": "float32", "f32": "float32", "half": "float16", "fp16": "float16",
    "double": "float64", "int": "int64", "long": "int64", "i64": "int64", "i32": "int32",
}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: name, shape (ints or symbols), numpy dtype name, layout.

    ``value_range`` is a half-open [low, high) range for integer inputs such as
    token ids, so that random inputs stay valid for an embedding table. ``fixed``: the user said the input only
    ever takes one value (``--input sr::int64=16000``), so a converter may specialise the graph to it and drop it.
    ``given``: the ``--input`` text when it reads more than one way until the model's input names are known
    (``x:0:`` is x:0 as a scalar, or x with shape [0]); merge_user_specs reads it again against them.
    """

    name: str
    shape: tuple
    dtype: str = "float32"
    layout: Optional[str] = None
    value_range: Optional[tuple] = None
    fixed: bool = False
    given: str = field(default="", compare=False)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) and d >= 0 for d in self.shape)

    def describe(self) -> str:
        dims = "x".join(str(d) for d in self.shape) or "scalar"
        text = f"{self.name}: {dims} {self.dtype}"
        if self.fixed and self.value_range:
            text += f" = {self.value_range[0]}"
        elif self.value_range:
            text += f" [{self.value_range[0]}..{self.value_range[1]})"
        return text

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        data["value_range"] = list(self.value_range) if self.value_range else None
        if not self.given:
            del data["given"]      # a signature's tensors never carry it: only a user's ambiguous --input
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        rng = data.get("value_range")
        return cls(
            name=data["name"], shape=tuple(data["shape"]), dtype=data.get("dtype", "float32"),
            layout=data.get("layout"), value_range=tuple(rng) if rng else None, fixed=bool(data.get("fixed")),
            given=data.get("given") or "",
        )


@dataclass(frozen=True)
class ModelSpec:
    """The signature of a model: ordered inputs and outputs."""

    inputs: tuple = field(default_factory=tuple)
    outputs: tuple = field(default_factory=tuple)

    @property
    def input_names(self) -> list:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list:
        return [t.name for t in self.outputs]

    @property
    def fixed_inputs(self) -> dict:
        """{name: value} for the inputs the user fixed (``--input sr::int64=16000``): a converter may specialise
        the graph to the value and drop the input; the check then does not feed it."""
        return {t.name: t.value_range[0] for t in self.inputs if t.fixed and t.value_range}

    def counterparts(self, artifact_inputs: tuple) -> list:
        """This (source) spec's inputs as an artifact's inputs line up with them: by position (converters rename),
        after the fixed inputs the artifact no longer takes (specialised away) are left out."""
        names = {t.name for t in artifact_inputs}
        return [t for t in self.inputs if not (t.fixed and t.name not in names)]

    def to_dict(self) -> dict:
        return {"inputs": [t.to_dict() for t in self.inputs],
                "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: dict) -> "ModelSpec":
        return cls(tuple(TensorSpec.from_dict(t) for t in data.get("inputs", [])),
                   tuple(TensorSpec.from_dict(t) for t in data.get("outputs", [])))


def normalize_dtype(name: str) -> str:
    """Map user spellings (fp32, long, ...) to numpy dtype names; raise ValueError if unknown."""
    key = name.strip().lower()
    key = _DTYPE_ALIASES.get(key, key)
    if key not in KNOWN_DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of {', '.join(KNOWN_DTYPES)}")
    return key


_SHAPE_RE = re.compile(r"^\d+(x\d+)*$")
_RANGE_RE = re.compile(r"^(-?\d+)\.\.(-?\d+)$")
# A name that holds ':' (TensorFlow's ``serving_default_x:0``) may be bracketed: ``[name:0]:1x3``. The fields after
# it never hold ']', so the last ']:' ends the name.
_BRACKETED_RE = re.compile(r"^\[(.+)\]:([^\]]*)$")
FORM = ("expected name:DIMS[:DTYPE[:LOW..HIGH]] or name:DIMS:DTYPE=VALUE, e.g. x:1x3x224x224:float32, "
        "ids:1x16:int64:0..1000 or sr::int64=16000")
BRACKET_HINT = "a name that holds ':' may be bracketed: '[name:0]:1x3'"


def parse_input_arg(text: str, known_names: "tuple | list" = ()) -> TensorSpec:
    """Parse ``name:1x3x224x224[:float32[:low..high]]`` or ``name:DIMS:int64=VALUE`` (a fixed integer input) into
    a TensorSpec.

    The name may hold ':' (``serving_default_input_2:0:1x43844x1``): the longest of ``known_names`` (the model's
    inputs) that the text starts with, then ':', is the name; else ``[name]:...`` brackets it; else the text is
    read every way its colons allow and the one reading whose fields are valid wins. A text still read more than
    one way (``x:0:``) keeps itself in ``given`` for merge_user_specs to read again against the model's names.
    Without a dtype the spec's dtype is "" (keep the model's, see merge_user_specs).
    Raises ValueError with a message that shows the expected form.
    """
    known = sorted((n for n in known_names if n and text.startswith(n + ":")), key=len, reverse=True)
    for name in known:
        try:
            return _parse_fields(text, name, text[len(name) + 1:])
        except ValueError:
            continue
    if known:
        _parse_fields(text, known[0], text[len(known[0]) + 1:])     # raises the longest name's complaint
    bracketed = _BRACKETED_RE.match(text)
    if bracketed:
        return _parse_fields(text, bracketed.group(1), bracketed.group(2))
    return _read_every_way(text)


def _read_every_way(text: str) -> TensorSpec:
    """The reading of ``text`` whose fields are valid: the name is its first field, or its first two when the
    second is an index (TensorFlow's ``name:0``); any other name with ':' is bracketed or matched by the model's."""
    parts = text.split(":")
    if len(parts) < 2:
        raise ValueError(f"bad --input {text!r}: {FORM}")
    cuts = [1] + ([2] if len(parts) > 2 and parts[1].isdigit() else [])
    readings, complaints = [], []
    for cut in cuts:
        try:
            readings.append(_parse_fields(text, ":".join(parts[:cut]), ":".join(parts[cut:])))
        except ValueError as exc:
            complaints.append(str(exc))
    if not readings:
        # name:0:DIMS... fails as itself (its DIMS are a shape), not as "unknown dtype" of a name cut at the index
        telling = complaints[-1] if len(complaints) > 1 and _is_shape(parts[2]) else complaints[0]
        named_with_colons = any(part and _is_shape(part) for part in parts[2:])   # DIMS after a second ':'
        raise ValueError(telling + (f"; {BRACKET_HINT}" if named_with_colons else ""))
    if len(readings) > 1:
        return replace(readings[0], given=text)     # the shortest name until the model's names decide
    return readings[0]


def _is_shape(dims: str) -> bool:
    return dims.lower() in ("", "scalar") or bool(_SHAPE_RE.match(dims.lower()))


def _parse_fields(text: str, name: str, rest: str) -> TensorSpec:
    """``rest`` (DIMS[:DTYPE[:LOW..HIGH]] or DIMS:DTYPE=VALUE) of the input ``name``; ``text`` is quoted in errors."""
    fields = rest.split(":")
    if len(fields) == 2 and "=" in fields[1]:          # DIMS:DTYPE=VALUE, a fixed input
        fields = [fields[0], fields[1].split("=", 1)[0], "=" + fields[1].split("=", 1)[1]]
    if len(fields) > 3 or not name:
        raise ValueError(f"bad --input {text!r}: {FORM}")
    dims = fields[0].lower()
    if not _is_shape(dims):
        raise ValueError(f"bad shape {fields[0]!r} in --input {text!r}: {FORM}")
    shape = () if dims in ("", "scalar") else tuple(int(d) for d in dims.split("x"))
    dtype = normalize_dtype(fields[1]) if len(fields) >= 2 and fields[1] else ""   # "": the model's own
    if len(fields) == 3 and fields[2].startswith("="):
        if not re.fullmatch(r"=-?\d+", fields[2]) or "int" not in (dtype or "int"):
            raise ValueError(f"bad fixed value {fields[2]!r} in --input {text!r}: an integer input only: {FORM}")
        value = int(fields[2][1:])
        return TensorSpec(name=name, shape=shape, dtype=dtype, value_range=(value, value + 1), fixed=True)
    value_range = None
    if len(fields) == 3:
        match = _RANGE_RE.match(fields[2])
        if not match or int(match.group(1)) >= int(match.group(2)):
            raise ValueError(f"bad value range {fields[2]!r} in --input {text!r}: {FORM}")
        value_range = (int(match.group(1)), int(match.group(2)))
    return TensorSpec(name=name, shape=shape, dtype=dtype, value_range=value_range)


def merge_user_specs(inputs: "list | tuple", user_specs: tuple) -> list:
    """The one rule for ``--input`` against a model's own signature, for every source format.

    A user spec replaces the shape (and value range) of the same-named input; its dtype wins
    when the user gave one, else the model's is kept; the model's layout label is kept. A name
    the model does not have is an error, whatever the format. A spec whose text read more than one way
    (``given``) is read again here, the longest of the model's input names first.
    """
    from deploykit.errors import UsageError
    from deploykit.text import quoted

    names = [i.name for i in inputs]
    try:
        user_specs = tuple(parse_input_arg(s.given, names) if s.given else s for s in user_specs)
    except ValueError as exc:
        raise UsageError(str(exc), "fix the --input value") from None
    by_name = {s.name: s for s in user_specs}
    unknown = [name for name in by_name if name not in set(names)]
    if unknown:
        raise UsageError(f"--input names {', '.join(sorted(unknown))} but the model's inputs are "
                         f"{', '.join(quoted(n) for n in names) or '(none)'}",
                         f"name each --input after a model input ({BRACKET_HINT})")
    merged = []
    for tensor in inputs:
        user = by_name.get(tensor.name)
        if user is None:
            merged.append(tensor)
            continue
        merged.append(TensorSpec(tensor.name, user.shape, user.dtype or tensor.dtype or "float32", tensor.layout,
                                 user.value_range or tensor.value_range, user.fixed))
    return merged
