"""Sparse TFLite weights (issue 27): MediaPipe's pose detector stores 38 fp16 conv kernels sparse behind DENSIFY ops,
which tf2onnx cannot read ("cannot reshape array of size 96 into shape (16,1,1,24)"). The files here are built
with LiteRT's own flatbuffer schema in the form the TFLite converter writes (sparse fp16 → DENSIFY → DEQUANTIZE →
CONV_2D), and LiteRT's DENSIFY kernel is the oracle for the expansion."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.litert


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _pack(model) -> bytes:
    import flatbuffers

    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _level(dense_size: int = 0, segments=None, indices=None):
    """One DimensionMetadataT: DENSE of ``dense_size``, or SPARSE_CSR with int32 segments and indices."""
    s = _schema()
    meta = s.DimensionMetadataT()
    meta.format, meta.denseSize = (0, dense_size) if segments is None else (1, 0)
    if segments is not None:
        meta.arraySegmentsType = meta.arrayIndicesType = s.SparseIndexVector.Int32Vector
        meta.arraySegments, meta.arrayIndices = s.Int32VectorT(), s.Int32VectorT()
        meta.arraySegments.values, meta.arrayIndices.values = list(segments), list(indices)
    return meta


def _sparsity(order, levels, block_map=None):
    params = _schema().SparsityParametersT()
    params.traversalOrder, params.blockMap, params.dimMetadata = list(order), block_map, levels
    return params


def _csr(dense: np.ndarray, order=(0, 1)):
    """(values, sparsity) of a 2-D array: dim order[0] dense, dim order[1] compressed (CSR over non-zeros)."""
    walked = dense.transpose(order)
    segments, indices, values = [0], [], []
    for row in walked:
        nonzero = np.flatnonzero(row)
        indices += nonzero.tolist()
        values += row[nonzero].tolist()
        segments.append(len(indices))
    levels = [_level(walked.shape[0]), _level(segments=segments, indices=indices)]
    return np.asarray(values, dense.dtype), _sparsity(order, levels)


def _block_csr(dense: np.ndarray, block: int):
    """(values, sparsity) of a 2-D array in ``block``x``block`` blocks: block rows dense, block columns compressed
    (the all-zero blocks dropped), each kept block stored whole, row-major."""
    rows, cols = dense.shape[0] // block, dense.shape[1] // block
    segments, indices, values = [0], [], []
    for i in range(rows):
        for j in range(cols):
            tile = dense[i * block:(i + 1) * block, j * block:(j + 1) * block]
            if tile.any():
                indices.append(j)
                values += tile.reshape(-1).tolist()
        segments.append(len(indices))
    levels = [_level(rows), _level(segments=segments, indices=indices), _level(block), _level(block)]
    return np.asarray(values, dense.dtype), _sparsity((0, 1, 2, 3), levels, block_map=[0, 1])


def _tensor(name: str, shape, dtype: int, buffer: int = 0, sparsity=None):
    tensor = _schema().TensorT()
    tensor.name, tensor.shape, tensor.type = name, np.asarray(shape, np.int32), dtype
    tensor.buffer, tensor.sparsity = buffer, sparsity
    return tensor


def _model(tensors, operators, inputs, outputs, constants, codes) -> bytes:
    """A one-subgraph .tflite: ``constants`` maps tensor index → array (each gets a buffer of its own)."""
    s = _schema()
    model, graph = s.ModelT(), s.SubGraphT()
    model.version, model.description = 3, "deploykit test"
    model.buffers = [s.BufferT()]
    for index, array in constants.items():
        buffer = s.BufferT()
        buffer.data = np.frombuffer(np.ascontiguousarray(array).tobytes(), np.uint8)
        model.buffers.append(buffer)
        tensors[index].buffer = len(model.buffers) - 1
    model.operatorCodes = []
    for code in codes:
        entry = s.OperatorCodeT()
        entry.builtinCode, entry.deprecatedBuiltinCode, entry.version = code, min(code, 127), 1
        model.operatorCodes.append(entry)
    graph.tensors, graph.operators, graph.inputs, graph.outputs = tensors, operators, inputs, outputs
    model.subgraphs = [graph]
    return _pack(model)


def _op(code: int, inputs, outputs, options=None, options_type: int = 0):
    op = _schema().OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = code, list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    return op


def _densify_only(values: np.ndarray, shape, sparsity) -> bytes:
    """A file whose one op is DENSIFY of a sparse constant: running it is LiteRT's own expansion."""
    s = _schema()
    tensors = [_tensor("sparse", shape, s.TensorType.FLOAT32, sparsity=sparsity),
               _tensor("dense", shape, s.TensorType.FLOAT32)]
    return _model(tensors, [_op(0, [0], [1])], [], [1], {0: values.astype(np.float32)},
                  [s.BuiltinOperator.DENSIFY])


