"""Tensor and model signatures, independent of any framework."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
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
    """

    name: str
    shape: tuple
    dtype: str = "float32"
    layout: Optional[str] = None
    value_range: Optional[tuple] = None
    fixed: bool = False

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
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TensorSpec":
        rng = data.get("value_range")
        return cls(
            name=data["name"], shape=tuple(data["shape"]), dtype=data.get("dtype", "float32"),
            layout=data.get("layout"), value_range=tuple(rng) if rng else None, fixed=bool(data.get("fixed")),
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


def parse_input_arg(text: str) -> TensorSpec:
    """Parse ``name:1x3x224x224[:float32[:low..high]]`` or ``name:DIMS:int64=VALUE`` (a fixed integer input) into
    a TensorSpec.

    Without a dtype the spec's dtype is "" (keep the model's, see merge_user_specs).
    Raises ValueError with a message that shows the expected form.
    """
    form = ("expected name:DIMS[:DTYPE[:LOW..HIGH]] or name:DIMS:DTYPE=VALUE, e.g. x:1x3x224x224:float32, "
            "ids:1x16:int64:0..1000 or sr::int64=16000")
    parts = text.split(":")
    if len(parts) == 3 and "=" in parts[2]:          # NAME:DIMS:DTYPE=VALUE, a fixed input
        parts = parts[:2] + [parts[2].split("=", 1)[0], "=" + parts[2].split("=", 1)[1]]
    if len(parts) < 2 or len(parts) > 4 or not parts[0]:
        raise ValueError(f"bad --input {text!r}: {form}")
    name, dims = parts[0], parts[1].lower()
    if dims in ("", "scalar"):
        shape: tuple = ()
    elif _SHAPE_RE.match(dims):
        shape = tuple(int(d) for d in dims.split("x"))
    else:
        raise ValueError(f"bad shape {parts[1]!r} in --input {text!r}: {form}")
    dtype = normalize_dtype(parts[2]) if len(parts) >= 3 and parts[2] else ""   # "": the model's own
    value_range = None
    if len(parts) == 4 and parts[3].startswith("="):
        if not re.fullmatch(r"=-?\d+", parts[3]) or "int" not in (dtype or "int"):
            raise ValueError(f"bad fixed value {parts[3]!r} in --input {text!r}: an integer input only: {form}")
        value = int(parts[3][1:])
        return TensorSpec(name=name, shape=shape, dtype=dtype, value_range=(value, value + 1), fixed=True)
    if len(parts) == 4:
        match = _RANGE_RE.match(parts[3])
        if not match or int(match.group(1)) >= int(match.group(2)):
            raise ValueError(f"bad value range {parts[3]!r} in --input {text!r}: {form}")
        value_range = (int(match.group(1)), int(match.group(2)))
    return TensorSpec(name=name, shape=shape, dtype=dtype, value_range=value_range)


def merge_user_specs(inputs: "list | tuple", user_specs: tuple) -> list:
    """The one rule for ``--input`` against a model's own signature, for every source format.

    A user spec replaces the shape (and value range) of the same-named input; its dtype wins
    when the user gave one, else the model's is kept; the model's layout label is kept. A name
    the model does not have is an error, whatever the format.
    """
    from deploykit.errors import UsageError

    by_name = {s.name: s for s in user_specs}
    unknown = [name for name in by_name if name not in {i.name for i in inputs}]
    if unknown:
        raise UsageError(f"--input names {', '.join(sorted(unknown))} but the model's inputs are "
                         f"{', '.join(i.name for i in inputs) or '(none)'}", "name each --input after a model input")
    merged = []
    for tensor in inputs:
        user = by_name.get(tensor.name)
        if user is None:
            merged.append(tensor)
            continue
        merged.append(TensorSpec(tensor.name, user.shape, user.dtype or tensor.dtype or "float32", tensor.layout,
                                 user.value_range or tensor.value_range, user.fixed))
    return merged
