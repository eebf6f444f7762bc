"""The hostile corpus: crafted files, flags, paths and environments, each with the one clean way it must end.

A case builds its files in a fresh working directory and returns the command line; the runner
(test_corpus.py) checks the exit code, a single ``error: … — …`` line matching ``message``, no
traceback, no file added, removed or changed in the working directory, an empty private $TMPDIR,
and no ``PWNED`` marker from a payload. Classes follow issue 10's list, plus our own.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tests.hostile import builders as b


@dataclass(frozen=True)
class Case:
    name: str
    kind: str                           # the defect class it guards (issue 10's numbering, or "format", ...)
    build: Callable[[Path], list]       # makes files in the work dir, returns the CLI arguments
    code: int
    message: str = ""                   # regex the error line must match (code 0: stdout must match it)
    needs: tuple = ()                   # pytest markers: torch, onnxruntime, tensorflow, litert
    process: bool = False               # must run as its own process (it hangs a thread, or uses ulimit)
    slow: bool = False
    ulimit_file_kb: int = 0             # RLIMIT_FSIZE for the process: writing more is a "disk full"
    creates: tuple = ()                 # files the command may add (code 0 cases)


def _files(work: Path, **texts) -> None:
    for name, text in texts.items():
        (work / name).write_bytes(text if isinstance(text, bytes) else text.encode())


def _onnx(work: Path, name: str = "tiny.onnx", **kw) -> str:
    b.tiny_onnx(work / name, **kw)
    return name


def _fifo(work: Path, name: str) -> str:
    os.mkfifo(work / name)
    return name


def _bundle(work: Path, **relisted) -> str:
    """A real bundle of tiny.onnx in ``b``; ``relisted`` entries are added to its deploykit-bundle.json's file list
    (and a ``model`` entry replaces its model), as a tamperer would write them."""
    import json

    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    _onnx(work)
    api.package(str(work / "tiny.onnx"), str(work / "b"), PackageOptions(samples=1, source=str(work / "tiny.onnx")))
    info = json.loads((work / "b" / "deploykit-bundle.json").read_text())
    info["model"] = relisted.pop("model", info["model"])
    info["files"].update(relisted)
    (work / "b" / "deploykit-bundle.json").write_text(json.dumps(info))
    return "b"


ONNX = ("onnxruntime",)
TORCH = ("torch",)

CASES = [
    # --- format detection: damaged, truncated, foreign, not a file --------------------------------------------
    Case("empty-file", "format", lambda w: (_files(w, **{"m.onnx": b""}), ["inspect", "m.onnx"])[1], 2, "is empty"),
    Case("one-byte", "format", lambda w: (_files(w, **{"m.onnx": b"\x08"}), ["inspect", "m.onnx"])[1], 2,
         "not a valid ONNX", ONNX),
    Case("random-bytes", "format", lambda w: (_files(w, **{"m.bin": b"\xff" + random.Random(1).randbytes(63)}),
                                              ["inspect", "m.bin"])[1], 2, "unknown model format"),
    Case("text-file", "format", lambda w: (_files(w, **{"m.pt": "hello, I am not a model\n"}), ["inspect", "m.pt"])[1],
         2, "unknown model format"),
    Case("truncated-onnx", "format", lambda w: (_files(w, **{"m.onnx": (w / _onnx(w)).read_bytes()[:40]}),
                                                ["inspect", "m.onnx"])[1], 2, "not a valid ONNX", ONNX),
    Case("tflite-header-only", "format", lambda w: (_files(w, **{"m.tflite": b"\x1c\x00\x00\x00TFL3" + b"\xff" * 40}),
                                                    ["inspect", "m.tflite"])[1], 2, "m.tflite", ("litert",)),
    Case("tflite-truncated-to-8", "format", lambda w: (_files(w, **{"m.tflite": b"\x1c\x00\x00\x00TFL3"}),
                                                       ["inspect", "m.tflite"])[1], 2, "m.tflite", ("litert",)),
    Case("truncated-zip", "format", lambda w: (_files(w, **{"m.pt": b"PK\x03\x04" + b"\0" * 30}),
                                               ["inspect", "m.pt"])[1], 2, "truncated or corrupt archive"),
    Case("zip-without-model", "format", lambda w: (b.zip_file(w / "m.pt", {"readme.txt": b"hi"}),
                                                   ["inspect", "m.pt"])[1], 2, "holds no known model"),
    Case("legacy-torch-pickle", "format", lambda w: (_files(w, **{"m.pt": b"\x80\x02" + b.payload_pickle()[2:]}),
                                                     ["inspect", "m.pt"])[1], 2, "legacy"),
    Case("hdf5-garbage", "format", lambda w: (_files(w, **{"m.h5": b"\x89HDF\r\n\x1a\n" + b"\0" * 64}),
                                              ["inspect", "m.h5"])[1], 2, "m.h5", ("tensorflow",), slow=True),
    Case("dir-without-saved-model", "format", lambda w: ((w / "folder").mkdir(), ["inspect", "folder"])[1], 2,
         "without saved_model.pb"),
    Case("missing-file", "format", lambda w: ["inspect", "nowhere.onnx"], 2, "no such file"),
    Case("fifo-as-model", "7", lambda w: ["inspect", _fifo(w, "m.onnx")], 2, "not a regular file"),
    Case("dev-null-as-model", "7", lambda w: ["inspect", "/dev/null"], 2, "not a regular file"),
    Case("symlink-loop", "format", lambda w: ((w / "a.onnx").symlink_to("b.onnx"), (w / "b.onnx").symlink_to("a.onnx"),
                                              ["inspect", "a.onnx"])[2], 2, "no such file"),
    Case("onnx-12gb-sparse", "8", lambda w: (b.sparse_file(w / "big.onnx", b"\x08\x08", 12 * 1024**3),
                                             ["inspect", "big.onnx"])[1], 2, "over the 2 GiB", ONNX),
    Case("onnx-external-traversal", "format", lambda w: (_onnx(w, external="../../../etc/passwd"),
                                                         ["inspect", "tiny.onnx"])[1], 2, "tiny.onnx", ONNX),
    Case("onnx-external-absolute", "format", lambda w: (_onnx(w, external="/etc/passwd"),
                                                        ["inspect", "tiny.onnx"])[1], 2, "tiny.onnx", ONNX),
    # --- code execution from pickles (1) and the working directory (2) ------------------------------------------
    Case("torch-save-payload", "1", lambda w: (b.pickled_module_archive(w / "m.pt"), ["inspect", "m.pt"])[1], 2,
         "pickled Python object.*posix.system|pickled Python object.*os.system", TORCH),
    Case("torch-save-payload-export", "1", lambda w: (b.pickled_module_archive(w / "m.pt"),
                                                      ["export", "m.pt", "--to", "onnx"])[1], 2, "pickled Python", TORCH),
    Case("pt2-use-pickle-weights", "1", lambda w: (b.pt2_archive(w / "m.pt2", {"w": {"path_name": "weight_0",
                                                                                      "use_pickle": True}}),
                                                   ["inspect", "m.pt2"])[1], 2, "pickled parts", TORCH),
    Case("pt2-opaque-constant", "1", lambda w: (b.pt2_archive(w / "m.pt2", {"c": {"path_name": "opaque_obj_0"}}),
                                                ["verify", "m.pt2", "m.pt2"])[1], 2, "pickled parts", TORCH),
    Case("pt2-custom-object", "1", lambda w: (b.pt2_archive(w / "m.pt2", {"c": {"path_name": "custom_obj_0"}}),
                                              ["bench", "m.pt2", "--runtime", "torch"])[1], 1, "every benchmark case failed.*pickled parts",
         TORCH, slow=True),
    Case("pt2-raw-pickle-sample-inputs", "1",
         lambda w: (b.pt2_archive(w / "m.pt2", extra={"model/data/sample_inputs/model.pt": b.payload_pickle()}),
                    ["inspect", "m.pt2"])[1], 2, "pickled parts", TORCH),
    Case("pt2-config-not-json", "1", lambda w: (b.zip_file(w / "m.pt2", {
        "model/archive_format": b"pt2", "model/data/weights/model_weights_config.json": b"\xff{not json"}),
        ["inspect", "m.pt2"])[1], 2, "unreadable payload config", TORCH),
    Case("pt2-config-wrong-types", "1", lambda w: (b.zip_file(w / "m.pt2", {
        "model/archive_format": b"pt2", "model/data/weights/model_weights_config.json": b'{"config": [1, 2]}'}),
        ["inspect", "m.pt2"])[1], 2, "unreadable payload config", TORCH),
    Case("weights-payload", "1", lambda w: (b.zip_file(w / "w.pt", {"archive/data.pkl": b.payload_pickle()}),
                                            ["inspect", "sample_models.two_layer:two_layer_net", "--weights", "w.pt"])[1],
         2, "not a loadable state_dict", TORCH),
    Case("inputs-object-array", "1", lambda w: (b.object_npz(w / "in.npz"),
                                                ["verify", _onnx(w), "tiny.onnx", "--inputs", "in.npz"])[1], 2,
         "in.npz", ONNX),
    Case("cwd-numpy-and-runtimes", "2", lambda w: (_files(w, **{"numpy.py": f"open('{b.MARKER}', 'w')\n"}),
                                                   (w / "runtimes").mkdir(),
                                                   _files(w, **{"runtimes/__init__.py": f"open('{b.MARKER}', 'w')\n"}),
                                                   ["verify", _onnx(w), "tiny.onnx", "--samples", "1"])[3], 0,
         "PASS|pass", ONNX, process=True),
    # --- outputs (3, 6, 10) --------------------------------------------------------------------------------------
    Case("output-is-source", "3", lambda w: ["export", _onnx(w), "--to", "tflite", "-o", "tiny.onnx", "--force"], 2,
         "is, holds or lies inside the source", ONNX),
    Case("output-is-source-no-force", "3", lambda w: ["export", _onnx(w), "--to", "onnx", "--quantize", "fp16"], 2,
         "is, holds or lies inside the source", ONNX),
    Case("saved-model-force-onto-users-dir", "3",
         lambda w: ((w / "mine").mkdir(), _files(w, **{"mine/notes.txt": "keep me"}),
                    ["export", _onnx(w), "--to", "saved_model", "-o", "mine", "--force"])[2], 2,
         "did not write", ONNX),
    Case("saved-model-force-onto-source-dir", "3",
         lambda w: ((w / "src").mkdir(), b.tiny_onnx(w / "src" / "tiny.onnx"),
                    ["export", "src/tiny.onnx", "--to", "saved_model", "-o", "src", "--force"])[2], 2,
         "did not write|inside the source", ONNX),
    Case("output-exists-no-force", "3", lambda w: (_files(w, **{"out.tflite": "mine"}),
                                                   ["export", _onnx(w), "--to", "tflite", "-o", "out.tflite"])[1], 2,
         "already exists", ONNX),
    Case("output-dev-null-force", "6", lambda w: ["export", _onnx(w), "--to", "tflite", "-o", "/dev/null", "--force"], 2,
         "not a regular file", ONNX),
    Case("output-fifo-force", "6", lambda w: ["export", _onnx(w), "--to", "tflite", "-o", _fifo(w, "o.tflite"),
                                              "--force"], 2, "not a regular file", ONNX),
    Case("output-parent-is-a-file", "3", lambda w: (_files(w, **{"afile": "x"}),
                                                    ["export", _onnx(w), "--to", "tflite", "-o", "afile/x.tflite"])[1],
         2, "a part of that path is a file", ONNX),
    Case("failed-export-leaves-no-dir", "11",
         lambda w: ((w / "imgs").mkdir(), _files(w, **{"imgs/a.png": b"\x89PNG not really"}), b.image_onnx(w / "i.onnx"),
                    ["export", "i.onnx", "--to", "onnx", "--quantize", "int8", "--calibration", "imgs",
                     "-o", "new/deeper/q.onnx"])[3], 2, "not a readable image", ONNX),
    # --- parity and manifests (4, 5) -------------------------------------------------------------------------------
    Case("manifest-precision-beside-other-artifact", "5",
         lambda w: (_onnx(w), _onnx(w, "other.onnx", producer="someone"),
                    _files(w, **{"other.onnx.deploykit.json": '{"precision": "int8"}'}),
                    ["verify", "tiny.onnx", "other.onnx", "--samples", "1"])[3], 0, "PASS|pass", ONNX, process=True),
    Case("manifest-a-list", "11", lambda w: (_onnx(w), _files(w, **{"tiny.onnx.deploykit.json": "[1, 2, 3]"}),
                                             ["inspect", "tiny.onnx"])[2], 0, "MatMul", ONNX),
    Case("manifest-wrong-types", "11",
         lambda w: (_onnx(w), _files(w, **{"tiny.onnx.deploykit.json": '{"route": "x", "signature": 5, "layout": 1}'}),
                    ["inspect", "tiny.onnx"])[2], 0, "MatMul", ONNX),
    Case("manifest-bad-permutation", "11",
         lambda w: (_onnx(w), _files(w, **{"tiny.onnx.deploykit.json": '{"layout": {"inputs": {"x": [0, 0]}}}'}),
                    ["inspect", "tiny.onnx"])[2], 0, "MatMul", ONNX),
    Case("manifest-not-utf8", "11", lambda w: (_onnx(w), _files(w, **{"tiny.onnx.deploykit.json": b"\xff\xfe\x00{"}),
                                               ["inspect", "tiny.onnx"])[2], 0, "MatMul", ONNX),
    Case("non-finite-signs-flipped", "4", lambda w: (b.division_onnx(w / "ref.onnx", sign=1.0),
                                                     b.division_onnx(w / "flipped.onnx", sign=-1.0),
                                                     ["verify", "ref.onnx", "flipped.onnx", "--samples", "2"])[2], 1,
         "inf", ONNX),
    Case("non-finite-against-zeros", "4", lambda w: (b.division_onnx(w / "ref.onnx", sign=1.0),
                                                     b.division_onnx(w / "zeros.onnx", sign=0.0),
                                                     ["verify", "ref.onnx", "zeros.onnx", "--samples", "2"])[2], 1,
         "inf", ONNX),
    # --- hangs (7) and memory (8) ------------------------------------------------------------------------------------
    Case("torchscript-endless-loop-inspect", "7", lambda w: (b.script_with_loop(w / "spin.pt"),
                                                             ["inspect", "spin.pt", "--input", "x:1x3:float32",
                                                              "--timeout", "3"])[1], 2, "did not finish within 3 s",
         TORCH, process=True, slow=True),
    Case("torchscript-endless-loop-export", "7", lambda w: (b.script_with_loop(w / "spin.pt"),
                                                            ["export", "spin.pt", "--to", "onnx", "--input",
                                                             "x:1x3:float32", "--timeout", "3", "-o", "o/spin.onnx"])[1],
         2, "did not finish within 3 s", TORCH, process=True, slow=True),
    Case("fifo-as-inputs", "7", lambda w: ["verify", _onnx(w), "tiny.onnx", "--inputs", _fifo(w, "in.npz")], 2,
         "not a regular file", ONNX),
    Case("fifo-as-weights", "7", lambda w: ["inspect", "sample_models.two_layer:two_layer_net", "--weights",
                                            _fifo(w, "w.pt")], 2, "not a regular file", TORCH),
    Case("fifo-in-calibration-folder", "7",
         lambda w: ((w / "imgs").mkdir(), _fifo(w, "imgs/a.png"), b.image_onnx(w / "i.onnx"),
                    ["export", "i.onnx", "--to", "onnx", "--quantize", "int8", "--calibration", "imgs", "-o", "q.onnx"])[3], 2,
         "not a regular file", ONNX),
    Case("input-of-2.7e9-elements", "8", lambda w: ["verify", _onnx(w, shape=(1, 3, 30000, 30000)), "tiny.onnx"], 2,
         "10,800,000,000 per sample", ONNX),
    Case("samples-a-million", "8", lambda w: ["verify", _onnx(w, shape=(1, 1000)), "tiny.onnx", "--samples",
                                              "1000000"], 2, "1000000 random sample", ONNX),
    Case("zip-bomb-pickle", "8", lambda w: (b.zip_bomb(w / "m.pt", "archive/data.pkl"), ["inspect", "m.pt"])[1], 2,
         "decompression bomb"),
    Case("zip-bomb-pt2-config", "8", lambda w: (b.zip_bomb(w / "m.pt2", "model/data/weights/model_weights_config.json",
                                                           extra={"model/archive_format": b"pt2"}),
                                                ["inspect", "m.pt2"])[1], 2, "decompression bomb", TORCH),
    # --- found by fuzzing (bench/fuzz_loaders.py) -------------------------------------------------------------------
    Case("fuzz-npz-patched-data-flag", "fuzz", lambda w: (_files(w, **{"in.npz": b.npz_bytes(x=np.ones((1, 4), "f4"))}),
                                                          b.with_zip_flags(w / "in.npz", 0x20),
                                                          ["verify", _onnx(w), "tiny.onnx", "--inputs", "in.npz"])[2],
         2, "not a readable .npz.*NotImplementedError", ONNX),
    Case("fuzz-npz-encrypted-member", "fuzz", lambda w: (_files(w, **{"in.npz": b.npz_bytes(x=np.ones((1, 4), "f4"))}),
                                                         b.with_zip_flags(w / "in.npz", 0x01),
                                                         ["verify", _onnx(w), "tiny.onnx", "--inputs", "in.npz"])[2],
         2, "not a readable .npz.*encrypted", ONNX),
    Case("fuzz-encrypted-pickle-archive", "fuzz", lambda w: (b.pickled_module_archive(w / "m.pt"),
                                                             b.with_zip_flags(w / "m.pt", 0x01), ["inspect", "m.pt"])[2],
         2, "corrupt archive.*encrypted"),
    Case("fuzz-onnx-undefined-element-type", "fuzz", lambda w: (b.tiny_onnx(w / "m.onnx", elem_type=65),
                                                                 ["inspect", "m.onnx"])[1], 2,
         "element type 65, which ONNX does not define", ONNX),
    Case("onnx-sequence-input", "format", lambda w: (b.tiny_onnx(w / "m.onnx", sequence_input=True),
                                                     ["inspect", "m.onnx"])[1], 2, "is a sequence_type, not a tensor",
         ONNX),
    Case("npz-negative-dimension", "8", lambda w: (_files(w, **{"in.npz": b.npz_declaring((-1, 4))}),
                                                   ["verify", _onnx(w), "tiny.onnx", "--inputs", "in.npz"])[1], 2,
         "negative dimension", ONNX),
    Case("zip-member-bzip2", "8", lambda w: (b.zip_file(w / "m.pt", {"archive/data.pkl": b.payload_pickle()},
                                                        compression=__import__("zipfile").ZIP_BZIP2),
                                             ["inspect", "m.pt"])[1], 2, "compression method 12"),
    Case("npz-declares-a-terabyte", "8", lambda w: (_files(w, **{"in.npz": b.npz_declaring((1, 1 << 38))}),
                                                    ["verify", _onnx(w), "tiny.onnx", "--inputs", "in.npz"])[1], 2,
         "declare 1,099,511,627,776 bytes", ONNX),
    # --- exit codes (11) ----------------------------------------------------------------------------------------------
    Case("timeout-nan", "11", lambda w: ["inspect", _onnx(w), "--timeout", "nan"], 2, "--timeout must be"),
    Case("timeout-negative", "11", lambda w: ["verify", _onnx(w), "tiny.onnx", "--timeout", "-1"], 2,
         "--timeout must be"),
    Case("opset-99", "11", lambda w: ["export", _onnx(w), "--to", "tflite", "--opset", "99"], 2, "--opset"),
    Case("samples-zero", "11", lambda w: ["verify", _onnx(w), "tiny.onnx", "--samples", "0"], 2, "--samples"),
    Case("atol-nan", "11", lambda w: ["verify", _onnx(w), "tiny.onnx", "--atol", "nan"], 2, "atol"),
    Case("precision-bogus", "11", lambda w: ["verify", _onnx(w), "tiny.onnx", "--precision", "int3"], 2, "precision"),
    Case("target-bogus", "11", lambda w: ["export", _onnx(w), "--to", "coreml"], 2, "unknown target"),
    Case("input-spec-garbage", "11", lambda w: ["verify", _onnx(w), "tiny.onnx", "--input", "x:axb"], 2, "--input|x:axb"),
    Case("input-spec-bad-dtype", "11", lambda w: ["verify", _onnx(w), "tiny.onnx", "--input", "x:1x4:float99"], 2,
         "float99"),
    Case("bench-threads-zero", "11", lambda w: ["bench", _onnx(w), "--threads", "0"], 2, "--threads"),
    Case("inputs-not-npz", "11", lambda w: (_files(w, **{"in.npz": "nope"}),
                                            ["verify", _onnx(w), "tiny.onnx", "--inputs", "in.npz"])[1], 2,
         "not a readable", ONNX),
    Case("calibration-undecodable-image", "11",
         lambda w: ((w / "imgs").mkdir(), _files(w, **{"imgs/a.jpg": b"\xff\xd8\xff garbage"}), b.image_onnx(w / "i.onnx"),
                    ["export", "i.onnx", "--to", "onnx", "--quantize", "int8", "--calibration", "imgs",
                     "-o", "q.onnx"])[3], 2,
         "imgs/a.jpg: not a readable image", ONNX),
    Case("calibration-decompression-bomb", "11",
         lambda w: ((w / "imgs").mkdir(), b.png_claiming(w / "imgs" / "a.png", 60000, 60000), b.image_onnx(w / "i.onnx"),
                    ["export", "i.onnx", "--to", "onnx", "--quantize", "int8", "--calibration", "imgs",
                     "-o", "q.onnx"])[3], 2,
         "a.png.*pixel", ONNX),
    Case("calibration-image-between-pil-limits", "11",
         lambda w: ((w / "imgs").mkdir(), b.png_claiming(w / "imgs" / "a.png", 10000, 9500), b.image_onnx(w / "i.onnx"),
                    ["export", "i.onnx", "--to", "onnx", "--quantize", "int8", "--calibration", "imgs",
                     "-o", "q.onnx"])[3], 2, "95000000 pixels|10000x9500 pixels", ONNX),
    Case("calibration-nan", "11",
         lambda w: (_files(w, **{"cal.npz": b.npz_bytes(x=__import__("numpy").full((4, 1, 3, 8, 8), float("nan"),
                                                                                       "float32"))}),
                    b.image_onnx(w / "i.onnx"),
                    ["export", "i.onnx", "--to", "onnx", "--quantize", "int8", "--calibration", "cal.npz",
                     "-o", "q.onnx"])[2], 2,
         "holds NaN or inf", ONNX),
    Case("disk-full", "11", lambda w: (b.tiny_onnx(w / "tiny.onnx", shape=(1, 4096)),
                                       ["export", "tiny.onnx", "--to", "onnx", "--quantize", "fp16", "-o", "out/q.onnx"])[1],
         2, "file-size limit|no space", ONNX, process=True, slow=True, ulimit_file_kb=16),
    Case("json-on-internal-error", "11", lambda w: ["inspect", _onnx(w), "--json", "--timeout", "inf"], 2,
         "--timeout must be"),
    # --- bundles (deploykit package): a bundle that cannot be made honestly is refused -------------------------------
    Case("package-without-manifest-or-source", "bundle", lambda w: ["package", _onnx(w), "-o", "b"], 2,
         "has no deploykit manifest naming its source.*--source", ONNX),
    Case("package-missing-labels", "bundle", lambda w: ["package", _onnx(w), "--source", "tiny.onnx", "-o", "b",
                                                        "--labels", "missing.txt"], 2, "no such labels file", ONNX),
    Case("package-labels-count", "bundle", lambda w: (_files(w, **{"two.txt": "a\nb\n"}),
                                                      ["package", _onnx(w), "--source", "tiny.onnx", "-o", "b",
                                                       "--labels", "two.txt"])[1], 2,
         "2 labels for an output of 3 classes", ONNX),
    Case("package-labels-not-utf8", "bundle", lambda w: (_files(w, **{"l.txt": b"\xff\xfe\xfa\n"}),
                                                         ["package", _onnx(w), "--source", "tiny.onnx", "-o", "b",
                                                          "--labels", "l.txt"])[1], 2, "not a readable UTF-8", ONNX),
    Case("package-normalize-non-image", "bundle", lambda w: ["package", _onnx(w), "--source", "tiny.onnx", "-o", "b",
                                                             "--normalize", "imagenet"], 2, "applies to image inputs",
         ONNX),
    Case("package-unknown-app", "bundle", lambda w: ["package", _onnx(w), "--source", "tiny.onnx", "-o", "b",
                                                     "--app", "android"], 2, "unknown --app", ONNX),
    Case("package-onto-users-folder", "bundle", lambda w: ((w / "b").mkdir(), _files(w, **{"b/mine.txt": "keep"}),
                                                           ["package", _onnx(w), "--source", "tiny.onnx", "-o", "b",
                                                            "--force"])[2], 2, "did not write", ONNX),
    Case("package-changed-source", "bundle",
         lambda w: (_onnx(w), _onnx(w, "src.onnx"),
                    _files(w, **{"tiny.onnx.deploykit.json": '{"source": {"path": "src.onnx", "sha256": "00"}}'}),
                    ["package", "tiny.onnx", "-o", "b"])[3], 2, "missing or has changed", ONNX),
    Case("export-labels-count", "bundle", lambda w: (_files(w, **{"two.txt": "a\nb\n"}),
                                                     ["export", _onnx(w), "--to", "onnx", "--quantize", "fp16",
                                                      "--labels", "two.txt", "-o", "q.onnx"])[1], 2,
         "2 labels for an output of 3 classes", ONNX),
    Case("export-normalize-non-image", "bundle", lambda w: ["export", _onnx(w), "--to", "onnx", "--quantize", "fp16",
                                                            "--normalize", "imagenet", "-o", "q.onnx"], 2,
         "applies to image inputs", ONNX),
    Case("export-task-bogus", "bundle", lambda w: ["export", _onnx(w), "--to", "onnx", "--task", "detect"], 2,
         "unknown --task", ONNX),
    # --- tampered bundles (issue 26): verify fails before reading or running what the app would not -----------------
    Case("verify-bundle-unlisted-numpy", "bundle", lambda w: (_bundle(w), _files(w, **{"b/numpy.py": "import os\n"}),
                                                              ["verify", "b"])[2], 1, "not listed.*numpy.py", ONNX),
    Case("verify-bundle-link", "bundle", lambda w: (_bundle(w), os.symlink("/etc/hostname", w / "b" / "x.txt"),
                                                    ["verify", "b"])[2], 1, "a link in the bundle: x.txt", ONNX),
    Case("verify-bundle-other-model", "bundle", lambda w: (_bundle(w, model="contract.json"), ["verify", "b"])[1], 1,
         "manifest names the model 'contract.json', but the app loads model.onnx", ONNX),
    Case("verify-bundle-listed-outside", "bundle", lambda w: (_bundle(w, **{"../tiny.onnx": "0" * 64}),
                                                              ["verify", "b"])[1], 1,
         r"outside the bundle: \.\./tiny.onnx", ONNX),
    Case("verify-bundle-listed-fifo", "bundle", lambda w: (_bundle(w, pipe="0" * 64), _fifo(w, "b/pipe"),
                                                           ["verify", "b"])[2], 1, "not a regular file.*: pipe", ONNX),
    Case("verify-bundle-listed-dev-zero", "bundle", lambda w: (_bundle(w, **{"../../../../../../../../dev/zero": "0"}),
                                                               ["verify", "b"])[1], 1, "outside the bundle", ONNX),
    # --- terminal escapes (12) -----------------------------------------------------------------------------------------
    Case("escape-in-tensor-name", "12", lambda w: ["inspect", _onnx(w, input_name=f"x{b.ESC}]0;pwned\a{b.ESC}[2J")], 0,
         r"\\x1b|\\u001b|\^\[|x.*0;pwned", ONNX),
    Case("escape-in-producer", "12", lambda w: ["inspect", _onnx(w, producer=f"evil{b.ESC}[31mred{b.ESC}[0m")], 0,
         r"evil", ONNX),
    Case("escape-in-missing-path", "12", lambda w: ["inspect", f"no{b.ESC}[2Jsuch.onnx"], 2, "no such file"),
]
