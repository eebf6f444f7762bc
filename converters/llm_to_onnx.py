"""Causal LM -> one ONNX graph with the KV cache as explicit tensors, for ONNX Runtime (child job).

The cached decoder (``deploykit.transforms.cached_decoder``) is exported once by torch's dynamo exporter with the
token count T dynamic (``tokens[1, T]``, ``input_pos[T]``; the caches fixed at the context): the same graph serves
prefill (any T up to the context, contract ``prefill_len=None``) and decode (T = 1). The dynamo exporter keeps the
tied embedding / lm_head as one initializer (SmolLM2-135M: 540 MB, one file); the TorchScript exporter also works
but stored it twice (652 MB). Below protobuf's 2 GiB the file is self-contained; above it the weights go to one
side file ``<name>.data``, returned in "files". The contract is also written into the model's ``metadata_props``
(``deploykit.causal_lm``, JSON), so a file separated from its manifest still says what it is.

Quantized modes put every MatMul weight, the lm_head included, into ONNX Runtime's ``MatMulNBits`` (block-wise
along the input dim, blocks of 32, int8 compute of the activations per block: ``accuracy_level`` 4), and the
embedding into ``GatherBlockQuantized``:

- ``int4``: 4-bit asymmetric weights (``matmul_nbits_quantizer``), the embedding 4-bit as well;
- ``int8``: 8-bit symmetric weights, the embedding 8-bit. ORT's ``quantize_dynamic`` (MatMulInteger with one
  activation scale per tensor) was tried first and dropped: on SmolLM2-135M its logits were off by up to 16
  (of ~27) and the greedy text changed at the 7th token — one per-tensor scale cannot hold the decoder's outlier
  channels; per-block scales (MatMulNBits) stay within 1.2 and keep the text.
"""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

from deploykit import causal_lm
from deploykit.errors import ConversionError, UsageError
from deploykit.quiet import captured_output

MODES = ("fp32", "int8", "int4")
BLOCK_SIZE = 32                     # the finest MatMulNBits block; GGUF's Q4/Q8 blocks are 32 as well
ACCURACY_LEVEL = 4                  # MatMulNBits computes with int8 activations (per block): ~2x faster on CPU
METADATA_KEY = "deploykit.causal_lm"
EXTERNAL_DATA_THRESHOLD = 1_900_000_000     # protobuf's 2 GiB limit, with headroom for the graph
REMEDY = "run with --debug for the exporter's log; try --to tflite or --to executorch"


def convert(request: dict, arrays: dict) -> dict:
    """Child side: load the source, export the cached decoder to one ONNX graph, quantize if asked, write it."""
    del arrays          # weight-only quantization needs no calibration feeds
    mode = request.get("quantize") or "fp32"
    if mode not in MODES:
        raise UsageError(f"--quantize {mode} is not an ONNX mode for a causal LM", f"give one of {', '.join(MODES)}")
    from deploykit.transforms import cached_decoder, causal_lm_source

    loaded = causal_lm_source.load(request["source"])
    max_context = int(request["max_context"])
    causal_lm.check_context(max_context, None, loaded.info)
    contract = causal_lm_source.contract_for(loaded, max_context, None, mode)
    decoder = cached_decoder.build(loaded.model, max_context, request.get("fault") or "")
    output = Path(request["output"])
    notes = [f"one ONNX graph for prefill (any length up to {max_context}) and decode (T=1), "
             f"context {max_context}"]
    with tempfile.TemporaryDirectory(prefix="deploykit-llm-onnx-", dir=output.parent) as tmp:
        exported = Path(tmp) / "decoder.onnx"
        _export(decoder, contract, exported)
        proto = _load(exported)
    if mode != "fp32":
        proto, note = _quantize(proto, mode, contract.vocab)
        notes.append(note)
    _check_io(proto, contract)
    _stamp(proto, contract)
    files = _save(proto, output)
    return {"contract": contract.to_dict(), "notes": notes, "files": files}


