"""PyTorch: load TorchScript, torch.export programs and nn.Modules; run them eagerly."""
from __future__ import annotations

import importlib
import json
from typing import Mapping

import numpy as np
import torch

from deploykit.errors import ModelLoadError, UnsupportedModelError, UsageError
from deploykit.formats import Format, pickled_globals, pt2_pickled_parts
from deploykit.inputs import random_feeds
from deploykit.model import LoadedModel, LoadOptions
from deploykit.quiet import captured_output
from deploykit.runner import RunnerBase, RunnerOptions, first_line
from deploykit.spec import ModelSpec, TensorSpec, merge_user_specs
from deploykit.text import one_line
from deploykit.torch_signature import SPEC_EXTRA_FILE, embedding_sizes, forward_arg_names, with_token_ranges



def load_model(path: str, fmt: Format, options: LoadOptions) -> LoadedModel:
    loaders = {
        Format.TORCHSCRIPT: _load_torchscript, Format.EXPORTED_PROGRAM: _load_exported_program,
        Format.PYTHON_FACTORY: _load_factory, Format.STATE_DICT: _refuse_state_dict,
        Format.TORCH_PICKLE: _load_pickle,
    }
    module, inputs, details = loaders[fmt](path, options)
    inputs = _merge_user_specs(inputs, options.input_specs, path)
    inputs = with_token_ranges(inputs, embedding_sizes(module))
    inputs = [_label_layout(t) for t in inputs]
    spec = ModelSpec(tuple(inputs), _probe_outputs(module, inputs))
    return LoadedModel(path=path, format=fmt, spec=spec, handle=module, weights=options.weights, details=details)


def _load_torchscript(path: str, options: LoadOptions):
    extra = {SPEC_EXTRA_FILE: ""}
    try:
        with captured_output():   # torch warns in C++ when a scripted file has no traced inputs
            module = torch.jit.load(path, map_location="cpu", _extra_files=extra, _restore_shapes=True)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError subclasses with long C++ traces
        raise ModelLoadError(f"{path}: cannot load this TorchScript archive ({first_line(exc)})",
                             "the file may be truncated or written by a newer torch; save it again") from None
    module.eval()
    names = [a.name for a in module.forward.schema.arguments[1:]]
    if extra[SPEC_EXTRA_FILE]:
        stored = ModelSpec.from_dict(json.loads(extra[SPEC_EXTRA_FILE]))
        return module, list(stored.inputs), {"torchscript": "with deploykit signature"}
    inputs = []
    for name, value in zip(names, list(module.forward.graph.inputs())[1:]):
        sizes = value.type().sizes() if hasattr(value.type(), "sizes") else None
        dtype = _scalar_type_name(value.type())
        if not sizes or dtype is None:
            return module, [TensorSpec(n, None) for n in names], {"torchscript": "scripted (no input shapes)"}
        inputs.append(TensorSpec(name, tuple(sizes), dtype))
    return module, inputs, {"torchscript": "traced"}


def _load_exported_program(path: str, options: LoadOptions):
    pickled = [] if options.trust_pickle else pt2_pickled_parts(path)
    if pickled:
        raise UnsupportedModelError(
            f"{path} is a torch.export archive with pickled parts ({', '.join(pickled[:3])}); loading it runs "
            "arbitrary code from the file", "re-export it with plain tensors (torch.export.save), or pass "
            "--trust-pickle if you trust its author")
    try:
        program = torch.export.load(path)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot load this torch.export archive ({first_line(exc)})",
                             "the file may be truncated or written by another torch version; export it again") from None
    user_inputs = set(program.graph_signature.user_inputs)
    inputs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            value = node.meta.get("val")
            if not isinstance(value, torch.Tensor):
                raise UnsupportedModelError(f"{path}: input {node.name!r} is not a tensor",
                                            "export a model whose forward takes tensors only")
            shape = tuple(int(d) if isinstance(d, int) else str(d) for d in value.shape)
            inputs.append(TensorSpec(node.name, shape, _dtype_name(value.dtype)))
    module = program.module()
    return module, inputs, {"exported_program": program, "dynamic": any(not t.is_static for t in inputs)}


def _load_factory(reference: str, options: LoadOptions):
    module_name, _, attribute = reference.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"cannot import {reference} ({exc})",
                             ("give package.module:factory importable by Python: install the package or put its "
                              "folder on PYTHONPATH (the current directory is never searched)")) from None
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"{reference} returned {type(model).__name__}, not a torch.nn.Module",
                                    "point at a function or class that builds the model")
    if options.weights:
        _load_weights(model, options.weights)
    model.eval()
    names = forward_arg_names(model)
    example = getattr(model, "example_inputs", None)
    example = example() if callable(example) else example
    if example is not None:
        inputs = [TensorSpec(n, tuple(t.shape), _dtype_name(t.dtype)) for n, t in zip(names, example)]
        return model, inputs, {"factory": reference}
    return model, [TensorSpec(n, None) for n in names], {"factory": reference}


