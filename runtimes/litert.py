"""LiteRT (formerly TensorFlow Lite): read a .tflite signature and run it with ai_edge_litert.

tflite-runtime is not used: 2.14 fails under numpy 2 (FIELD-NOTES); ai_edge_litert is its
maintained successor, with XNNPACK on by default.
"""
from __future__ import annotations

from typing import Mapping, Optional

import numpy as np

from deploykit.errors import ModelLoadError
from deploykit.formats import Format
from deploykit.model import LoadedModel, LoadOptions
from deploykit.runner import RunnerBase, RunnerOptions, first_line
from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs
from deploykit.text import natural_key, one_line


def _interpreter(path: str, threads=None, xnnpack: bool = True):
    from ai_edge_litert import interpreter as litert

    kwargs = {"model_path": path, "num_threads": threads}
    if not xnnpack:
        kwargs["experimental_op_resolver_type"] = litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return litert.Interpreter(**kwargs)


def describe(path: str) -> dict:
    """Signature of a .tflite file (the registry marks this loader isolated: a bad file can crash LiteRT,
    so the core calls it in a child process)."""
    try:
        interpreter = _interpreter(path)
    except Exception as exc:  # noqa: BLE001 - ValueError for flatbuffer errors
        raise ModelLoadError(f"{path}: not a valid TFLite model ({one_line(str(exc), 200)})",
                             "the file is truncated or corrupt: convert or copy it again") from None
    signatures = interpreter.get_signature_list()
    if signatures:
        key = "serving_default" if "serving_default" in signatures else sorted(signatures)[0]
        runner = interpreter.get_signature_runner(key)
        inputs = [_spec(name, d) for name, d in runner.get_input_details().items()]
        outputs = [_spec(name, d) for name, d in sorted(runner.get_output_details().items(),
                                                         key=lambda kv: natural_key(kv[0]))]
        tensor_names = _tensor_names(interpreter, runner)
    else:
        key, tensor_names = None, {}
        inputs = [_spec(d["name"], d) for d in interpreter.get_input_details()]
        outputs = [_spec(d["name"], d) for d in interpreter.get_output_details()]
    return {"signature_key": key, "spec": ModelSpec(tuple(inputs), tuple(outputs)).to_dict(), "ops": _op_histogram(path),
            "tensor_names": tensor_names}


def _tensor_names(interpreter, runner) -> dict:
    """{signature name: flatbuffer tensor name} of each signature input and output. A signature may list its
    outputs in another order than the flatbuffer's output tensors; a converter reading the flatbuffer (tf2onnx)
    writes the tensor names, and this map pairs them back with the signature's by name, never by position."""
    names = {d["index"]: d["name"] for d in interpreter.get_tensor_details()}
    found = {}
    for details in (runner.get_input_details(), runner.get_output_details()):
        found.update({name: names[d["index"]] for name, d in details.items() if d["index"] in names})
    return found


def _op_histogram(path: str) -> dict:
    """Builtin op counts, from a fresh interpreter (LiteRT's op listing is a private but stable call)."""
    import collections

    try:
        interpreter = _interpreter(path, xnnpack=False)
        interpreter.allocate_tensors()
        counts = collections.Counter(op["op_name"] for op in interpreter._get_ops_details())
    except Exception:  # noqa: BLE001 - the histogram is informative only
        return {}
    return dict(counts.most_common())


def _spec(name: str, detail: dict) -> TensorSpec:
    signature = detail.get("shape_signature")
    dims = signature if signature is not None and len(signature) else detail["shape"]
    shape = tuple("batch" if (int(d) < 0 and i == 0) else ("?" if int(d) < 0 else int(d)) for i, d in enumerate(dims))
    return TensorSpec(name, shape, np.dtype(detail["dtype"]).name)


def load_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    info = describe(path)
    spec = ModelSpec.from_dict(info["spec"])
    spec = ModelSpec(tuple(merge_user_specs(spec.inputs, options.input_specs)), spec.outputs)
    return LoadedModel(path=path, format=fmt, spec=spec,
                       details={"signature_key": info["signature_key"], "ops": info.get("ops", {}),
                                "tensor_names": info.get("tensor_names", {})})