def _export(decoder, contract: causal_lm.DecoderContract, path: Path) -> None:
    """torch.onnx.export (dynamo) with T dynamic; a failure is one line naming the exporter."""
    import torch

    from deploykit.transforms.causal_lm_source import example_inputs

    # torch.export specializes a dim whose example size is 1: the example takes 2 tokens.
    steps = torch.export.Dim("steps", min=1, max=contract.max_context)
    shapes = {"tokens": {1: steps}, "input_pos": {0: steps}, "k_cache": None, "v_cache": None}
    weights = sum(p.numel() * p.element_size() for p in decoder.parameters())
    try:
        with torch.no_grad(), captured_output(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(_int64_positions(decoder), example_inputs(contract, 2), str(path), dynamo=True,
                              external_data=weights > EXTERNAL_DATA_THRESHOLD, input_names=list(causal_lm.INPUTS),
                              output_names=list(causal_lm.OUTPUTS), dynamic_shapes=shapes)
    except Exception as exc:  # noqa: BLE001 - the exporter raises anything from torch.export to onnxscript
        text = str(exc).strip().splitlines()
        raise ConversionError(f"torch.onnx.export (dynamo) could not export the cached decoder "
                              f"({type(exc).__name__}: {text[0][:200] if text else ''})", REMEDY) from None


def _int64_positions(decoder):
    """The decoder with its positions widened to int64 inside the graph (the input stays int32): the dynamo
    exporter turns ``table[int32 positions]`` into a GatherND with int32 indices, which ONNX does not allow and
    ONNX Runtime refuses to load ("Type 'tensor(int32)' ... of operator (GatherND) is invalid")."""
    import torch

    class Int64Positions(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, tokens, input_pos, k_cache, v_cache):
            return self.inner(tokens, input_pos.long(), k_cache, v_cache)

    return Int64Positions(decoder).eval()


def _load(path: Path):
    import onnx

    return onnx.load(str(path))         # external data, if any, comes into memory with it


def _quantize(proto, mode: str, vocab: int):
    """``proto`` with its weights quantized (ORT's quantizer edits it in place); and the note saying how."""
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    bits = 4 if mode == "int4" else 8
    _untie_lm_head(proto)
    # ORT's Gather quantizer writes int4 only: an 8-bit embedding is written here (_embedding_8bit).
    config = DefaultWeightOnlyQuantConfig(block_size=BLOCK_SIZE, is_symmetric=bits == 8, bits=bits,
                                          accuracy_level=ACCURACY_LEVEL,
                                          op_types_to_quantize=("MatMul", "Gather") if bits == 4 else ("MatMul",))
    try:
        with captured_output(), warnings.catch_warnings():     # the quantizer logs every node it skips
            warnings.simplefilter("ignore")
            quantizer = MatMulNBitsQuantizer(proto, algo_config=config)
            quantizer.process()
            proto = quantizer.model.model
            if bits == 8:
                _embedding_8bit(proto)
    except Exception as exc:  # noqa: BLE001 - ORT's quantizer raises asserts and ValueErrors alike
        text = str(exc).strip().splitlines()
        raise ConversionError(f"ONNX Runtime's MatMulNBits quantizer failed ({type(exc).__name__}: "
                              f"{text[0][:200] if text else ''})", "export without --quantize, or report it") from None
    ops = _op_counts(proto)
    head = any(n.op_type == "MatMulNBits" and any(a.name == "N" and a.i == vocab for a in n.attribute)
               for n in proto.graph.node)
    note = (f"{mode}: {ops.get('MatMulNBits', 0)} MatMul weights{' (the lm_head included)' if head else ''} as "
            f"MatMulNBits {bits}-bit in blocks of {BLOCK_SIZE} (accuracy_level {ACCURACY_LEVEL}: int8 compute), "
            f"the embedding {'as GatherBlockQuantized ' + str(bits) + '-bit' if ops.get('GatherBlockQuantized') else 'float32'}; "
            "caches and logits float32")
    return proto, note


def _untie_lm_head(proto) -> None:
    """Give the lm_head MatMul its own [hidden, vocab] weight when it reads the embedding through a Transpose
    (tied weights, as the dynamo exporter writes them): ORT's quantizer takes only an initializer as a MatMul's
    weight, so the largest matrix of a small LM would stay float32. The embedding is quantized on its own."""
    import numpy as np
    from onnx import numpy_helper

    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        transpose = producers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if transpose is None or transpose.op_type != "Transpose" or transpose.input[0] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[transpose.input[0]])
        perm = [a.ints for a in transpose.attribute if a.name == "perm"]
        if weight.ndim != 2 or (perm and list(perm[0]) != [1, 0]):
            continue
        name = f"{transpose.input[0]}.transposed"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
        node.input[1] = name
    readers = {name for node in graph.node for name in node.input}
    dead = [n for n in graph.node if n.op_type == "Transpose" and not set(n.output) & readers]
    for node in dead:
        graph.node.remove(node)