def _load_weights(model: torch.nn.Module, weights: str) -> None:
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{weights}: no such weights file", "check the --weights path") from None
    except Exception as exc:  # noqa: BLE001 - UnpicklingError, RuntimeError from zip reader, ...
        raise ModelLoadError(f"{weights}: not a loadable state_dict ({first_line(exc)})",
                             "save weights with torch.save(model.state_dict(), path)") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = one_line(str(exc))
        raise ModelLoadError(f"{weights} does not fit the model: {detail}",
                             "use the weights saved from this exact architecture") from None


def _refuse_state_dict(path: str, options: LoadOptions):
    raise UsageError(f"{path} holds only weights (a state_dict), not a model",
                     f"give the model code too: deploykit ... package.module:factory --weights {path}")


def _load_pickle(path: str, options: LoadOptions):
    if not options.trust_pickle:
        classes = ", ".join(pickled_globals(path)[:4])
        raise UnsupportedModelError(
            f"{path} is a pickled Python object ({classes}); loading it runs arbitrary code from the file",
            "re-save it as TorchScript/torch.export or a state_dict, or pass --trust-pickle if you trust its author")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(f"{path}: cannot unpickle ({first_line(exc)})",
                             "the classes it names must be importable (installed, or their folder on PYTHONPATH)") from None
    if not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"{path} holds a {type(model).__name__}, not a torch.nn.Module",
                                    "save the whole module, or give package.module:factory --weights")
    model.eval()
    return model, [TensorSpec(n, None) for n in forward_arg_names(model)], {}


def _merge_user_specs(inputs: list, user_specs: tuple, path: str) -> list:
    """The core's --input rule, then: every input must have a shape to probe the model with."""
    inputs = merge_user_specs(inputs, user_specs)
    unknown_shape = [i.name for i in inputs if i.shape is None]
    if unknown_shape:
        raise UsageError(f"{path} does not record its input shapes ({', '.join(unknown_shape)})",
                         "give them, e.g. --input " + f"{unknown_shape[0]}:1x3x224x224:float32, or --inputs data.npz")
    return inputs






def _label_layout(tensor: TensorSpec) -> TensorSpec:
    """PyTorch's convention: a 4-D float input is NCHW (recorded so that converters that go NHWC can map it)."""
    if tensor.layout is None and tensor.shape is not None and len(tensor.shape) == 4 and tensor.dtype.startswith("float"):
        return TensorSpec(tensor.name, tensor.shape, tensor.dtype, "NCHW", tensor.value_range)
    return tensor


def _probe_outputs(module, inputs: list) -> tuple:
    feeds = random_feeds(ModelSpec(tuple(inputs)), samples=1)[0]
    try:
        outputs = call_module(module, inputs, feeds)
    except Exception as exc:  # noqa: BLE001 - the user's forward can raise anything
        shapes = ", ".join(t.describe() for t in inputs)
        raise UsageError(f"the model fails on inputs {shapes}: {first_line(exc)}",
                         "give the right input shapes with --input name:DIMS[:dtype]") from None
    return tuple(_label_layout(TensorSpec(name, tuple(v.shape), str(v.dtype))) for name, v in outputs.items())


def call_module(module, inputs: list, feeds: Mapping, device: str = "cpu") -> dict:
    args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])).to(device) for t in inputs]
    with torch.inference_mode():
        result = module(*args)
    return flatten_outputs(result)


def flatten_outputs(result) -> dict:
    """Name outputs: 'output' for one tensor, 'output_<i>' for sequences, keys for dicts."""
    if isinstance(result, torch.Tensor):
        return {"output": result.detach().cpu().numpy()}
    if isinstance(result, dict):
        return {str(k): v.detach().cpu().numpy() for k, v in result.items()}
    flat = []
    _flatten_into(result, flat)
    return {f"output_{i}": t.detach().cpu().numpy() for i, t in enumerate(flat)}


def _flatten_into(value, flat: list) -> None:
    if isinstance(value, torch.Tensor):
        flat.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _flatten_into(item, flat)
    elif isinstance(value, dict):
        for item in value.values():
            _flatten_into(item, flat)
    else:
        raise UnsupportedModelError(f"the model returns a {type(value).__name__}",
                                    "return tensors (or tuples/lists/dicts of tensors) from forward")




