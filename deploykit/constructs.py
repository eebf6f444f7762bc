"""Naming the construct in a user's model that a converter failed on (and where it sits).

Exporters bury the reason in pages of trace; these helpers find the line the user can act on.
Framework-free: they read error text and warnings, so any converter may use them.
"""
from __future__ import annotations

import contextlib
import os
import re

_DATA_DEPENDENT = ("GuardOnDataDependentSymNode", "data-dependent", "Could not guard on data-dependent")
_CALL_SITE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.+)')
DATA_DEPENDENT_REMEDY = "rewrite the branch with torch.cond(pred, true_fn, false_fn, (x,)) so that both branches are exported"


def data_dependent_site(error_text, baked_warnings=()) -> str:
    """'file.py:12 in forward: `if x.sum() > 0:`' when torch.export failed on an `if` on tensor values,
    or a TorchScript tracer warning says a tensor became a Python value; '' otherwise."""
    if error_text and any(marker in error_text for marker in _DATA_DEPENDENT):
        match = _CALL_SITE.search(error_text.split("The following call raised this error:")[-1])
        if match:
            return f"{os.path.basename(match.group(1))}:{match.group(2)} in {match.group(3)}: `{match.group(4).strip()}`"
        return "an `if`/loop on tensor values"
    for warning in baked_warnings:
        if "boolean" in str(warning.message) or "Python value" in str(warning.message):
            return f"{os.path.basename(warning.filename)}:{warning.lineno} (a tensor converted to a Python value)"
    return ""


@contextlib.contextmanager
def data_dependence_named(tool: str):
    """Inside a converter child: a torch.export failure on data-dependent control flow becomes a ConversionError
    naming the user's line and the remedy; any other failure passes through unchanged."""
    from deploykit.errors import ConversionError
    from deploykit.text import exception_chain

    try:
        yield
    except Exception as exc:  # noqa: BLE001 - the exporters raise many types
        site = data_dependent_site(exception_chain(exc))
        if site:
            raise ConversionError(f"data-dependent control flow at {site}: torch.export (inside {tool}) cannot "
                                  "capture it", DATA_DEPENDENT_REMEDY) from None
        raise


# PyTorch's fused inference fast path (nn.TransformerEncoder / MultiheadAttention in eval mode, no grad): a trace
# records these single ops, which no exporter (ONNX, torch.export consumers) converts as they are. The TorchScript
# ONNX exporter of deploykit writes the encoder layer out in plain ONNX ops (converters/torch_to_onnx.py); a
# padding mask with nested tensors on (the default) and the others stay refused.
FASTPATH_OPS = ("aten::_transformer_encoder_layer_fwd", "aten::_native_multi_head_attention",
                "aten::_transformer_decoder_only_layer_fwd", "aten::_nested_tensor_from_mask")
FASTPATH_REMEDY = ("trace the model again with the fast path off — torch.backends.mha.set_fastpath_enabled(False) "
                   "before torch.jit.trace — or export it with torch.export (.pt2), which does not take the fast path")


def fused_fastpath_ops(module) -> dict:
    """{op: count} of PyTorch's fused fast-path ops in a TorchScript module's graph ({} for anything else)."""
    graph = getattr(module, "inlined_graph", None)
    if graph is None:
        return {}
    found: dict = {}
    for node in graph.nodes():
        if node.kind() in FASTPATH_OPS:
            found[node.kind()] = found.get(node.kind(), 0) + 1
    return found


def refuse_fused_fastpath(module, what: str, converted=()) -> None:
    """Raise ConversionError naming the fused fast-path ops a traced module carries, and the remedy; a module whose
    fast-path ops are all in ``converted`` (those the caller writes out itself) passes."""
    from deploykit.errors import ConversionError

    found = {op: count for op, count in fused_fastpath_ops(module).items() if op not in converted}
    if found:
        ops = ", ".join(f"{op} ×{count}" for op, count in found.items())
        raise ConversionError(f"the TorchScript archive was traced through PyTorch's fused fast path ({ops}), which "
                              f"{what} cannot convert", FASTPATH_REMEDY)


# The TorchScript ONNX exporter's symbolic functions need ranks: "ONNX export of transpose for tensor of unknown rank.
# [Caused by the value ... scope: Enc::/torch.nn.modules.transformer.TransformerEncoder::enc/...::self_attn # file:line".
_UNKNOWN_RANK = re.compile(r"ONNX export of (\w+) for tensor of unknown rank")
_SCOPE = re.compile(r"scope: ([^\s#]+)")
UNKNOWN_RANK_REMEDY = ("export the model with torch.export and torch.export.save (.pt2), which needs no TorchScript, "
                       "and convert that file")


def unknown_rank_site(error_text) -> str:
    """'transpose in enc.layers.0.self_attn (MultiheadAttention)' when the TorchScript exporter failed on a tensor
    of unknown rank, naming the op and the module it came from; '' for any other failure."""
    match = _UNKNOWN_RANK.search(error_text or "")
    if not match:
        return ""
    scope = _SCOPE.search(error_text[match.end():])
    # Each "/"-separated scope step is "qualified.Class::attribute"; the first is the root module (no attribute).
    steps = [step.partition("::") for step in scope.group(1).split("/") if step] if scope else []
    path = ".".join(attribute for _cls, _sep, attribute in steps if attribute)
    if not path:
        return f"{match.group(1)} (module unknown: the graph carries no scope)"
    return f"{match.group(1)} in {path} ({steps[-1][0].rsplit('.', 1)[-1]})"
