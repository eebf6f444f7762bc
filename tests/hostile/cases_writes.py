"""Hostile cases: writes and bundles (issue 26: links planted where deploykit writes, `--force` on user files, tampered bundle files and carried contracts, the generated app.py).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list. A tampered bundle is
re-recorded as a tamperer would (every listed file's sha256 recomputed), so that verify must read the files to
find out; each ends in verify's verdict "tampered: …" (exit 1), never an internal error.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from tests.hostile import builders as b
from tests.hostile.kit import ONNX, Case, _bundle, _files, _onnx

PACKAGE = ["package", "tiny.onnx", "--source", "tiny.onnx", "--samples", "1"]
REPORT = tuple(f"out/{name}" for name in ("report.html", "report.json", "latency.png", "cold_start.png",
                                          "memory.png", "size.png", "footprint.png"))


def _relisted(work, edit) -> list:
    """A real bundle ``b`` of tiny.onnx (with three labels), ``edit(folder)`` applied, the record's sha256s redone."""
    _files(work, **{"labels.txt": "cat\ndog\nbird\n"})
    _bundle_with_labels(work)
    folder = work / "b"
    edit(folder)
    info = json.loads((folder / "deploykit-bundle.json").read_text())
    info["files"] = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() if (folder / name).is_file()
                     else digest for name, digest in info["files"].items()}
    (folder / "deploykit-bundle.json").write_text(json.dumps(info))
    return ["verify", "b"]


def _bundle_with_labels(work) -> None:
    from deploykit import api
    from deploykit.bundle.packaging import PackageOptions

    _onnx(work)
    api.package(str(work / "tiny.onnx"), str(work / "b"), PackageOptions(labels=str(work / "labels.txt"), samples=1,
                                                                          source=str(work / "tiny.onnx")))


