"""How a PyTorch model's signature is read: shared by the torch runtime and the samples that write it.

Part of the plug-in API (runtimes and sample_models import it, never each other). torch is imported inside
functions only, so importing this module stays cheap.
"""
from __future__ import annotations

import inspect

from deploykit.spec import TensorSpec

SPEC_EXTRA_FILE = "deploykit_spec.json"   # written by `samples build` into TorchScript archives


def embedding_sizes(module) -> list:
    """The row counts of every embedding table in a module (nn.Module or an ExportedProgram's graph)."""
    import torch

    sizes = []
    for sub in module.modules():
        if isinstance(sub, torch.nn.Embedding) or getattr(sub, "original_name", "") == "Embedding":
            sizes.append(int(sub.weight.shape[0]))
    graph = getattr(module, "graph", None)
    if isinstance(graph, torch.fx.Graph) and not sizes:
        for node in graph.nodes:   # an ExportedProgram's module: look for aten.embedding
            if node.op == "call_function" and "embedding" in str(node.target):
                weight = node.args[0].meta.get("val") if hasattr(node.args[0], "meta") else None
                if weight is not None:
                    sizes.append(int(weight.shape[0]))
    return sizes


def with_token_ranges(inputs: list, table_sizes: list) -> list:
    """Integer inputs of a model with embedding tables draw ids below the smallest table size."""
    if not table_sizes:
        return inputs
    high = min(table_sizes)
    return [TensorSpec(i.name, i.shape, i.dtype, i.layout, (0, high))
            if i.dtype.startswith("int") and i.value_range is None else i for i in inputs]


def forward_arg_names(model) -> list:
    """The positional parameter names of ``model.forward``: the input names of an exported signature."""
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
