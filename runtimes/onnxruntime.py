"""ONNX: read the signature from the graph; run with ONNX Runtime (CPU, or the CUDA EP)."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from deploykit.errors import ModelLoadError, UnsupportedModelError, UsageError
from deploykit.formats import Format
from deploykit.frameworks import import_onnxruntime
from deploykit.machine import gpu_present
from deploykit.model import LoadedModel, LoadOptions
from deploykit.onnx_io import read_onnx
from deploykit.runner import RunnerBase, RunnerOptions
from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs
from deploykit.text import one_line


def load_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    """Check the ONNX file and read its signature (the graph is not kept in memory)."""
    proto = read_onnx(path)
    initializers = {i.name: i for i in proto.graph.initializer}
    token_ranges = _gather_table_sizes(proto.graph, initializers)
    inputs = [_tensor_spec(v, token_ranges.get(v.name)) for v in proto.graph.input if v.name not in initializers]
    outputs = [_tensor_spec(v) for v in proto.graph.output]
    inputs = merge_user_specs(inputs, options.input_specs)
    details = {"opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
               "producer": f"{proto.producer_name} {proto.producer_version}".strip()}
    return LoadedModel(path=path, format=fmt, spec=ModelSpec(tuple(inputs), tuple(outputs)), details=details)


def _tensor_spec(value, value_range=None) -> TensorSpec:
    from onnx import helper

    if value.type.WhichOneof("value") != "tensor_type":
        raise UnsupportedModelError(f"graph input/output {value.name!r} is a {value.type.WhichOneof('value')}, "
                                    "not a tensor", "deploykit runs models whose inputs and outputs are tensors")
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor_type.shape.dim)
    try:   # the checker accepts any number here; only the defined ones map to numpy (found by fuzzing)
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type)).name
    except (KeyError, TypeError, ValueError):
        raise ModelLoadError(f"graph input/output {value.name!r} has element type {tensor_type.elem_type}, which ONNX "
                             "does not define", "the file is damaged or was written by a broken exporter") from None
    return TensorSpec(value.name, dims, dtype, value_range=value_range)


def _gather_table_sizes(graph, initializers: dict) -> dict:
    """Graph inputs used as Gather indices into an initializer are token ids below its first dim."""
    ranges = {}
    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2 and node.input[0] in initializers:
            size = int(initializers[node.input[0]].dims[0])
            previous = ranges.get(node.input[1])
            ranges[node.input[1]] = (0, size if previous is None else min(size, previous[1]))
    return ranges


def providers_for(device: str) -> list:
    ort = import_onnxruntime()

    available = ort.get_available_providers()
    if device == "auto":
        device = "cuda" if "CUDAExecutionProvider" in available and gpu_present() else "cpu"
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise UsageError("ONNX Runtime has no CUDA execution provider here",
                             "install onnxruntime-gpu on a machine with an NVIDIA GPU, or use --device cpu")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxRuntimeRunner(RunnerBase):
    """ONNX Runtime InferenceSession with all graph optimizations on."""

    def __init__(self, model: LoadedModel, options: RunnerOptions = RunnerOptions()):
        self.model, self.options, self.session = model, options, None

    def open(self) -> None:
        self.session = self._session(self.model.path)

    def _session(self, model):
        """An InferenceSession of ``model`` (a path, or serialized bytes) with this runner's options."""
        ort = import_onnxruntime()

        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.log_severity_level = 3
        if self.options.threads:
            session_options.intra_op_num_threads = self.options.threads
        try:
            return ort.InferenceSession(model, session_options, providers=providers_for(self.options.device))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            detail = one_line(str(exc))
            raise ModelLoadError(f"ONNX Runtime cannot load {self.model.path}: {detail}",
                                 "the graph uses an op or opset this onnxruntime lacks; re-export with "
                                 "another --opset") from None

    @property
    def active_providers(self) -> list:
        return self.session.get_providers() if self.session else []

    def run(self, feeds: Mapping) -> dict:
        wanted = {i.name: i.type for i in self.session.get_inputs()}
        inputs = {name: _as_ort_type(feeds[name], kind) for name, kind in wanted.items()}
        values = self.session.run(None, inputs)
        return {o.name: v for o, v in zip(self.session.get_outputs(), values)}

    def close(self) -> None:
        self.session = None

    def capture(self, feeds_list: list) -> tuple:
        """(GraphView dict, per sample {tensor: value}) with every layer's output exposed as a graph output
        (what ORT's qdq_loss_debug does); a layer whose output is kept cannot be fused away, so values are exact."""
        import onnx

        from deploykit.graphview import onnx_view, view_points

        model = onnx.load(self.model.path)
        view = onnx_view(model)
        points = view_points(view)
        present = {o.name for o in model.graph.output}
        model.graph.output.extend(onnx.ValueInfoProto(name=name) for name in points if name not in present)
        session = self._session(model.SerializeToString())
        wanted = {i.name: i.type for i in session.get_inputs()}
        values = []
        for feeds in feeds_list:
            got = session.run(points, {name: _as_ort_type(feeds[name], kind) for name, kind in wanted.items()})
            values.append(dict(zip(points, got)))
        return view.to_dict(), values


