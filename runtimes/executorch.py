"""ExecuTorch: read a .pte program's signature and delegation, and run it with ExecuTorch's Python bindings.

The bindings' public entry (``executorch.runtime``) imports the whole exir compiler on the way
(10 s and 357 MB here, FIELD-NOTES: 3.9 s); the C++ extension itself needs only torch. So the
runner imports ``executorch.extension.pybindings._C`` directly (2.6 s, 227 MB) — a private path,
guarded by a test that fails when a new version moves it — and falls back to the public one.
Either way that is a cost of the Python binding: the C++ runtime in an app links the runtime alone.

The bindings take and return torch tensors only; numpy crosses at this module's boundary. Threads
are set by a process-wide private call, which is fine here: every runner lives in a child of its own.

Cached decoders (``decoder_calls``, issue 30) run through the same bindings: one program, its method(s) loaded
once, the token count each entry takes read from the program itself (a dynamic ``tokens`` dim: any length).
"""
from __future__ import annotations

import time
from collections import Counter
from typing import Mapping

import numpy as np

from deploykit.errors import ModelLoadError, UnsupportedModelError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions, named_as_recorded
from deploykit.runner import RunnerBase, RunnerOptions
from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs
from deploykit.text import one_line

METHOD = "forward"
# c10::ScalarType codes as ExecuTorch's TensorInfo.dtype() reports them.
SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                7: "float64", 11: "bool", 15: "bfloat16"}
LEAN_MODULE = "executorch.extension.pybindings._C"


_IMPORTED: list = []      # [(module, seconds, path)] once this process has imported the bindings


def bindings():
    """(ExecuTorch's C++ extension module, seconds its first import in this process took, which path was used).

    The first import is what a cold start pays, whichever call (describe or the runner) made it."""
    import importlib

    if _IMPORTED:
        return _IMPORTED[0]
    started = time.perf_counter()
    import torch  # noqa: F401 - the extension links libtorch: torch must be loaded first

    try:
        module, path = importlib.import_module(LEAN_MODULE), "lean"
    except ImportError:      # a version that moved the extension: the public path still works, slower
        module, path = importlib.import_module("executorch.extension.pybindings.portable_lib"), "public"
    _IMPORTED.append((module, time.perf_counter() - started, path))
    return _IMPORTED[0]


def _load_program(path: str):
    module, seconds, _path = bindings()
    try:
        program = module._load_program(path, enable_etdump=False, debug_buffer_size=0,
                                       program_verification=module.Verification.InternalConsistency, data_path=None)
    except Exception as exc:  # noqa: BLE001 - RuntimeError with an ExecuTorch error code
        raise ModelLoadError(f"{path}: ExecuTorch cannot load the program ({one_line(str(exc), 200)})",
                             "the file is truncated, corrupt or from an incompatible ExecuTorch: export it again") from None
    return module, program, seconds


def describe(path: str) -> dict:
    """Signature (from the program's method metadata) and delegation (from its instructions)."""
    _module, program, _seconds = _load_program(path)
    meta = program.method_meta(METHOD)
    inputs = [_spec(f"input_{i}", meta.input_tensor_meta(i)) for i in range(meta.num_inputs())]
    outputs = [_spec(f"output_{i}", meta.output_tensor_meta(i)) for i in range(meta.num_outputs())]
    return {"spec": ModelSpec(tuple(inputs), tuple(outputs)).to_dict(), "delegation": delegation(path)}


def _spec(name: str, info) -> TensorSpec:
    dtype = SCALAR_TYPES.get(int(info.dtype()))
    if dtype is None:
        raise UnsupportedModelError(f"the program's tensor {name} has ExecuTorch scalar type {info.dtype()}",
                                    "deploykit runs programs with numeric tensor inputs and outputs")
    return TensorSpec(name, tuple(int(d) for d in info.sizes()), dtype)


