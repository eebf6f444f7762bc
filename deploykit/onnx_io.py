"""Reading ONNX files: parsed and checked once per process, shared by loaders, converters and inspect.

``onnx`` is imported inside the functions: the core never imports a framework at module level.
"""
from __future__ import annotations

import functools
import os

from deploykit.errors import ModelLoadError
from deploykit.text import one_line

# protobuf refuses to parse a message over 2 GiB; checking first spares reading a 12 GB file whole.
MAX_PROTO_BYTES = 2**31 - 1


def read_onnx(path: str, with_weights: bool = False):
    """The parsed and checked ModelProto of ``path``; a corrupt or truncated file raises ModelLoadError.

    Cached by (path, size, mtime): the loader, the layout probe of a converter and `inspect`
    parse a file once between them. Treat the result as read-only.
    """
    stat = os.stat(path)
    if stat.st_size > MAX_PROTO_BYTES:
        raise ModelLoadError(f"{path}: {stat.st_size:,} bytes is over the 2 GiB that one ONNX protobuf can hold, "
                             "so it is no valid ONNX file", "save large models with external data "
                             "(onnx.save(model, path, save_as_external_data=True)) and give the .onnx beside its data")
    return _read(os.path.abspath(path), stat.st_size, stat.st_mtime_ns, with_weights)


@functools.lru_cache(maxsize=8)
def _read(path: str, _size: int, _mtime: int, with_weights: bool):
    import onnx

    try:
        proto = onnx.load(path, load_external_data=with_weights)
        external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer)
        # A model with external weights is checked from its path (the checker resolves the side files).
        onnx.checker.check_model(path if external and not with_weights else proto)
    except Exception as exc:  # noqa: BLE001 - DecodeError, ValidationError, OSError
        detail = one_line(str(exc), 200) or type(exc).__name__
        raise ModelLoadError(f"{path}: not a valid ONNX model ({detail})",
                             "the file is truncated or corrupt: export or copy it again") from None
    return proto


def drop_unused_initializers(graph) -> None:
    """Remove the initializers no node (of any body) and no graph output reads, and their graph-input entries (older
    exporters list weights as inputs too): a rewrite that replaced their readers leaves them behind, runtimes warn
    about them and they would double the file."""
    read = {name for node in every_node(graph) for name in node.input} | {o.name for o in graph.output}
    dropped = {init.name for init in graph.initializer if init.name not in read}
    kept = [init for init in graph.initializer if init.name not in dropped]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    listed = [i for i in graph.input if i.name not in dropped]
    del graph.input[:]
    graph.input.extend(listed)


def every_node(graph):
    """Every node of an ONNX graph, those of If/Loop bodies included (a body may read the outer graph's names)."""
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for sub in list(attribute.graphs) + ([attribute.g] if attribute.HasField("g") else []):
                yield from every_node(sub)
