"""Causal LM -> one ONNX graph with the KV cache as explicit tensors, for ONNX Runtime (child job).

The cached decoder (``deploykit.transforms.cached_decoder``) is exported once by torch's dynamo exporter with the
token count T dynamic (``tokens[1, T]``, ``input_pos[T]``; the caches fixed at the context): the same graph serves
prefill (any T up to the context, contract ``prefill_len=None``) and decode (T = 1). The dynamo exporter keeps the
tied embedding / lm_head as one initializer (SmolLM2-135M: 540 MB, one file); the TorchScript exporter also works
but stored it twice (652 MB). Below protobuf's 2 GiB the file is self-contained; above it the weights go to one
side file ``<name>.data``, returned in "files". The contract is also written into the model's ``metadata_props``
(``deploykit.causal_lm``, JSON), so a file separated from its manifest still says what it is.

Quantized modes are weight-only, block-wise along the input dim (blocks of 32, GGUF's block), written as ONNX
Runtime's ``MatMulNBits`` / ``GatherBlockQuantized`` nodes by ``_Quantizer`` (its docstring says why not by ORT's
own quantizer). The tied embedding / lm_head is one 8-bit copy in both modes. Measured on SmolLM2-135M (Q4_1 GGUF,
context 256, "The capital of France is" + 8 greedy steps, logits vs the torch decoder, one busy 2-core machine):

- ``int4``: 4-bit body keeping each block's float minimum (exact on the source's Q4_1 grid), float32 compute:
  121 MB, max_abs 0.40, cosine >= 0.9997, greedy text identical; 55 ms a decode step vs fp32's 95.
  (int8 compute there — ``accuracy_level`` 4 — was barely faster and cost cosine 0.93 and the text.)
- ``int8``: 8-bit symmetric weights with int8 activations per block (``accuracy_level`` 4; ORT's float path for
  8 bits took 835 ms a step): 162 MB, 41 ms a step, max_abs 1.9, cosine >= 0.986, greedy text identical. Its
  error is the activations' rounding (8-bit affine weights, exact on the grid, measured the same), so on a 4-bit
  source int4 is the more faithful mode. ORT's ``quantize_dynamic`` (MatMulInteger, one activation scale per
  tensor) was dropped: max_abs 16 of ~27 and the text changed at the 7th token.
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
ACCURACY_LEVEL = 4                  # 8-bit MatMulNBits computes with int8 activations (per block)
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
    """``proto`` with its weights quantized in place; and the note saying how."""
    try:
        counts = _Quantizer(proto, mode, vocab).run()
    except (ValueError, MemoryError) as exc:
        raise ConversionError(f"quantizing the ONNX decoder's weights failed ({type(exc).__name__}: "
                              f"{str(exc)[:200]})", "export without --quantize, or report it") from None
    body = ("8-bit symmetric, int8 activations (accuracy_level 4)" if mode == "int8" else
            "4-bit affine, each block's float minimum kept (exact on a GGUF Q4_1 grid), float32 compute")
    return proto, (f"{mode}: {counts['body']} MatMul weights as MatMulNBits {body}, blocks of {BLOCK_SIZE}"
                   + (", the lm_head 8-bit symmetric" if counts["head"] else "")
                   + (", the embedding 8-bit (GatherBlockQuantized" + (", sharing the lm_head's bytes)"
                                                                         if counts["shared"] else ")")
                      if counts["embedding"] else ", the embedding float32")
                   + "; caches and logits float32")


class _Quantizer:
    """Weight-only block quantization of the exported decoder, written as ONNX Runtime's MatMulNBits and
    GatherBlockQuantized (com.microsoft) nodes — packed here rather than by ORT's ``matmul_nbits_quantizer``:

    - its 4-bit grid must hold 0 and takes an integer zero point, so a block's offset is rounded to the grid:
      on SmolLM2-135M (Q4_1 weights: ``w = m + d·q`` per block of 32) that bias per block turned the logits
      to noise (max_abs 16.7 of ~27, cosine < 0). Here a 4-bit block keeps its own float minimum, applied as
      ``Σ_block(x)·m`` beside the MatMulNBits (zero point 0): exact on a Q4_1 grid, min-max RTN elsewhere. A
      float zero point inside MatMulNBits would say the same, but ORT then leaves its fast kernels (600 ms vs
      45 ms a SmolLM2 decode step);
    - ORT's quantizer can only see a MatMul weight that is an initializer, and the dynamo exporter writes a tied
      lm_head as ``Transpose(embedding)``: here that embedding is quantized once, by rows, and read by both the
      lm_head's MatMulNBits and the embedding's GatherBlockQuantized;
    - the lm_head stays 8-bit in int4 (4-bit alone moved SmolLM2's logits by 4.9), and 8-bit blocks are
      symmetric (``amax / 127``: exact on a GGUF Q8_0 grid) with int8 compute (``accuracy_level`` 4 —
      ORT's fp32 path for 8 bits was 20x slower).
    """

    def __init__(self, proto, mode: str, vocab: int):
        self.graph, self.mode, self.vocab = proto.graph, mode, vocab
        self.proto = proto
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.producers = {out: node for node in self.graph.node for out in node.output}
        self.packed: dict = {}          # (initializer name, bits) -> names of the packed tensors
        self.block_sums: dict = {}      # activation name -> its per-block sums
        self.new: list = []             # initializers to add
        self.counts = {"body": 0, "head": 0, "embedding": 0, "shared": 0}

    def run(self) -> dict:
        nodes = []
        for node in self.graph.node:
            weight = self._matmul_weight(node)
            nodes.extend(self._matmul(node, *weight) if weight else [node])
        # Gathers second: a tied embedding then finds the lm_head's bytes already packed.
        self.graph.ClearField("node")
        self.graph.node.extend(n for node in nodes
                               for n in (self._gather(node) if node.op_type == "Gather" else [node]))
        self.graph.initializer.extend(self.new)
        _prune(self.graph)
        if not any(o.domain == "com.microsoft" for o in self.proto.opset_import):
            self.proto.opset_import.add(domain="com.microsoft", version=1)
        return self.counts

    def _matmul_weight(self, node):
        """(initializer name, the weight as rows [N, K]) of a MatMul by a constant: an initializer [K, N], or
        the transpose of one [N, K] (a tied lm_head); None otherwise, or when K is no multiple of the block."""
        import numpy as np
        from onnx import numpy_helper

        if node.op_type != "MatMul" or len(node.input) != 2:
            return None
        name, transposed = node.input[1], False
        transpose = self.producers.get(name)
        if transpose is not None and transpose.op_type == "Transpose":
            perm = [list(a.ints) for a in transpose.attribute if a.name == "perm"]
            if perm not in ([], [[1, 0]]):
                return None
            name, transposed = transpose.input[0], True
        table = self.initializers.get(name)
        if table is None or len(table.dims) != 2 or table.dims[0 if not transposed else 1] % BLOCK_SIZE:
            return None
        weight = numpy_helper.to_array(table).astype(np.float32)
        return name, (weight if transposed else np.ascontiguousarray(weight.T))

    def _matmul(self, node, name: str, rows) -> list:
        from onnx import helper

        columns, depth = rows.shape
        head = columns == self.vocab
        # int4's body is affine (its own float minimum per block); 8 bits are symmetric: the lm_head's layout is
        # the one the embedding's GatherBlockQuantized can share (it takes no float offset), and int8's error is
        # its int8 activations, not its weights (affine 8-bit weights, exact on SmolLM2's grid, measured the same).
        bits, affine = (8, False) if head or self.mode == "int8" else (4, True)
        self.counts["head" if head else "body"] += 1
        data, scales, zeros, minimums = self._pack(name, rows, bits, affine)
        attributes = dict(K=depth, N=columns, bits=bits, block_size=BLOCK_SIZE, domain="com.microsoft")
        if bits == 8:       # ORT's fp32 path for 8 bits was 20x slower: int8 compute
            attributes["accuracy_level"] = ACCURACY_LEVEL
        if not affine:
            return [helper.make_node("MatMulNBits", [node.input[0], data, scales, zeros], list(node.output),
                                     name=f"{node.name}_Q{bits}", **attributes)]
        scaled, offset = f"{node.output[0]}_q{bits}", f"{node.output[0]}_q{bits}_offset"
        sums, made = self._block_sums(node.input[0], depth)
        return made + [
            helper.make_node("MatMulNBits", [node.input[0], data, scales, zeros], [scaled],
                             name=f"{node.name}_Q{bits}", **attributes),
            helper.make_node("MatMul", [sums, minimums], [offset], name=f"{node.name}_Q{bits}_offset"),
            helper.make_node("Add", [scaled, offset], list(node.output), name=f"{node.name}_Q{bits}_add")]

    def _pack(self, name: str, rows, bits: int, affine: bool) -> tuple:
        """The packed tensors' names (data, scales, zero points, block minimums or None), made once per weight.
        Symmetric: ``amax / 127`` per block, stored + 128; affine: ``(max - min) / (2^bits - 1)`` from the block's
        minimum, zero point 0, the minimum kept as a float [blocks, N] matrix."""
        import numpy as np
        from onnx import numpy_helper

        key = (name, bits, affine)
        if key in self.packed:
            return self.packed[key]
        columns, depth = rows.shape
        blocks = rows.reshape(columns, depth // BLOCK_SIZE, BLOCK_SIZE)
        top = (1 << bits) - 1
        if affine:
            low = blocks.min(axis=-1)
            scales = (blocks.max(axis=-1) - low) / top
            scales[scales == 0] = 1.0
            levels = np.clip(np.rint((blocks - low[..., None]) / scales[..., None]), 0, top).astype(np.uint8)
            minimums = np.ascontiguousarray(low.T)
        else:
            scales = np.abs(blocks).max(axis=-1) / 127.0
            scales[scales == 0] = 1.0
            levels = (np.clip(np.rint(blocks / scales[..., None]), -127, 127) + 128).astype(np.uint8)
            minimums = None
        if bits == 4:
            levels = levels[..., 0::2] | (levels[..., 1::2] << 4)
        zeros = np.full((columns, (depth // BLOCK_SIZE * bits + 7) // 8), 0 if affine else 128, np.uint8)
        tensors = {"q": levels, "scales": scales.astype(np.float32), "zeros": zeros, "minimums": minimums}
        tag = f"{name}_{bits}bit{'_affine' if affine else ''}"
        names = tuple(f"{tag}_{k}" if value is not None else None for k, value in tensors.items())
        self.new.extend(numpy_helper.from_array(value, n) for n, value in zip(names, tensors.values())
                        if value is not None)
        self.packed[key] = names
        return names

    def _block_sums(self, activation: str, depth: int) -> tuple:
        """The name of ``activation`` summed per block ([..., K] @ ones [K, K/32]), and the nodes that make it
        (none when an earlier MatMul on the same activation — q/k/v, gate/up — made it)."""
        import numpy as np
        from onnx import helper, numpy_helper

        if activation in self.block_sums:
            return self.block_sums[activation], []
        ones_name = f"block_sum_{depth}"
        if ones_name not in {t.name for t in self.new}:
            ones = (np.arange(depth)[:, None] // BLOCK_SIZE == np.arange(depth // BLOCK_SIZE)[None]).astype(np.float32)
            self.new.append(numpy_helper.from_array(ones, ones_name))
        sums = f"{activation}_block_sums"
        self.block_sums[activation] = sums
        return sums, [helper.make_node("MatMul", [activation, ones_name], [sums], name=f"{activation}_block_sums")]

    def _gather(self, node) -> list:
        """A Gather over a 2-D float table (the token embedding) -> GatherBlockQuantized, 8 bits, reading the
        lm_head's packed bytes when the weights are tied ([V, K/32, 32], quantized along the last axis) and
        reshaped back to [..., K]."""
        import numpy as np
        from onnx import helper, numpy_helper

        table = self.initializers.get(node.input[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if table is None or len(table.dims) != 2 or table.dims[1] % BLOCK_SIZE or axis != 0:
            return [node]
        name, (vocab, depth) = table.name, table.dims
        self.counts["shared"] += (name, 8, False) in self.packed
        data, scales, zeros, _ = self._pack(name, numpy_helper.to_array(table).astype(np.float32), 8, False)
        self.counts["embedding"] += 1
        made = {t.name: t for t in self.new}
        side = [f"{n}_gather" for n in (scales, zeros)]
        for name_3d, name_2d in zip(side, (scales, zeros)):
            if name_3d not in made:     # the lm_head's [V, K/32] as the [V, K/32, 1] the 3-D data wants
                value = numpy_helper.to_array(made[name_2d]).reshape(vocab, depth // BLOCK_SIZE, 1)
                self.new.append(numpy_helper.from_array(value, name_3d))
        out = node.output[0]
        self.new.append(numpy_helper.from_array(np.array([depth], np.int64), f"{out}_depth"))     # [..., K]
        blocks, ids_shape, shape = f"{out}_blocks", f"{out}_ids_shape", f"{out}_shape"
        return [helper.make_node("GatherBlockQuantized", [data, node.input[1], *side], [blocks],
                                 name=f"{node.name}_Q8", domain="com.microsoft", gather_axis=0, quantize_axis=2,
                                 block_size=BLOCK_SIZE, bits=8),
                helper.make_node("Shape", [node.input[1]], [ids_shape]),
                helper.make_node("Concat", [ids_shape, f"{out}_depth"], [shape], axis=0),
                helper.make_node("Reshape", [blocks, shape], list(node.output))]


def _prune(graph) -> None:
    """Drop the nodes whose outputs nothing reads (the tied embedding's Transpose) and unread initializers."""
    wanted = {o.name for o in graph.output}
    keep = []
    for node in reversed(graph.node):
        if set(node.output) & wanted:
            keep.append(node)
            wanted.update(node.input)
    graph.ClearField("node")
    graph.node.extend(reversed(keep))
    # By index: RepeatedField.remove compares whole tensors, megabytes each.
    for index in reversed([k for k, i in enumerate(graph.initializer) if i.name not in wanted]):
        del graph.initializer[index]


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