def delegation(path: str) -> dict:
    """What runs where: delegate calls by backend, and the operators left to portable kernels (with counts).

    Read from the program's flatbuffer with the `flatbuffers` library: ExecuTorch's own deserializer
    imports the whole exir compiler (10 s) for what is a table walk. Field slots follow
    executorch/schema/program.fbs; a test checks this reading against ExecuTorch's deserializer.
    """
    from flatbuffers import encode, number_types, packer, table

    buffer = bytearray(open(path, "rb").read())

    def root(offset):
        return table.Table(buffer, offset)

    def field(tab, slot):            # vtable offset of the slot-th field, 0 when absent
        return tab.Offset(4 + 2 * slot)

    def vector(tab, slot):
        offset = field(tab, slot)
        if not offset:
            return []
        start, length = tab.Vector(offset), tab.VectorLen(offset)
        return [root(tab.Indirect(start + 4 * i)) for i in range(length)]

    def string(tab, slot):
        offset = field(tab, slot)
        return tab.String(offset + tab.Pos).decode() if offset else ""

    def integer(tab, slot):
        offset = field(tab, slot)
        return tab.Get(number_types.Int32Flags, offset + tab.Pos) if offset else 0

    program = root(encode.Get(packer.uoffset, buffer, 0))
    plans = vector(program, 1)                       # Program.execution_plan
    plan = next((p for p in plans if string(p, 0) == METHOD), plans[0] if plans else None)
    if plan is None:
        return {"delegate_calls": {}, "portable_ops": {}}
    operators = [f"{string(op, 0)}.{string(op, 1)}".rstrip(".") for op in vector(plan, 6)]
    backends = [string(d, 0) for d in vector(plan, 7)]
    kernels, delegates = Counter(), Counter()
    for chain in vector(plan, 5):
        for instruction in vector(chain, 2):
            kind = instruction.Get(number_types.Uint8Flags, field(instruction, 0) + instruction.Pos) \
                if field(instruction, 0) else 0
            if kind not in (1, 2):                   # KernelCall, DelegateCall (moves, jumps, frees: neither)
                continue
            args = table.Table(buffer, instruction.Indirect(field(instruction, 1) + instruction.Pos))
            index = integer(args, 0)
            (kernels if kind == 1 else delegates)[(operators if kind == 1 else backends)[index]] += 1
    return {"delegate_calls": dict(delegates), "portable_ops": dict(kernels.most_common())}


def coverage_text(info: dict) -> str:
    """'XnnpackBackend: 1 call; portable kernels: aten::cumsum.out ×1' (the route table's and bench's wording)."""
    calls = ", ".join(f"{name}: {count} call{'s' * (count != 1)}" for name, count in info["delegate_calls"].items())
    portable = ", ".join(f"{name} ×{count}" for name, count in info["portable_ops"].items())
    return "; ".join(part for part in (calls or "no delegate", f"portable kernels: {portable}" if portable
                                       else "no portable kernels (fully delegated)") if part)


def load_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    info = describe(path)
    spec = named_as_recorded(path, ModelSpec.from_dict(info["spec"]))
    spec = ModelSpec(tuple(merge_user_specs(spec.inputs, options.input_specs)), spec.outputs)
    return LoadedModel(path=path, format=fmt, spec=spec, details={"delegation": info["delegation"]})


class ExecuTorchRunner(RunnerBase):
    """A .pte program's ``forward`` through ExecuTorch's bindings (XNNPACK and portable kernels, CPU)."""

    def __init__(self, model: LoadedModel, options: RunnerOptions = RunnerOptions()):
        self.model, self.options = model, options
        self.method, self.bindings_import_s = None, None

    def open(self) -> None:
        module, program, self.bindings_import_s = _load_program(self.model.path)
        if self.options.threads:
            module._unsafe_reset_threadpool(int(self.options.threads))   # process-wide: this child's pool
        try:
            self.method = program.load_method(METHOD)
        except RuntimeError as exc:
            raise self._load_failure(module, exc) from None
        self._program = program     # the method borrows from the program: keep it alive

    def _load_failure(self, module, exc: Exception) -> Exception:
        """Name the operators the bindings have no kernel for (ExecuTorch says only 'error 0x14' otherwise)."""
        registered = set(module._get_operator_names())
        ops = (self.model.details.get("delegation") or {}).get("portable_ops") or delegation(self.model.path)["portable_ops"]
        missing = sorted(op for op in ops if op not in registered)
        if missing:
            return UnsupportedModelError(
                f"ExecuTorch's kernel library has no kernel for {', '.join(missing)}",
                "these ops stayed outside the XNNPACK delegate: rewrite that part of the model, or build an "
                "ExecuTorch runtime with those kernels (a custom kernel library)")
        return ModelLoadError(f"ExecuTorch cannot load method {METHOD} of {self.model.path}: {one_line(str(exc), 200)}",
                              "export the program again with this ExecuTorch version")

    @property
    def active_providers(self) -> list:
        info = self.model.details.get("delegation") or {}
        return [coverage_text(info)] if info else []

    def run(self, feeds: Mapping) -> dict:
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[t.name], dtype=t.dtype)) for t in self.model.spec.inputs]
        outputs = self.method(tensors)
        return {t.name: _numpy(value) for t, value in zip(self.model.spec.outputs, outputs)}

    def close(self) -> None:
        self.method, self._program = None, None


def _numpy(value) -> np.ndarray:
    # Outputs may share the method's planned memory: copy before the next call overwrites it.
    return value.detach().numpy().copy() if hasattr(value, "detach") else np.asarray(value)


NOT_A_DECODER_REMEDY = "export it with deploykit export SRC --to executorch"
STATIC_SHAPE = 0                # TensorShapeDynamism.STATIC (executorch/schema/program.fbs; 1, 2: dynamic)