def _to_input(value: np.ndarray, detail: dict) -> np.ndarray:
    """Float feeds to an int8/uint8 input are quantized with the tensor's own scale and zero point."""
    dtype = np.dtype(detail["dtype"])
    scale, zero_point = (detail.get("quantization") or (0.0, 0))[:2]
    if dtype.kind in "iu" and np.asarray(value).dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(np.asarray(value) / scale + zero_point), info.min, info.max).astype(dtype)
    return np.ascontiguousarray(value, dtype=dtype)


def _from_output(value: np.ndarray, detail: dict) -> np.ndarray:
    """Quantized outputs come back as float (value - zero_point) * scale, comparable with the source."""
    scale, zero_point = (detail.get("quantization") or (0.0, 0))[:2]
    if np.asarray(value).dtype.kind in "iu" and scale:
        return ((value.astype(np.float32) - zero_point) * scale).astype(np.float32)
    return value


def _allocate_or_explain(interpreter, path: str) -> None:
    """Allocate now, so that a model LiteRT cannot run fails with a reason, not mid-inference."""
    import re

    from deploykit.errors import UnsupportedModelError

    try:
        interpreter.allocate_tensors()
    except RuntimeError as exc:
        text = one_line(str(exc), 2000)
        flex = sorted(set(re.findall(r"Flex\w+", text)))
        if "Select TensorFlow op" in text or flex:
            raise UnsupportedModelError(
                f"{path} uses TensorFlow (Flex) ops that LiteRT's builtin runtime cannot run: "
                f"{', '.join(flex) or 'unknown'}",
                "convert by a route that lowers them to builtin ops (e.g. --via litert, or export with the dynamo "
                "exporter), or ship the Flex delegate (tensorflow-lite-select-tf-ops)") from None
        raise ModelLoadError(f"LiteRT cannot prepare {path}: {text[:200]}", "convert the model again") from None


# XNNPACK delegate flags (tensorflow/lite/delegates/xnnpack/xnnpack_delegate.h): the delegate's default QS8|QU8
# (int8 and uint8 operators delegated) plus FORCE_FP16 (fp32 operators computed in fp16).
XNNPACK_FLAG_QS8, XNNPACK_FLAG_QU8, XNNPACK_FLAG_FORCE_FP16 = 0x1, 0x2, 0x4
AT_HWCAP, HWCAP_ATOMICS, HWCAP_ASIMDHP = 16, 1 << 8, 1 << 10      # getauxval key; Linux arm64 HWCAP bits


def fp16_arithmetic_problem(options: RunnerOptions) -> str:
    """Why this process cannot compute in fp16 through LiteRT's CompiledModel ("" when it can).

    The CPU's own HWCAP bits decide, not a name: under qemu they are the emulated core's, on a phone the phone's.
    CompiledModel's library is built for LSE atomics (an ARMv8.0 core dies of SIGILL creating one), and without
    FEAT_FP16 an ARM core has no fp16 arithmetic to show. x86 passes: XNNPACK converts with F16C and rounds every
    intermediate to fp16, computing in fp32 between (a nearer result than a phone's, hence the ARM runtimes).
    """
    import platform

    if not options.xnnpack:
        return "XNNPACK is off, and only XNNPACK computes in fp16"
    if platform.machine().lower() not in ("aarch64", "arm64"):
        return ""
    import ctypes

    libc = ctypes.CDLL(None)
    libc.getauxval.restype = ctypes.c_ulong
    hwcap = libc.getauxval(AT_HWCAP)
    core = options.arm_cpu or "this core"
    if not hwcap & HWCAP_ATOMICS:
        return f"{core} has no LSE atomics (ARMv8.0), which LiteRT's CompiledModel needs"
    if not hwcap & HWCAP_ASIMDHP:
        return f"{core} has no fp16 arithmetic (FEAT_FP16, ARMv8.2)"
    return ""