def _embedding_8bit(proto) -> None:
    """Each Gather over a 2-D float initializer (the token embedding) -> GatherBlockQuantized, 8 bits: symmetric
    per block of BLOCK_SIZE along the hidden dim, stored as uint8 with zero point 128 (ORT takes no int8 there)."""
    import numpy as np
    from onnx import helper, numpy_helper

    graph = proto.graph
    initializers = {i.name: i for i in graph.initializer}
    for index, node in enumerate(list(graph.node)):
        table = initializers.get(node.input[0]) if node.op_type == "Gather" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or len(table.dims) != 2 or table.dims[1] % BLOCK_SIZE or axis != 0:
            continue
        weight = numpy_helper.to_array(table).astype(np.float32)
        rows, cols = weight.shape
        blocks = weight.reshape(rows, cols // BLOCK_SIZE, BLOCK_SIZE)
        scales = np.abs(blocks).max(axis=-1) / 127.0
        scales[scales == 0] = 1.0
        levels = np.clip(np.rint(blocks / scales[..., None]), -127, 127).astype(np.int16) + 128
        base = table.name
        graph.initializer.extend([
            numpy_helper.from_array(levels.astype(np.uint8).reshape(rows, cols), f"{base}_Q8"),
            numpy_helper.from_array(scales.astype(np.float32), f"{base}_scales8"),
            numpy_helper.from_array(np.full(scales.shape, 128, np.uint8), f"{base}_zero_points8")])
        graph.node.remove(node)
        graph.node.insert(index, helper.make_node(
            "GatherBlockQuantized", [f"{base}_Q8", node.input[1], f"{base}_scales8", f"{base}_zero_points8"],
            list(node.output), name=(node.name or base) + "_Q8", domain="com.microsoft", gather_axis=0,
            quantize_axis=1, block_size=BLOCK_SIZE, bits=8))
    readers = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in readers]:
        graph.initializer.remove(init)


def _op_counts(proto) -> dict:
    counts: dict = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _check_io(proto, contract: causal_lm.DecoderContract) -> None:
    """The graph keeps the contract: its names, int32 tokens/positions, T dynamic, caches at the context."""
    from onnx import TensorProto

    def dims(value):
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]

    inputs = {v.name: v for v in proto.graph.input}
    outputs = {v.name: v for v in proto.graph.output}
    problem = ""
    if list(inputs) != list(causal_lm.INPUTS) or list(outputs) != list(causal_lm.OUTPUTS):
        problem = f"names {list(inputs)} -> {list(outputs)}"
    elif any(inputs[n].type.tensor_type.elem_type != TensorProto.INT32 for n in ("tokens", "input_pos")):
        problem = "tokens/input_pos are not int32"
    elif isinstance(dims(inputs["tokens"])[1], int) or dims(inputs["k_cache"]) != list(contract.cache_shape):
        problem = f"shapes tokens {dims(inputs['tokens'])}, k_cache {dims(inputs['k_cache'])}"
    if problem:
        raise ConversionError(f"torch.onnx.export wrote a graph that breaks the decoder contract ({problem})", REMEDY)


def _stamp(proto, contract: causal_lm.DecoderContract) -> None:
    """The contract in the model's metadata_props, replacing an earlier one."""
    for entry in [p for p in proto.metadata_props if p.key == METADATA_KEY]:
        proto.metadata_props.remove(entry)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(contract.to_dict(), sort_keys=True)


def _save(proto, output: Path) -> list:
    """One self-contained file below protobuf's limit, else the weights in ``<name>.data`` beside it."""
    import onnx

    side = output.with_name(output.name + ".data")
    side.unlink(missing_ok=True)
    if sum(len(i.raw_data) for i in proto.graph.initializer) < EXTERNAL_DATA_THRESHOLD:
        onnx.save(proto, str(output))
        return []
    onnx.save(proto, str(output), save_as_external_data=True, all_tensors_to_one_file=True, location=side.name)
    return [side.name]
