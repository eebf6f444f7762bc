"""A .tflite file made readable for tf2onnx: sparse constant tensors stored dense, their DENSIFY ops gone.

TFLite can store a weight sparse (``Tensor.sparsity``: per dimension dense, or CSR segments + indices) with a
DENSIFY op that expands it at load time; MediaPipe's pose detector keeps 38 fp16 1x1-conv kernels so
(sparse → DENSIFY → DEQUANTIZE fp16→fp32 → CONV_2D). tf2onnx's TFLite reader ignores ``sparsity``: it reshapes the
buffer's non-zero values to the dense shape ("cannot reshape array of size 96 into shape (16,1,1,24)") and has no
DENSIFY handler. Expanding the values here is exact — it is what DENSIFY computes — so the model's meaning is
unchanged; the export's check still judges the result against the original file.
"""
from __future__ import annotations

from dataclasses import dataclass

_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "INT8": "int8", "UINT8": "uint8",
           "INT16": "int16", "INT32": "int32", "INT64": "int64", "BOOL": "bool"}


@dataclass(frozen=True)
class Prepared:
    """The flatbuffer to convert and what was changed to make it so (nothing: ``model_bytes`` is the input)."""
    model_bytes: bytes
    densified: int = 0          # sparse constant tensors stored dense
    dropped_ops: int = 0        # DENSIFY ops removed (their consumers read the dense constant)

    def note(self) -> str:
        """One clause for the report, empty when nothing changed."""
        if not self.densified:
            return ""
        return (f"{self.densified} sparse weight tensor(s) expanded to dense and {self.dropped_ops} DENSIFY op(s) "
                f"removed before tf2onnx (which reads no TFLite sparsity)")


def densify_sparse_constants(model_bytes: bytes) -> Prepared:
    """``model_bytes`` with every sparse constant tensor stored dense and every DENSIFY op that reads one removed.

    A file with no sparse constant (or with weights outside the flatbuffer) comes back unchanged."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    if any(getattr(buffer, "offset", 0) > 1 for buffer in model.buffers or []):
        return Prepared(model_bytes)        # > 2 GB models keep data outside: re-packing would lose it
    densify = _opcode_indices(model, schema.BuiltinOperator.DENSIFY)
    densified = dropped = 0
    for graph in model.subgraphs or []:
        dense = _densify_tensors(model, graph, schema)
        densified += len(dense)
        dropped += _drop_densify_ops(graph, densify, dense)
    if not densified:
        return Prepared(model_bytes)
    _empty_unread_buffers(model)
    import flatbuffers

    builder = flatbuffers.Builder(len(model_bytes) * 2 + 4096)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return Prepared(bytes(builder.Output()), densified, dropped)


def _opcode_indices(model, builtin: int) -> set:
    return {i for i, code in enumerate(model.operatorCodes or [])
            if max(code.builtinCode or 0, code.deprecatedBuiltinCode or 0) == builtin}


def _densify_tensors(model, graph, schema) -> set:
    """Indices of the tensors of ``graph`` that were sparse constants and now hold their dense values (each in a
    buffer of its own: a shared buffer is left as the other tensors read it)."""
    import numpy as np

    names = {value: key for key, value in vars(schema.TensorType).items() if not key.startswith("_")}
    done = set()
    for index, tensor in enumerate(graph.tensors or []):
        buffer = model.buffers[tensor.buffer] if tensor.buffer else None
        if tensor.sparsity is None or buffer is None or buffer.data is None or len(buffer.data) == 0:
            continue
        dtype = _DTYPES.get(names.get(tensor.type, ""))
        if dtype is None:
            continue            # a type numpy cannot hold (int4, string): left for tf2onnx to name
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), dtype)
        dense = sparse_to_dense(values, [int(d) for d in tensor.shape], tensor.sparsity)
        fresh = schema.BufferT()
        fresh.data = np.frombuffer(dense.tobytes(), np.uint8)
        model.buffers.append(fresh)
        tensor.buffer, tensor.sparsity = len(model.buffers) - 1, None
        done.add(index)
    return done


def _empty_unread_buffers(model) -> None:
    """Drop the data of buffers no tensor reads any more (the sparse values just expanded), keeping indices stable."""
    read = {int(t.buffer) for graph in model.subgraphs or [] for t in graph.tensors or []}
    read |= {int(m.buffer) for m in model.metadata or []}          # metadata lives in buffers too
    for index, buffer in enumerate(model.buffers):
        if index not in read:
            buffer.data = None


def _drop_densify_ops(graph, densify: set, dense: set) -> int:
    """Remove each DENSIFY op whose input is now dense, its consumers reading that input instead. An op whose output
    is a graph output stays (the output's tensor must keep its producer)."""
    rewire = {}
    kept = []
    outputs = {int(i) for i in (graph.outputs if graph.outputs is not None else [])}
    for op in graph.operators or []:
        source, target = (int(op.inputs[0]), int(op.outputs[0])) if op.opcodeIndex in densify else (-1, -1)
        if source in dense and target not in outputs:
            rewire[target] = source
        else:
            kept.append(op)
    for op in kept:
        if op.inputs is not None:
            op.inputs = [rewire.get(int(i), int(i)) for i in op.inputs]
    graph.operators = kept
    return len(rewire)


def sparse_to_dense(values, shape: list, sparsity):
    """The dense array of a TFLite sparse tensor: ``values`` (its buffer), the dense ``shape``, and its
    ``SparsityParametersT`` (traversal order, block map, per-level DENSE size or SPARSE_CSR segments + indices),
    as TFLite's FormatConverter expands it."""
    import numpy as np

    order = [int(d) for d in sparsity.traversalOrder]
    blocks = [int(d) for d in (sparsity.blockMap if sparsity.blockMap is not None else [])]
    levels = sparsity.dimMetadata
    rank = len(shape)
    coords = np.zeros((1, rank + len(blocks)), np.int64)     # one row per value, the expanded dims' coordinates
    position = np.zeros(1, np.int64)                          # where the next level (or the data) is indexed
    for level, meta in zip(order, levels):
        if meta.format == 0:                                  # DENSE: every coordinate 0 .. dense_size - 1
            size = int(meta.denseSize)
            position = (position[:, None] * size + np.arange(size)).reshape(-1)
            coords = np.repeat(coords, size, axis=0)
            coords[:, level] = np.tile(np.arange(size), len(coords) // size)
        else:                                                 # SPARSE_CSR: the segment's stored indices
            segments = np.asarray(meta.arraySegments.values, np.int64)
            indices = np.asarray(meta.arrayIndices.values, np.int64)
            starts, counts = segments[position], segments[position + 1] - segments[position]
            coords = np.repeat(coords, counts, axis=0)
            position = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
            coords[:, level] = indices[position]
    if len(position) != len(values):
        raise ValueError(f"sparse tensor has {len(values)} values, its sparsity describes {len(position)}")
    block_size = {dim: int(levels[order.index(rank + j)].denseSize) for j, dim in enumerate(blocks)}
    original = [coords[:, d] * block_size.get(d, 1) for d in range(rank)]
    for j, dim in enumerate(blocks):
        original[dim] = original[dim] + coords[:, rank + j]
    dense = np.zeros(shape, values.dtype)
    dense[tuple(original)] = values[position]
    return dense