class _Fp16Compiled:
    """A signature of a .tflite run by LiteRT's CompiledModel with XNNPACK's FORCE_FP16 flag (the Interpreter's
    Python API cannot pass delegate flags). Numpy in, numpy out; shapes follow the feeds."""

    def __init__(self, path: str, key: Optional[str], threads=None):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.options import CpuOptions, Options

        flags = XNNPACK_FLAG_QS8 | XNNPACK_FLAG_QU8 | XNNPACK_FLAG_FORCE_FP16
        cpu = CpuOptions(num_threads=threads or 0, xnnpack_flags=flags)       # 0: LiteRT decides, as None does
        self.model = CompiledModel.from_file(path, options=Options(cpu_options=cpu))
        # A model without SignatureDefs (MediaPipe's) gets LiteRT's "<placeholder signature>", named by its tensors.
        self.key = key or next(iter(self.model.get_signature_list()))

    def run(self, inputs: dict, out_dtypes: dict) -> dict:
        """Outputs by signature name for inputs already in the model's dtypes (``out_dtypes``: each output's)."""
        model, key = self.model, self.key
        laid_out = model.get_input_tensor_details(key)
        for name, value in inputs.items():
            if list(value.shape) != list(laid_out[name]["shape"]):
                model.resize_input_tensor_by_name(key, name, list(value.shape))
        buffers = {name: model.create_input_buffer_by_name(key, name) for name in inputs}
        out_details = model.get_output_tensor_details(key)
        out_buffers = {name: model.create_output_buffer_by_name(key, name) for name in out_details}
        try:
            for name, buffer in buffers.items():
                buffer.write(inputs[name])
            model.run_by_name(key, buffers, out_buffers)
            return {name: buffer.read(int(np.prod(out_details[name]["shape"])), out_dtypes[name])
                    .reshape(out_details[name]["shape"]) for name, buffer in out_buffers.items()}
        finally:
            for buffer in (*buffers.values(), *out_buffers.values()):
                buffer.destroy()

    def close(self) -> None:
        self.model.close()


