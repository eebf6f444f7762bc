"""ONNX and ORT format: read the signature from the graph; run with ONNX Runtime (CPU, or the CUDA EP).

An ORT-format file (ONNX Runtime Mobile's ``.ort`` flatbuffer) is read with ONNX Runtime's own Python flatbuffer
bindings (``onnxruntime.tools.ort_format_model``) — pure Python, so a damaged file raises rather than crashes — and
run by the same InferenceSession, told the format (a renamed file has no ``.ort`` suffix for ONNX Runtime to go by)
and allowed to replay the optimisations a ``runtime``-style file saved, as an app that ships one does.
"""
from __future__ import annotations

import collections
import math
from typing import Mapping

import numpy as np

from deploykit.errors import DeploykitError, ModelLoadError, UnsupportedModelError, UsageError
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


def load_ort_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    """Read an ORT-format file's signature, op histogram and optimisation facts (the graph is not kept)."""
    from pathlib import Path

    fbs = _ort_flatbuffers()
    data = bytearray(Path(path).read_bytes())
    try:
        if not fbs.InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(data, 0):
            raise ValueError("no ORTM identifier")
        session = fbs.InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0)
        model = session.Model()
        graph = model.Graph()
        inputs, outputs, ranges = _ort_signature(fbs, graph)
        ops: collections.Counter = collections.Counter()
        _count_ort_nodes(fbs, graph, ops, 0)
        optimizations = graph.RuntimeOptimizations()
        details = {"opset": {_text(o.Domain()) or "ai.onnx": o.Version() for o in
                             map(model.OpsetImport, range(model.OpsetImportLength()))},
                   "producer": f"{_text(model.ProducerName())} {_text(model.ProducerVersion())}".strip(),
                   "ort_format_version": _text(session.OrtVersion()), "ops": dict(ops.most_common()),
                   "parameters": sum(math.prod(map(tensor.Dims, range(tensor.DimsLength()))) for tensor in
                                     map(graph.Initializers, range(graph.InitializersLength()))),
                   "saved_runtime_optimizations": optimizations.RecordsLength() if optimizations else 0}
    except DeploykitError:
        raise
    except Exception as exc:  # noqa: BLE001 - the generated reader checks nothing: a damaged file raises anything
        raise ModelLoadError(f"{path}: not a whole ORT-format model ({one_line(str(exc))[:200]})",
                             "the file was cut short or damaged: convert it again (deploykit export X.onnx --to "
                             "ort)") from None
    if any(op.startswith(NCHWC_DOMAIN + ":") for op in ops):
        details["x86_only"] = f"{NCHWC_DOMAIN} kernels (--ort-platform amd64): they exist on x86 only"
    inputs = merge_user_specs([TensorSpec(*t, value_range=ranges.get(t[0])) for t in inputs], options.input_specs)
    outputs = [TensorSpec(*t) for t in outputs]
    return LoadedModel(path=path, format=fmt, spec=ModelSpec(tuple(inputs), tuple(outputs)), details=details)


NCHWC_DOMAIN = "com.microsoft.nchwc"    # what ONNX Runtime's NCHWc transformer writes (x86 MLAS kernels)
# The ORT schema's TensorDataType (the same numbers as onnx.TensorProto's) -> numpy dtype names.
_ORT_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 8: "object",
               9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 14: "complex64", 15: "complex128"}


def _ort_flatbuffers():
    """ONNX Runtime's generated Python bindings of its ORT-format schema (``ort_flatbuffers_py.fbs``)."""
    import importlib.util
    import os
    import sys

    try:
        # ONNX Runtime's tools put the bindings' folder on sys.path and import them by this name; the folder is
        # added here the same way rather than by importing onnxruntime.tools, whose __init__ imports torch
        # whenever it is installed (measured: 3 s, for a helper this reader never uses).
        package = importlib.util.find_spec("onnxruntime")
        folder = os.path.join(list(package.submodule_search_locations)[0], "tools", "ort_format_model")
        if folder not in sys.path:
            sys.path.append(folder)
        import ort_flatbuffers_py.fbs as fbs
    except (ImportError, AttributeError, IndexError, TypeError) as exc:
        from deploykit.errors import MissingDependency

        raise MissingDependency(f"this onnxruntime has no ORT-format reader ({exc})",
                                "install the onnxruntime the project pins (pip install 'deploykit[onnx]')") from None
    return fbs


def _text(value) -> str:
    return value.decode("utf-8") if value else ""