_ORT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(float16)": "float16",
              "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(bool)": "bool",
              "tensor(int8)": "int8", "tensor(uint8)": "uint8"}


def _as_ort_type(value: np.ndarray, ort_type: str) -> np.ndarray:
    dtype = _ORT_TYPES.get(ort_type)
    return np.ascontiguousarray(value, dtype=dtype) if dtype else np.ascontiguousarray(value)


NOT_A_DECODER_REMEDY = "export it with deploykit export SRC --to onnx"


def decoder_calls(path: str, options: RunnerOptions = RunnerOptions()):
    """The cached-decoder calls of an ONNX graph that keeps ``deploykit.causal_lm``'s contract (one graph, any
    token count: prefill takes any length up to the context, decode one token)."""
    return OnnxDecoderCalls(path, options)


class OnnxDecoderCalls:
    """One InferenceSession, sequential execution (a decoder's graph is one chain: parallel branches buy nothing
    and its thread pool would compete with the intra-op one), intra-op threads from the options."""

    entries = {"prefill": None, "decode": 1}

    def __init__(self, path: str, options: RunnerOptions):
        from deploykit import causal_lm

        ort = import_onnxruntime()
        session_options = ort.SessionOptions()
        session_options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        session_options.log_severity_level = 3
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        try:
            self.session = ort.InferenceSession(str(path), session_options, providers=providers_for(options.device))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            raise ModelLoadError(f"ONNX Runtime cannot load {path}: {one_line(str(exc))}",
                                 "re-export it with deploykit export SRC --to onnx") from None
        inputs = {i.name for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if inputs != set(causal_lm.INPUTS) or not set(causal_lm.OUTPUTS) <= outputs:
            self.session = None
            raise ModelLoadError(f"{path} has no KV-cache inputs ({', '.join(causal_lm.INPUTS)}): it is not a "
                                 "cached decoder", NOT_A_DECODER_REMEDY)
        self._dtypes = {i.name: _ORT_TYPES.get(i.type, "float32") for i in self.session.get_inputs()}
        self._outputs = list(causal_lm.OUTPUTS)

    def call(self, entry: str, feeds: Mapping) -> dict:
        """One call (``entry`` is "prefill" or "decode": the graph is the same); outputs by the contract's names.
        ORT returns fresh arrays, so the caches handed back are not overwritten by the next call."""
        del entry
        inputs = {name: np.ascontiguousarray(feeds[name], dtype=dtype) for name, dtype in self._dtypes.items()}
        return dict(zip(self._outputs, self.session.run(self._outputs, inputs)))

    def close(self) -> None:
        self.session = None