class LiteRTRunner(RunnerBase):
    """ai_edge_litert Interpreter through its signature runner; XNNPACK on unless options say otherwise."""

    def __init__(self, model: LoadedModel, options: RunnerOptions = RunnerOptions()):
        self.model, self.options = model, options
        self.interpreter, self.runner = None, None
        self.compiled = None            # the CompiledModel that computes in fp16 (fp16_arithmetic), when it can
        self.fp16_unavailable = ""      # why fp16_arithmetic fell back to the Interpreter's fp32 arithmetic

    def open(self) -> None:
        if self.options.fp16_arithmetic:
            self.fp16_unavailable = fp16_arithmetic_problem(self.options)
        try:
            self.interpreter = _interpreter(self.model.path, self.options.threads, self.options.xnnpack)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"LiteRT cannot load {self.model.path}: {one_line(str(exc), 200)}",
                                 "convert the model again") from None
        _allocate_or_explain(self.interpreter, self.model.path)
        key = self.model.details.get("signature_key")
        if key is None and self.interpreter.get_signature_list():
            key = sorted(self.interpreter.get_signature_list())[0]
        self.runner = self.interpreter.get_signature_runner(key) if key else None
        if self.options.fp16_arithmetic and not self.fp16_unavailable:
            self._open_compiled(key)

    def _open_compiled(self, key: Optional[str]) -> None:
        """The fp16 CompiledModel, or the reason it is not there (the Interpreter then runs, in fp32)."""
        try:
            self.compiled = _Fp16Compiled(self.model.path, key, self.options.threads)
        except Exception as exc:  # noqa: BLE001 - e.g. XNNPACK refusing FORCE_FP16 on a CPU without F16C
            self.fp16_unavailable = f"LiteRT's CompiledModel refused it ({first_line(exc)})"

    @property
    def active_providers(self) -> list:
        # LiteRT has no API that reports applied delegates; the op resolver choice decides it.
        if self.compiled is not None:
            return ["XNNPACK fp16"]
        if self.fp16_unavailable:       # fp16 arithmetic was asked for: the report must say it did not happen
            return [f"XNNPACK (fp32 arithmetic: {self.fp16_unavailable})" if self.options.xnnpack
                    else f"builtin kernels (no delegate; fp32 arithmetic: {self.fp16_unavailable})"]
        return ["XNNPACK"] if self.options.xnnpack else ["builtin kernels (no delegate)"]

    def run(self, feeds: Mapping) -> dict:
        if self.runner is None:
            return self._run_compiled_without_signature(feeds) if self.compiled else self._run_without_signature(feeds)
        details = self.runner.get_input_details()
        inputs = {name: _to_input(feeds[name], details[name]) for name in details}
        out_details = self.runner.get_output_details()
        if self.compiled is not None:
            # The signature's names, dtypes and (de)quantization, as the Interpreter's: only the arithmetic differs.
            outputs = self.compiled.run(inputs, {name: np.dtype(d["dtype"]) for name, d in out_details.items()})
        else:
            # The signature runner resizes inputs whose shapes differ (dynamic dims such as [-1, ...]).
            outputs = self.runner(**inputs)
        return {name: _from_output(outputs[name], out_details.get(name, {})) for name in sorted(outputs, key=natural_key)}

    def _run_compiled_without_signature(self, feeds: Mapping) -> dict:
        """A model with no signature in fp16: the Interpreter's tensor names, dtypes and (de)quantization, the
        CompiledModel's placeholder signature for the arithmetic."""
        out_details = self.interpreter.get_output_details()
        inputs = {d["name"]: _to_input(feeds[d["name"]], d) for d in self.interpreter.get_input_details()}
        outputs = self.compiled.run(inputs, {d["name"]: np.dtype(d["dtype"]) for d in out_details})
        return {d["name"]: _from_output(outputs[d["name"]], d) for d in out_details}

    def _run_without_signature(self, feeds: Mapping) -> dict:
        interpreter = self.interpreter
        for detail in interpreter.get_input_details():
            value = np.ascontiguousarray(feeds[detail["name"]], dtype=detail["dtype"])
            if tuple(detail["shape"]) != value.shape:
                interpreter.resize_tensor_input(detail["index"], value.shape)
        interpreter.allocate_tensors()
        for detail in interpreter.get_input_details():
            interpreter.set_tensor(detail["index"], _to_input(feeds[detail["name"]], detail))
        interpreter.invoke()
        return {d["name"]: _from_output(interpreter.get_tensor(d["index"]).copy(), d)
                for d in interpreter.get_output_details()}

    def close(self) -> None:
        if self.compiled is not None:
            self.compiled.close()
        self.runner, self.interpreter, self.compiled = None, None, None

    def capture(self, feeds_list: list) -> tuple:
        """(GraphView dict, per sample {tensor: value}): LiteRT's builtin kernels with every tensor preserved
        (a delegate's intermediates are never materialised); quantized values come back as float."""
        from ai_edge_litert import interpreter as litert

        from deploykit.graphview import view_points

        interpreter = litert.Interpreter(
            model_path=self.model.path, num_threads=self.options.threads, experimental_preserve_all_tensors=True,
            experimental_op_resolver_type=litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        _allocate_or_explain(interpreter, self.model.path)
        view, index_of = tflite_view(interpreter)
        points = view_points(view)
        details = {d["index"]: d for d in interpreter.get_tensor_details()}
        self.interpreter = interpreter
        key = self.model.details.get("signature_key")
        self.runner = interpreter.get_signature_runner(key) if key else None
        values = []
        for feeds in feeds_list:
            self.run(feeds)
            values.append({name: _dequantized(interpreter.get_tensor(index_of[name]), details[index_of[name]])
                           for name in points})
        return view.to_dict(), values


def tflite_view(interpreter) -> tuple:
    """(GraphView, {tensor key: index}) of an allocated interpreter: its ops (delegate nodes skipped) and the
    values of its constant tensors. Tensor keys are names, made unique with '#index' where names repeat."""
    from deploykit.graphview import Constant, GraphView, Op, digest

    details = interpreter.get_tensor_details()
    seen: dict = {}
    key_of = {}
    for detail in details:
        name = detail["name"] or f"tensor{detail['index']}"
        key_of[detail["index"]] = name if name not in seen else f"{name}#{detail['index']}"
        seen[name] = True
    ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
    produced = {int(i) for op in ops for i in op["outputs"]}
    feeds = {d["index"] for d in interpreter.get_input_details()}
    constants = {}
    for detail in details:
        index = detail["index"]
        if index in produced or index in feeds:
            continue
        try:
            value = interpreter.get_tensor(index)
        except ValueError:       # a tensor without data (a variable, an unused slot)
            continue
        constants[key_of[index]] = Constant(list(value.shape), digest(value) if value.size > 1 else "", key_of[index],
                                         value.dtype.name)
    # An op is named by its first output tensor: the name TFLite's QuantizationDebugger takes in denylisted_nodes.
    view_ops = [Op(key_of[int(op["outputs"][0])], op["op_name"], [key_of[int(i)] for i in op["inputs"] if i >= 0],
                   [key_of[int(i)] for i in op["outputs"]], key_of[int(op["outputs"][0])]) for op in ops]
    outputs = [key_of[d["index"]] for d in interpreter.get_output_details()]
    return GraphView(view_ops, constants, outputs), {key: index for index, key in key_of.items()}


def _dequantized(value: np.ndarray, detail: dict) -> np.ndarray:
    """An int8/int16 activation as float (per-tensor scale and zero point), comparable with a float graph."""
    params = detail.get("quantization_parameters") or {}
    scales, zero_points = params.get("scales"), params.get("zero_points")
    if value.dtype.kind in "iu" and scales is not None and len(scales) == 1:
        return ((value.astype(np.float32) - float(zero_points[0])) * float(scales[0])).astype(np.float32)
    return value.copy()


class LiteRTDecoderCalls:
    """A cached-decoder .tflite (``converters.llm_to_tflite``): one Interpreter, one signature runner per entry
    point ("prefill", "decode"); the DecoderCalls protocol of ``deploykit.causal_lm``.

    XNNPACK packs the weights once per signature it runs: SmolLM2-135M's 0.54 GB fp32 file peaks at 1.69 GB of
    resident memory (0.65 GB with XNNPACK off; LiteRT's CompiledModel with an XNNPACK weight-cache file, 0.65 GB)."""

    def __init__(self, path: str, options: RunnerOptions):
        from deploykit import causal_lm

        try:
            self.interpreter = _interpreter(path, options.threads, options.xnnpack)
        except Exception as exc:  # noqa: BLE001 - ValueError for flatbuffer errors
            raise ModelLoadError(f"LiteRT cannot load {path}: {one_line(str(exc), 200)}",
                                 "convert the model again") from None
        signatures = self.interpreter.get_signature_list()
        wanted = set(causal_lm.INPUTS), set(causal_lm.OUTPUTS)
        if any(entry not in signatures or (set(signatures[entry]["inputs"]), set(signatures[entry]["outputs"]))
               != wanted for entry in causal_lm.ENTRY_POINTS):
            raise ModelLoadError(f"{path} has no prefill/decode signatures with a KV cache: it is not a cached "
                                 "decoder", "export it with deploykit export SRC --to tflite")
        self.runners = {entry: self.interpreter.get_signature_runner(entry) for entry in causal_lm.ENTRY_POINTS}
        # Each signature has a fixed token count: its tokens input is [1, T].
        self.entries = {entry: int(runner.get_input_details()["tokens"]["shape"][1])
                        for entry, runner in self.runners.items()}

    def call(self, entry: str, feeds: dict) -> dict:
        """One call of ``entry`` on numpy feeds named as the contract's inputs; its outputs, by name."""
        runner = self.runners[entry]
        details = runner.get_input_details()
        inputs = {name: np.ascontiguousarray(feeds[name], dtype=details[name]["dtype"]) for name in details}
        # The signature runner's outputs are copies (Interpreter.GetTensor copies): the next call cannot touch them.
        return dict(runner(**inputs))

    def close(self) -> None:
        self.runners, self.interpreter = {}, None


def decoder_calls(path: str, options: RunnerOptions = RunnerOptions()) -> LiteRTDecoderCalls:
    """The DecoderCalls of a cached-decoder .tflite; a .tflite without prefill/decode cache signatures is refused."""
    return LiteRTDecoderCalls(path, options)