def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _scalar_type_name(jit_type):
    scalar = jit_type.scalarType() if hasattr(jit_type, "scalarType") else None
    names = {"Float": "float32", "Double": "float64", "Half": "float16", "Long": "int64", "Int": "int32",
             "Bool": "bool", "Byte": "uint8", "Char": "int8", "Short": "int16", "BFloat16": "bfloat16"}
    return names.get(scalar) if scalar else None


class TorchEagerRunner(RunnerBase):
    """Runs a loaded PyTorch model eagerly (the research baseline)."""

    def __init__(self, model: LoadedModel, options: RunnerOptions = RunnerOptions()):
        self.model, self.options = model, options
        self.module, self.device = model.handle, "cpu"

    def open(self) -> None:
        if self.options.threads:
            torch.set_num_threads(self.options.threads)
        if self.options.device in ("cuda", "auto") and torch.cuda.is_available():
            self.device = "cuda"
            self.module = self.module.to("cuda")
        elif self.options.device == "cuda":
            raise UsageError("PyTorch sees no CUDA device here", "run on a machine with an NVIDIA GPU, or use cpu")
        if self.options.compile:
            self.module = torch.compile(self.module)   # compiled lazily: the first run pays for it

    @property
    def active_providers(self) -> list:
        kind = "torch.compile" if self.options.compile else "eager"
        return [f"{kind} on {self.device} ({torch.get_num_threads()} threads)"]

    def run(self, feeds: Mapping) -> dict:
        outputs = call_module(self.module, list(self.model.spec.inputs), feeds, self.device)
        return dict(zip(self.model.spec.output_names, outputs.values()))

    def capture(self, feeds_list: list) -> tuple:
        """(GraphView dict, per sample {FX node: value}): the exported graph interpreted node by node, so every
        layer's output is the value eager PyTorch computes. Needs a graph: a .pt2 has one; a module is exported."""
        from deploykit.graphview import view_points

        graph_module = self._graph_module(feeds_list[0])
        view = fx_view(graph_module)
        points = set(view_points(view))
        inputs = list(self.model.spec.inputs)
        values = []
        for feeds in feeds_list:
            recorded: dict = {}
            args = [torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in inputs]
            with torch.inference_mode():
                _Recorder(graph_module, points, recorded).run(*args)
            values.append(recorded)
        return view.to_dict(), values

    def _graph_module(self, feeds: Mapping):
        if isinstance(self.module, torch.fx.GraphModule):       # a .pt2: its program's module, unlifted once
            return self.module
        if isinstance(self.module, torch.jit.ScriptModule):
            raise UnsupportedModelError("a TorchScript source has no graph that --locate can follow layer by layer",
                                        "give the model as a torch.export archive (.pt2) or module:factory + weights")
        args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[t.name])) for t in self.model.spec.inputs)
        try:
            return torch.export.export(self.module, args, strict=False).module()
        except Exception as exc:  # noqa: BLE001 - torch.export raises many types
            raise UnsupportedModelError(f"torch.export cannot capture the source's graph ({first_line(exc)}), so "
                                        "--locate cannot follow it layer by layer", "give a .pt2 archive") from None


class _Recorder(torch.fx.Interpreter):
    """Runs a GraphModule node by node and keeps the tensors named in ``points``."""

    def __init__(self, module, points: set, recorded: dict):
        super().__init__(module)
        self.points, self.recorded = points, recorded

    def run_node(self, node):
        result = super().run_node(node)
        if node.name in self.points and isinstance(result, torch.Tensor):
            self.recorded[node.name] = result.detach().cpu().numpy()
        return result


def fx_view(graph_module):
    """The GraphView of an (unlifted) FX GraphModule: get_attr parameters and buffers are its constants,
    named after their module path (``features.3.conv.0.weight``), which is what ONNX exporters call them."""
    from deploykit.graphview import Constant, GraphView, Op, digest, fold_constant_ops

    constants, ops, outputs = {}, [], []
    for node in graph_module.graph.nodes:
        if node.op == "get_attr":
            value = _attribute(graph_module, node.target)
            if isinstance(value, torch.Tensor):
                array = value.detach().cpu().numpy()
                constants[node.name] = Constant(list(array.shape), digest(array) if array.size > 1 else "",
                                                node.target, array.dtype.name)
        elif node.op in ("call_function", "call_method", "call_module"):
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
            ops.append(Op(node.name, str(node.target), [a.name for a in node.all_input_nodes], [node.name],
                          path or node.name))
        elif node.op == "output":
            outputs = [a.name for a in node.all_input_nodes]
    return GraphView(fold_constant_ops(ops, constants), constants, outputs)


def _attribute(module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module