def decoder_calls(path: str, options: RunnerOptions = RunnerOptions()) -> "ExecuTorchDecoderCalls":
    """The cached-decoder calls of a .pte that keeps ``deploykit.causal_lm``'s contract: methods "prefill" and
    "decode", or one method (``forward``) serving both — its token count dynamic or fixed, as the program says."""
    return ExecuTorchDecoderCalls(path, options)


class ExecuTorchDecoderCalls:
    """One program, each method loaded once. Threads: the bindings have no per-method setting; XNNPACK's pool is
    process-wide and sized by ``_unsafe_reset_threadpool`` (private; every runtime lives in a child of its own)."""

    def __init__(self, path: str, options: RunnerOptions):
        from deploykit import causal_lm

        module, self._program, _seconds = _load_program(path)
        names = [self._program.get_method_name(i) for i in range(self._program.num_methods())]
        entry_methods = {e: e if e in names else METHOD for e in causal_lm.ENTRY_POINTS}
        for method in set(entry_methods.values()):
            if method not in names or not _takes_cache(self._program.method_meta(method)):
                raise ModelLoadError(f"{path}: the program's method {method if method in names else names[0]} takes "
                                     "no KV cache: it is not a cached decoder", NOT_A_DECODER_REMEDY)
        if options.threads:
            module._unsafe_reset_threadpool(int(options.threads))
        dynamic = _dynamic_tokens(path, set(entry_methods.values()))
        self.entries = {entry: None if dynamic[method] and entry == "prefill" else
                        1 if dynamic[method] else int(self._program.method_meta(method).input_tensor_meta(0).sizes()[1])
                        for entry, method in entry_methods.items()}
        try:
            loaded = {method: self._program.load_method(method) for method in set(entry_methods.values())}
        except RuntimeError as exc:
            raise ModelLoadError(f"ExecuTorch cannot load the decoder's methods of {path}: {one_line(str(exc), 200)}",
                                 "export the program again with this ExecuTorch version") from None
        self._methods = {entry: loaded[method] for entry, method in entry_methods.items()}
        self._inputs, self._outputs = causal_lm.INPUTS, causal_lm.OUTPUTS

    def call(self, entry: str, feeds: Mapping) -> dict:
        """One call of the entry's method; outputs by the contract's names, copied (they live in the method's
        planned memory, which the next call overwrites)."""
        import torch

        dtypes = (np.int32, np.int32, np.float32, np.float32)
        tensors = [torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=dtype))
                   for name, dtype in zip(self._inputs, dtypes)]
        outputs = self._methods[entry](tensors)
        return {name: _numpy(value) for name, value in zip(self._outputs, outputs)}

    def close(self) -> None:
        self._methods, self._program = {}, None


def _takes_cache(meta) -> bool:
    """Four inputs (int32 tokens [1, T] and positions [T], float32 caches of rank 4) and three outputs."""
    if meta.num_inputs() != 4 or meta.num_outputs() != 3:
        return False
    infos = [meta.input_tensor_meta(i) for i in range(4)]
    kinds = [SCALAR_TYPES.get(int(info.dtype())) for info in infos]
    ranks = [len(info.sizes()) for info in infos]
    return kinds == ["int32", "int32", "float32", "float32"] and ranks == [2, 1, 4, 4]


def _dynamic_tokens(path: str, methods: set) -> dict:
    """{method: whether its ``tokens`` input has a dynamic shape}. The bindings' TensorInfo reports only the upper
    bound, so the flag is read from the program's flatbuffer (ExecutionPlan.values[inputs[0]], a Tensor's
    shape_dynamism; slots as in executorch/schema/program.fbs)."""
    from flatbuffers import encode, number_types, packer, table

    buffer = bytearray(open(path, "rb").read())

    def field(tab, slot):
        return tab.Offset(4 + 2 * slot)

    def child(tab, slot):
        return table.Table(buffer, tab.Indirect(field(tab, slot) + tab.Pos))

    def vector_at(tab, slot, index, width=4):
        return tab.Vector(field(tab, slot)) + width * index

    program = table.Table(buffer, encode.Get(packer.uoffset, buffer, 0))
    found = {}
    for i in range(program.VectorLen(field(program, 1))):                  # Program.execution_plan
        plan = table.Table(buffer, program.Indirect(vector_at(program, 1, i)))
        name = plan.String(field(plan, 0) + plan.Pos).decode()
        if name not in methods:
            continue
        first = plan.Get(number_types.Int32Flags, vector_at(plan, 3, 0))   # ExecutionPlan.inputs[0]
        value = table.Table(buffer, plan.Indirect(vector_at(plan, 2, first)))   # ExecutionPlan.values[...]
        tensor = child(value, 1)                                            # EValue.val (slot 0 is its type)
        slot = field(tensor, 8)                                             # Tensor.shape_dynamism
        found[name] = bool(slot) and tensor.Get(number_types.Int8Flags, slot + tensor.Pos) != STATIC_SHAPE
    return {method: found.get(method, False) for method in methods}