def _edit_json(name: str, change):
    def edit(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return edit


def _write(name: str, data):
    return lambda folder: (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


def _npz(**arrays):
    return lambda folder: np.savez(folder / "golden.npz", **arrays)


def _carried(value: str):
    """model.onnx's deploykit.contract metadata replaced by ``value`` (an app on a phone reads this, not contract.json)."""
    def edit(folder):
        import onnx

        proto = onnx.load(folder / "model.onnx")
        for prop in proto.metadata_props:
            if prop.key == "deploykit.contract":
                prop.value = value
        onnx.save(proto, folder / "model.onnx")
    return edit


def _forced_over(work, make) -> list:
    _onnx(work)
    make(work)
    return [*PACKAGE, "-o", "mine", "--force"]


def _planted_manifest(work) -> None:
    """A user's folder with a forged bundle record naming files outside it, and the user's own work."""
    _files(work, **{"victim.txt": "precious"})
    (work / "mine").mkdir()
    _files(work / "mine", **{"thesis.tex": "years of work", "deploykit-bundle.json": json.dumps(
        {"bundle": 1, "app": "python", "model": "model.onnx", "runtime": "onnxruntime",
         "files": {"../victim.txt": hashlib.sha256(b"precious").hexdigest(), "/etc/hostname": "0" * 64}})})


def _real_bundle_plus(work, name: str, text: str) -> None:
    _bundle(work)
    (work / "b").rename(work / "mine")
    _files(work / "mine", **{name: text})       # a file the user added to (or edited in) a real bundle


def _dollar_report(work, plant_link: bool) -> list:
    name = "m$\\frac{1}$.onnx"      # mathtext cannot parse it: the report crashed with exit 5
    _onnx(work, name)
    if plant_link:      # where the old save_figure wrote first, by name, following the link
        _files(work, **{"victim.txt": "precious"})
        (work / "out").mkdir()
        (work / "out" / "latency.tmp.png").symlink_to("../victim.txt")
    return ["bench", name, "--runtime", "onnxruntime", "--report", "out"]


def _damaged_carrier(work, kind: str = "inputs", field: str = "shape") -> str:
    """carried.onnx: a bundle's model whose carried contract lost its first ``kind`` tensor's ``field`` (valid JSON,
    schema and version); returns its name (it computes what tiny.onnx computes)."""
    import onnx

    _bundle(work)
    proto = onnx.load(work / "b" / "model.onnx")
    for prop in proto.metadata_props:
        if prop.key == "deploykit.contract":
            contract = json.loads(prop.value)
            del contract[kind][0][field]
            prop.value = json.dumps(contract)
    onnx.save(proto, work / "carried.onnx")
    return "carried.onnx"


TAMPERED = r"tampered: [\s\S]*"        # then the reason (the verdict table may wrap it)
CASES: list = [
    # --- links where deploykit writes (1) ----------------------------------------------------------------------
    Case("writes-link-as-bundle-folder", "26-links", lambda w: (_onnx(w), (w / "elsewhere").mkdir(),
                                                                 (w / "mine").symlink_to("elsewhere"),
                                                                 [*PACKAGE, "-o", "mine"])[3], 2,
         r"mine already exists \(a link\)", ONNX),
    Case("writes-dangling-link-as-bundle-folder", "26-links",
         lambda w: (_onnx(w), (w / "mine").symlink_to("not-yet"), [*PACKAGE, "-o", "mine"])[2], 2,
         r"mine already exists \(a link\)", ONNX),
    Case("writes-report-png-temp-link", "26-links", lambda w: _dollar_report(w, True), 0, r"report: out/report.html",
         ONNX, creates=REPORT, slow=True),      # a bench with a report: seconds
    # --- `package --force` replaces only what deploykit wrote (2) ---------------------------------------------
    Case("writes-force-planted-manifest", "26-force", lambda w: _forced_over(w, _planted_manifest), 2,
         r"mine is a directory deploykit did not write .*which deploykit never writes.*remove it yourself", ONNX),
    Case("writes-force-user-file-in-bundle", "26-force",
         lambda w: _forced_over(w, lambda w: _real_bundle_plus(w, "notes.txt", "mine")), 2,
         r"did not write \(notes.txt is not one of the files deploykit wrote\)", ONNX),
    Case("writes-force-edited-bundle-file", "26-force",
         lambda w: _forced_over(w, lambda w: _real_bundle_plus(w, "requirements.txt", "numpy\n")), 2,
         r"did not write \(requirements.txt changed since deploykit wrote it\)", ONNX),
    Case("writes-force-manifest-not-json", "26-force",
         lambda w: _forced_over(w, lambda w: ((w / "mine").mkdir(), _files(w / "mine", **{
             "deploykit-bundle.json": "[", "data.csv": "1,2"}))), 2, r"is not JSON deploykit wrote", ONNX),
    # --- tampered bundle files, re-recorded (3) -----------------------------------------------------------------
    Case("writes-tamper-manifest-not-json", "26-tamper", lambda w: _relisted(w, lambda f: None) and
         (_write("deploykit-bundle.json", "{nope")(w / "b"), ["verify", "b"])[1], 1,
         TAMPERED + "deploykit-bundle.json is not valid JSON", ONNX),
    Case("writes-tamper-manifest-nan-and-huge", "26-tamper", lambda w: _relisted(w, lambda f: None) and
         (_write("deploykit-bundle.json", (w / "b" / "deploykit-bundle.json").read_text().replace(
             '"app": "python"', '"app": NaN, "x": ' + "9" * 400))(w / "b"), ["verify", "b"])[1], 1,
         TAMPERED + "deploykit-bundle.json has no valid app", ONNX),
    Case("writes-tamper-golden-json-samples", "26-tamper",
         lambda w: _relisted(w, _edit_json("golden.json", lambda g: g.update(samples=10**12))), 1,
         TAMPERED + "golden.json's samples is not a whole number", ONNX),
    Case("writes-tamper-golden-json-tolerance", "26-tamper",
         lambda w: _relisted(w, _edit_json("golden.json", lambda g: g["tolerance"].update(atol="big", evil=1))), 1,
         TAMPERED + "golden.json's tolerance is not the tolerance package writes", ONNX),
    Case("writes-tamper-golden-npz-object-array", "26-tamper",
         lambda w: _relisted(w, _npz(**{"input/0/x": np.array([{}], dtype=object),
                                        "output/0/y": np.zeros((1, 3), np.float32)})), 1,
         TAMPERED + "golden.npz is not an archive of plain numeric arrays", ONNX),
    Case("writes-tamper-golden-npz-truncated", "26-tamper",
         lambda w: _relisted(w, lambda f: _write("golden.npz", (f / "golden.npz").read_bytes()[:90])(f)), 1,
         TAMPERED + "golden.npz is not an archive", ONNX),
    Case("writes-tamper-golden-npz-shape", "26-tamper",
         lambda w: _relisted(w, _npz(**{"input/0/x": np.zeros((2, 7), np.float32),
                                        "output/0/y": np.zeros((1, 3), np.float32)})), 1,
         TAMPERED + r"golden.npz's 'input/0/x' is float32 \(2, 7\)", ONNX),
    Case("writes-tamper-golden-npz-keys", "26-tamper",
         lambda w: _relisted(w, _npz(**{"input/7/x": np.zeros((1, 4), np.float32), "junk": np.zeros(1)})), 1,
         TAMPERED + "golden.npz does not hold one array per input and output", ONNX),
    Case("writes-tamper-requirements-removed", "26-tamper",
         lambda w: _relisted(w, lambda f: (f / "requirements.txt").unlink()), 1,
         TAMPERED + "listed but missing: requirements.txt", ONNX),
    Case("writes-tamper-app-not-python", "26-tamper", lambda w: _relisted(w, _write("app.py", b"\xff\xfe(")), 1,
         TAMPERED + "the app loads no model verify can name", ONNX),
    Case("writes-tamper-model-truncated", "26-tamper",
         lambda w: _relisted(w, lambda f: _write("model.onnx", (f / "model.onnx").read_bytes()[:60])(f)), 1,
         TAMPERED + "model.onnx cannot be read", ONNX),
    Case("writes-tamper-model-replaced", "26-tamper",
         lambda w: _relisted(w, lambda f: b.tiny_onnx(f / "model.onnx", producer="someone-else")), 1,
         TAMPERED + "model.onnx carries no contract", ONNX),
    Case("writes-tamper-stale-record", "26-tamper",
         lambda w: _relisted(w, lambda f: None) and (_write("golden.json", "{")(w / "b"), ["verify", "b"])[1], 1,
         TAMPERED + "changed since packaging: golden.json", ONNX),
    # --- tampered contracts: contract.json and the one model.onnx carries (3) ----------------------------------
    Case("writes-contract-not-json", "26-contract", lambda w: _relisted(w, _write("contract.json", "]")), 1,
         TAMPERED + "contract.json is not valid JSON", ONNX),
    Case("writes-contract-wrong-types", "26-contract",
         lambda w: _relisted(w, _edit_json("contract.json", lambda c: c["inputs"][0].update(shape="1x4"))), 1,
         TAMPERED + "contract.json is not a deploykit contract: input 'x': shape must be a list", ONNX),
    Case("writes-contract-labels-not-a-file-name", "26-contract",
         lambda w: _relisted(w, _edit_json("contract.json", lambda c: c["outputs"][0].update(labels=[1, 2, 3]))), 1,
         TAMPERED + "labels must name a file", ONNX),
    Case("writes-contract-labels-wrong-length", "26-contract",
         lambda w: _relisted(w, _write("labels.txt", "cat\ndog\n")), 1,
         TAMPERED + "labels.txt holds 2 labels for the 3 classes of y", ONNX),
    Case("writes-contract-gigantic-string", "26-contract",
         lambda w: _relisted(w, _edit_json("contract.json", lambda c: c["inputs"][0].update(dtype="f" * 2**22))), 1,
         TAMPERED + "input 'x': dtype must be a text", ONNX),
    Case("writes-contract-normalize-not-numbers", "26-contract",
         lambda w: _relisted(w, _edit_json("contract.json", lambda c: c["inputs"][0].update(image={
             "height": 1, "width": 4, "channels": 1, "color_order": "RGB", "resize": "stretch", "scale": "1/255",
             "mean": ["a"], "std": [float("nan")]}))), 1,
         TAMPERED + "image mean and std must be 1", ONNX),
    Case("writes-contract-carried-not-json", "26-contract", lambda w: _relisted(w, _carried("{nope")), 1,
         TAMPERED + "the contract model.onnx carries is not valid JSON", ONNX),
    Case("writes-contract-carried-differs", "26-contract",
         lambda w: _relisted(w, lambda f: _carried((f / "contract.json").read_text().replace('"classify"',
                                                                                             '"raw"'))(f)), 1,
         TAMPERED + "the contract model.onnx carries is not contract.json", ONNX),
    # A damaged contract carried by a model outside a bundle is left out (it is metadata beside the model), where
    # it crashed `inspect` (KeyError) and `verify` (exit 5).
    Case("writes-contract-carried-damaged-inspect", "26-contract", lambda w: ["inspect", _damaged_carrier(w)], 0,
         r"carried.onnx\s+format: onnx", ONNX),
    Case("writes-contract-carried-no-labels-inspect", "fuzz",      # found by bench/fuzz_loaders.py: KeyError, exit 5
         lambda w: ["inspect", _damaged_carrier(w, "outputs", "labels")], 0, r"carried.onnx\s+format: onnx", ONNX),
    Case("writes-contract-carried-damaged-verify", "26-contract",
         lambda w: (_damaged_carrier(w), ["verify", "tiny.onnx", "carried.onnx"])[1], 0, r"verified: 1 comparison", ONNX),
    # --- a `$...$` name in a report (5) ------------------------------------------------------------------------
    Case("writes-report-mathtext-name", "26-report", lambda w: _dollar_report(w, False), 0, r"report: out/report.html",
         ONNX, creates=("out",) + REPORT, slow=True),
]
