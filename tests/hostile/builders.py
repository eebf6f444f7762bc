"""Files for the hostile corpus, made in code (nothing binary is committed): small valid models to point
flags at, and crafted hostile ones — pickles with payloads, archives that lie, bombs, escapes.

Every payload here writes the file ``PWNED`` into the working directory when it runs: a case passes
only if that file never appears.
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from pathlib import Path

MARKER = "PWNED"
ESC = "\x1b"


class Payload:
    """Unpickling this runs ``touch PWNED`` (in the working directory)."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


def payload_pickle() -> bytes:
    return pickle.dumps(Payload(), protocol=2)


def heavy_onnx(path: Path, size: int = 512, layers: int = 24) -> Path:
    """x[size,size] through ``layers`` MatMuls with one shared [size,size] weight (+ Tanh to keep values bounded):
    2·size³·layers FLOP a sample, a fraction of a second natively but seconds in a single-threaded WASM page."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.eye(size, dtype=np.float32) * 0.5, "W")
    nodes, previous = [], "x"
    for index in range(layers):
        nodes += [helper.make_node("MatMul", [previous, "W"], [f"m{index}"]),
                  helper.make_node("Tanh", [f"m{index}"], [f"t{index}"])]
        previous = f"t{index}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(nodes, "heavy", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])], [weight])
    path.write_bytes(onnx_model(graph).SerializeToString())
    return path


def tiny_onnx(path: Path, input_name: str = "x", shape=(1, 4), producer: str = "deploykit-tests",
              output_name: str = "y", external: str = "", doc: str = "", elem_type: int = 1,
              sequence_input: bool = False) -> Path:
    """x[1,4] @ W[4,3] -> Relu -> y; ``external`` makes W an external-data tensor at that location;
    ``elem_type`` is the input's declared element type (1 = float; 65 is none ONNX defines); ``sequence_input``
    declares the input a sequence of tensors."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.arange(shape[-1] * 3, dtype=np.float32).reshape(shape[-1], 3) / 10, "W")
    if external:
        weight.ClearField("raw_data")
        weight.data_location = TensorProto.EXTERNAL
        for key, value in (("location", external), ("offset", "0"), ("length", "48")):
            entry = weight.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", [input_name, "W"], ["h"]), helper.make_node("Relu", ["h"], [output_name])],
        "tiny", [helper.make_tensor_sequence_value_info(input_name, TensorProto.FLOAT, list(shape)) if sequence_input
                 else helper.make_tensor_value_info(input_name, elem_type, list(shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(shape[:-1]) + [3])], [weight])
    model = onnx_model(graph, producer_name=producer, doc_string=doc)
    path.write_bytes(model.SerializeToString())
    return path