def _ort_signature(fbs, graph) -> tuple:
    """([(name, dims, dtype)] of the inputs, the same of the outputs, {input: token-id range}) of an ORT graph."""
    initializers = {_text(t.Name()): t for t in map(graph.Initializers, range(graph.InitializersLength()))}
    values = {_text(arg.Name()): arg for arg in map(graph.NodeArgs, range(graph.NodeArgsLength()))}
    names_in = [_text(graph.Inputs(i)) for i in range(graph.InputsLength())]
    names_out = [_text(graph.Outputs(i)) for i in range(graph.OutputsLength())]
    inputs = [_ort_tensor(fbs, name, values.get(name)) for name in names_in if name not in initializers]
    ranges = {}
    for node in map(graph.Nodes, range(graph.NodesLength())):      # Gather(table, ids): ids index the table
        if _text(node.OpType()) == "Gather" and node.InputsLength() == 2 and _text(node.Inputs(0)) in initializers:
            size = int(initializers[_text(node.Inputs(0))].Dims(0))
            previous = ranges.get(_text(node.Inputs(1)), (0, size))
            ranges[_text(node.Inputs(1))] = (0, min(size, previous[1]))
    return inputs, [_ort_tensor(fbs, name, values.get(name)) for name in names_out], ranges


def _ort_tensor(fbs, name: str, arg) -> tuple:
    """(name, dims, dtype) of one graph input or output (``arg``: its ValueInfo)."""
    kind = arg.Type() if arg is not None else None
    if kind is None or kind.ValueType() != fbs.TypeInfoValue.TypeInfoValue.tensor_type or kind.Value() is None:
        raise UnsupportedModelError(f"graph input/output {name!r} is not a tensor",
                                    "deploykit runs models whose inputs and outputs are tensors")
    tensor = fbs.TensorTypeAndShape.TensorTypeAndShape()
    tensor.Init(kind.Value().Bytes, kind.Value().Pos)
    if tensor.ElemType() not in _ORT_DTYPES:
        raise ModelLoadError(f"graph input/output {name!r} has element type {tensor.ElemType()}",
                             "the file is damaged or was written by a newer ONNX Runtime")
    shape, dims = tensor.Shape(), []
    for dim in (map(shape.Dim, range(shape.DimLength())) if shape else ()):
        value = dim.Value()
        known = value is not None and value.DimType() == fbs.DimensionValueType.DimensionValueType.VALUE
        dims.append(value.DimValue() if known else (_text(value.DimParam()) if value else "") or "?")
    return name, tuple(dims), _ORT_DTYPES[tensor.ElemType()]


def _count_ort_nodes(fbs, graph, histogram, depth: int) -> None:
    """Count every node by op type (``domain:op`` outside ai.onnx), subgraphs (If, Loop, Scan bodies) included."""
    if depth > 64:
        raise ValueError("subgraphs nested deeper than any model")
    for node in map(graph.Nodes, range(graph.NodesLength())):
        domain = _text(node.Domain())
        histogram[f"{domain}:{_text(node.OpType())}" if domain not in ("", "ai.onnx") else _text(node.OpType())] += 1
        for attribute in map(node.Attributes, range(node.AttributesLength())):
            if attribute.Type() == fbs.AttributeType.AttributeType.GRAPH:
                _count_ort_nodes(fbs, attribute.G(), histogram, depth + 1)
            elif attribute.Type() == fbs.AttributeType.AttributeType.GRAPHS:
                for index in range(attribute.GraphsLength()):
                    _count_ort_nodes(fbs, attribute.Graphs(index), histogram, depth + 1)


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
        if self.model.format == Format.ORT:
            # ONNX Runtime picks the format by the .ort suffix; a renamed file would be parsed as protobuf.
            session_options.add_session_config_entry("session.load_model_format", "ORT")
            # A runtime-style file's saved optimisations apply only when replay is on (measured: without it the
            # unfused graph runs); an app shipping one turns it on, so the check runs what the app runs.
            session_options.add_session_config_entry("session.enable_saved_runtime_optimizations", "1")
        try:
            return ort.InferenceSession(model, session_options, providers=providers_for(self.options.device))
        except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail/InvalidGraph types
            detail = one_line(str(exc))
            raise ModelLoadError(f"ONNX Runtime cannot load {self.model.path}: {detail}",
                                 _load_remedy(self.model.format, detail)) from None

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
        if self.model.format == Format.ORT:
            raise UnsupportedModelError("ONNX Runtime cannot show the intermediate tensors of an ORT-format model "
                                        "(its graph cannot be edited to output them)",
                                        "locate with the .onnx the .ort was converted from")
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


def _load_remedy(fmt: Format, detail: str) -> str:
    """What to do about a file ONNX Runtime refused: an ORT-format file is converted again, an ONNX one re-exported."""
    if fmt != Format.ORT:
        return "the graph uses an op or opset this onnxruntime lacks; re-export with another --opset"
    if NCHWC_DOMAIN in detail:
        return ("x86-only NCHWc kernels (--ort-platform amd64) exist on x86-64 only: export it again with "
                "--ort-platform arm to run it on ARM")
    return "convert it again for this onnxruntime: deploykit export MODEL.onnx --to ort"


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