def _run(model_bytes: bytes, *feeds) -> list:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    # the builtin kernels: XNNPACK cannot set up a graph whose one node is DENSIFY of a constant
    interpreter = Interpreter(model_content=model_bytes,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    for detail, value in zip(interpreter.get_input_details(), feeds):
        interpreter.set_tensor(detail["index"], value)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def _sparse_matrix(shape, seed: int, keep: float = 0.4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * (rng.random(shape) < keep)).astype(np.float32)


@pytest.mark.parametrize("order", [(0, 1), (1, 0)], ids=["row-major", "column-major"])
def test_csr_expansion_matches_litert_densify(order):
    from deploykit.transforms.tflite_prep import sparse_to_dense

    dense = _sparse_matrix((5, 7), seed=1)
    values, sparsity = _csr(dense, order)
    expected = _run(_densify_only(values, dense.shape, sparsity))[0]
    np.testing.assert_array_equal(expected, dense)                  # the encoding is TFLite's
    np.testing.assert_array_equal(sparse_to_dense(values, list(dense.shape), sparsity), dense)


def test_block_sparse_expansion_matches_litert_densify():
    from deploykit.transforms.tflite_prep import sparse_to_dense

    dense = np.kron(_sparse_matrix((3, 4), seed=2, keep=0.5) != 0, np.ones((2, 2))) * _sparse_matrix((6, 8), 3, 1.0)
    dense = dense.astype(np.float32)
    values, sparsity = _block_csr(dense, 2)
    np.testing.assert_array_equal(_run(_densify_only(values, dense.shape, sparsity))[0], dense)
    np.testing.assert_array_equal(sparse_to_dense(values, list(dense.shape), sparsity), dense)


def sparse_fp16_conv(out_channels: int = 16, in_channels: int = 8) -> bytes:
    """x [1,4,4,in] → CONV_2D 1x1 whose kernel is sparse fp16 → DENSIFY → DEQUANTIZE (fp16 → fp32), as MediaPipe's
    pose detector stores its 1x1 kernels (sparse along the input channels)."""
    s = _schema()
    kernel = _sparse_matrix((out_channels, in_channels), seed=4).astype(np.float16)
    values, sparsity = _csr(kernel)
    levels = [_level(out_channels), _level(1), _level(1), sparsity.dimMetadata[1]]
    shape = [out_channels, 1, 1, in_channels]
    tensors = [_tensor("x", [1, 4, 4, in_channels], s.TensorType.FLOAT32),
               _tensor("kernel_sparse", shape, s.TensorType.FLOAT16,
                       sparsity=_sparsity((0, 1, 2, 3), levels)),
               _tensor("kernel_fp16", shape, s.TensorType.FLOAT16),
               _tensor("kernel", shape, s.TensorType.FLOAT32),
               _tensor("bias", [out_channels], s.TensorType.FLOAT32),
               _tensor("y", [1, 4, 4, out_channels], s.TensorType.FLOAT32)]
    conv = s.Conv2DOptionsT()
    conv.padding, conv.strideW, conv.strideH = s.Padding.SAME, 1, 1
    operators = [_op(0, [1], [2]), _op(1, [2], [3]),
                 _op(2, [0, 3, 4], [5], conv, s.BuiltinOptions.Conv2DOptions)]
    bias = np.linspace(-1, 1, out_channels, dtype=np.float32)
    return _model(tensors, operators, [0], [5], {1: values, 4: bias},
                  [s.BuiltinOperator.DENSIFY, s.BuiltinOperator.DEQUANTIZE, s.BuiltinOperator.CONV_2D])


def test_densified_file_runs_identically_and_has_no_sparsity_left():
    from deploykit.transforms.tflite_prep import densify_sparse_constants

    original = sparse_fp16_conv()
    prepared = densify_sparse_constants(original)
    assert (prepared.densified, prepared.dropped_ops) == (1, 1)
    assert "DENSIFY" in prepared.note()
    model = _schema().ModelT.InitFromPackedBuf(bytearray(prepared.model_bytes), 0)
    graph = model.subgraphs[0]
    assert all(t.sparsity is None for t in graph.tensors)
    assert len(graph.operators) == 2 and list(graph.operators[0].inputs) == [1]    # DEQUANTIZE reads the constant
    x = np.random.default_rng(5).standard_normal((1, 4, 4, 8)).astype(np.float32)
    np.testing.assert_array_equal(_run(prepared.model_bytes, x)[0], _run(original, x)[0])


def test_a_file_without_sparse_weights_comes_back_unchanged():
    from deploykit.transforms.tflite_prep import densify_sparse_constants

    dense_only = densify_sparse_constants(sparse_fp16_conv()).model_bytes
    again = densify_sparse_constants(dense_only)
    assert again.model_bytes is dense_only and again.densified == 0 and again.note() == ""


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.onnxruntime
def test_sparse_fp16_weights_export_to_onnx_and_verify(tmp_path):
    """tf2onnx alone fails on the file as it fails on MediaPipe's pose detector; the export converts and verifies."""
    import tf2onnx

    from deploykit import api

    source = tmp_path / "sparse_conv.tflite"
    source.write_bytes(sparse_fp16_conv())
    with pytest.raises(ValueError, match="cannot reshape array"):
        tf2onnx.convert.from_tflite(str(source), opset=17, output_path=str(tmp_path / "bare.onnx"))
    result = api.export(str(source), "onnx", str(tmp_path / "sparse_conv.onnx"))
    assert result.passed, result.parity
    assert result.parity.outputs[0].max_abs < 1e-5, result.parity.outputs[0]
    notes = " ".join(n for hop in result.route for n in hop["notes"])
    assert "1 sparse weight tensor(s) expanded" in notes, notes


@pytest.mark.slow
@pytest.mark.tensorflow
@pytest.mark.onnxruntime
def test_mediapipe_pose_detection_exports_to_onnx(tmp_path):
    """mediapipe 0.10.14's pose detector (38 sparse fp16 kernels behind DENSIFY): exit 4 from tf2onnx before."""
    from tests.field import field_file

    source = field_file("mediapipe==0.10.14", "mediapipe/modules/pose_detection/pose_detection.tflite")
    proc = run_cli("export", str(source), "--to", "onnx", "-o", str(tmp_path / "pose.onnx"), "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "38 sparse weight tensor(s) expanded to dense and 38 DENSIFY op(s) removed" in proc.stdout