def division_onnx(path: Path, sign: float) -> Path:
    """y = (sign * x) / 0: ±inf where x is non-zero (sign -1 flips every infinity; sign 0 gives NaN)."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.array(sign, np.float32), "s"),
                 numpy_helper.from_array(np.array(0.0, np.float32), "z")]
    graph = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["h"]), helper.make_node("Div", ["h", "z"], ["y"])],
                              "division", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], constants)
    return save_graph(graph, path)


def image_onnx(path: Path, shape=(1, 3, 8, 8)) -> Path:
    """x[1,3,8,8] -> Relu -> y: a 4-D float input that an image folder can calibrate."""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "image",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(shape))])
    return save_graph(graph, path)


def onnx_model(graph, opset: int = 17, **fields):
    """A ModelProto of ``graph`` at ``opset``, with the IR version every installed runtime reads (8)."""
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], **fields)
    model.ir_version = 8
    return model


def save_graph(graph, path: Path, opset: int = 17) -> Path:
    """``graph`` written to ``path`` as a model (see onnx_model)."""
    path.write_bytes(onnx_model(graph, opset).SerializeToString())
    return Path(path)


def zip_file(path: Path, members: dict, compression=zipfile.ZIP_STORED) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def pickled_module_archive(path: Path) -> Path:
    """A torch.save-style zip whose data.pkl is a payload (what torch.save(model) files look like to us)."""
    return zip_file(path, {"archive/data.pkl": payload_pickle(), "archive/version": b"3\n"})


def pt2_archive(path: Path, config: dict = None, extra: dict = None) -> Path:
    """A torch.export archive skeleton with the given weights payload config (and extra members)."""
    members = {"model/archive_format": b"pt2",
               "model/data/weights/model_weights_config.json": json.dumps({"config": config or {}}).encode()}
    members.update(extra or {})
    return zip_file(path, members)


def zip_bomb(path: Path, member: str, size: int = 200 * 1024**2, extra: dict = None) -> Path:
    """A member that inflates to ``size`` bytes of zeros (about size/1000 on disk), plus ``extra`` members."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
        with archive.open(member, "w", force_zip64=True) as handle:
            chunk = b"\0" * (16 * 1024**2)
            for _ in range(size // len(chunk)):
                handle.write(chunk)
    return path


def sparse_file(path: Path, head: bytes, size: int) -> Path:
    """``head`` then zeros up to ``size`` bytes, without using the disk (a hole)."""
    with open(path, "wb") as handle:
        handle.write(head)
        handle.truncate(size)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height (a decompression bomb's header; the data is tiny)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def good_png(path: Path, size: int = 8) -> Path:
    from PIL import Image

    Image.new("RGB", (size, size), (120, 30, 200)).save(path)
    return path


def npz_bytes(**arrays) -> bytes:
    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def object_npz(path: Path) -> Path:
    """An .npz whose array is a pickled object array (np.load(allow_pickle=True) would run the payload)."""
    import numpy as np

    array = np.empty(1, dtype=object)
    array[0] = Payload()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return zip_file(path, {"x.npy": buffer.getvalue()})


def script_with_loop(path: Path) -> Path:
    """A TorchScript archive whose forward never returns (loading it is fine; running it hangs)."""
    import torch

    class Spin(torch.nn.Module):
        def forward(self, x):
            while bool(x.sum() > -1.0):
                x = x + 1.0
            return x

    torch.jit.save(torch.jit.script(Spin()), str(path))
    return path


def with_zip_flags(path: Path, flags: int) -> Path:
    """Set general-purpose flag bits on every member (bit 0: encrypted, bit 5: compressed patched data), in the
    local and the central headers: what zipfile refuses with RuntimeError / NotImplementedError."""
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            data[start + offset] |= flags
            start += 4
    path.write_bytes(bytes(data))
    return path


def npz_declaring(shape: tuple) -> bytes:
    """An .npz of one float32 member whose header declares ``shape`` but holds no data (a 200-byte file that
    would make np.load allocate the declared size)."""
    import numpy as np

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("x.npy", header.getvalue())     # the header writer puts the magic first
    return buffer.getvalue()


# Names onnx2tf could not take (issue 26), each where it is hardest to rename: graph inputs (the artifact's
# signature), outputs, intermediates, an initializer and node names; "a b", "a;b" and an existing "a_b" collide
# once cleaned, "" is a node without a name.
HOSTILE_INPUTS = ("x:0", "ünï")
HOSTILE_OUTPUTS = ("class scores", "scores(1)")


def hostile_names_onnx(path: Path) -> Path:
    """(x:0 + ünï) → three branches named "a b", "a;b", "a_b" → two outputs "class scores" and "scores(1)";
    weights "1st" and "w/1"; node names with ':', ' ', '"', a quote and none. The two inputs have different roles
    (x:0 also feeds a Mul), so feeding them swapped fails parity."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), name) for name in ("1st", "w/1")]
    x, u = HOSTILE_INPUTS
    nodes = [
        helper.make_node("Add", [x, u], ["a<b>"], name="add:0"),
        helper.make_node("Mul", ["a<b>", x], ["a b"], name="sig moid"),
        helper.make_node("Tanh", ["a<b>"], ["a;b"], name=""),
        helper.make_node("Sigmoid", [u], ["a_b"], name="it's"),
        helper.make_node("MatMul", ["a b", "1st"], ["m(1)"], name="1mm"),
        helper.make_node("Add", ["a;b", "a_b"], ["é\\2"], name='"q"'),
        helper.make_node("MatMul", ["é\\2", "w/1"], ["m;2"], name="mm<2>"),
        helper.make_node("Relu", ["m(1)"], [HOSTILE_OUTPUTS[0]]),
        helper.make_node("Add", ["m(1)", "m;2"], [HOSTILE_OUTPUTS[1]], name="x:0"),
    ]
    graph = helper.make_graph(nodes, "hostile names",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in HOSTILE_INPUTS],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3]) for n in HOSTILE_OUTPUTS],
                              weights)
    return save_graph(graph, path)


def matrix_spec(folder: Path, extra: str = "", name: str = "zoo.toml", model: str = "tiny.onnx") -> Path:
    """A one-cell matrix spec on ``model`` (made as tiny_onnx when absent): onnx → onnx fp16, no timed phase — a
    real conversion that takes about a second; ``extra`` lines go into its [matrix] table."""
    if not (folder / model).exists():
        tiny_onnx(folder / model)
    path = folder / name
    path.write_text(f'[matrix]\ntargets = ["onnx"]\nprecisions = ["fp16"]\nbench = []\n{extra}\n'
                    f'[[models]]\npath = "{model}"\n')
    return path


def matrix_store(spec: Path, store: Path) -> str:
    """Run the spec's matrix into ``store`` (the real run, in this process); returns its one cell's key."""
    from deploykit.matrix.run import run_matrix

    return run_matrix(str(spec), str(store), workers=1)["cells"][0]["key"]


def matrix_key(spec: Path) -> str:
    """The key of the spec's first cell, as a run would compute it (to plant something at its name)."""
    from deploykit.matrix.keys import plan_cell
    from deploykit.matrix.spec import load_spec

    loaded = load_spec(str(spec))
    return plan_cell(loaded.cells()[0], loaded)[0]


def torchscript_parser_overflow(path: Path, depth: int = 300_000) -> Path:
    """A TorchScript archive whose forward returns one expression nested ``depth`` parentheses deep.

    torch.jit.load compiles the archive's code with a recursive-descent C++ parser, one native frame per
    level: the stack overflows and the loading process dies of SIGSEGV (torch 2.13) — a real file that
    crashes torch's own loader, no hook needed. The zip compresses the parentheses to a few hundred bytes."""
    import io
    import re
    import zipfile

    import torch

    saved = io.BytesIO()
    torch.jit.save(torch.jit.trace(torch.nn.Linear(4, 2).eval(), torch.zeros(1, 4)), saved)
    nested = "return " + "(" * depth + "0" + ")" * depth
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            data = src.read(info.filename)
            if "/code/" in info.filename and info.filename.endswith(".debug_pkl"):
                continue        # its source ranges describe the original code
            if "/code/" in info.filename and info.filename.endswith(".py") and b"def forward" in data:
                data = re.sub(r"return [^\n]+", nested, data.decode(), count=1).encode()
            out.writestr(info.filename, data)
    return path
