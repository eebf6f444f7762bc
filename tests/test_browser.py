"""The browser runtimes (onnxruntime-web, LiteRT.js in headless Chromium): parity against the source through the
one parity engine, timing in the page, the web bundle's pages, `deploykit serve`, and the errors of a model or a
browser that cannot run. Tests that start Chromium are `slow` (a few seconds each) and `browser`."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from deploykit import registry
from tests.conftest import ROOT, assert_clean_error, run_cli
from tests.hostile import builders



def in_chromium(test):
    """A test that starts Chromium: marked `browser` (playwright) and `slow` (seconds each)."""
    for mark in (pytest.mark.browser, pytest.mark.slow, pytest.mark.onnxruntime):
        test = mark(test)
    return test


def test_browser_runtimes_are_registered_after_the_native_ones():
    names = [entry.name for entry in registry.RUNTIMES]
    assert names.index("onnxruntime-web") > names.index("onnxruntime")
    assert names.index("litert-js") > names.index("litert")
    from deploykit.formats import Format

    assert registry.runtime_for(Format.ONNX).name == "onnxruntime"          # the default stays native
    assert registry.runtime_for(Format.ONNX, "onnxruntime-web").target.endswith("OnnxRuntimeWebRunner")
    assert "onnxruntime-web" not in registry.runtime_distributions()        # web assets, not pip packages


def test_a_missing_chromium_makes_the_runtimes_unavailable_with_the_install_line(monkeypatch, tmp_path):
    from deploykit import browser

    monkeypatch.setenv("DEPLOYKIT_CHROMIUM", "/nowhere/chromium")
    assert "no Chromium browser found at /nowhere/chromium" in browser.unavailable_reason()
    entry = next(e for e in registry.RUNTIMES if e.name == "litert-js")
    assert not entry.available
    from deploykit.benchmark.cases import BenchOptions, plan

    (tmp_path / "x.tflite").write_bytes(b"\0" * 4 + b"TFL3" + b"\0" * 64)
    _cases, skipped = plan([str(tmp_path / "x.tflite")], BenchOptions(runtimes=("litert-js",)))
    assert skipped and "no Chromium" in skipped[0]["reason"]


def test_the_server_sends_isolation_headers_and_serves_nothing_outside_its_mounts(tmp_path):
    from deploykit.browser import serve

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "index.html").write_text("<p>hi</p>")
    (tmp_path / "site" / "m.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("no")
    with serve(tmp_path / "site") as server:
        assert server.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(server.url + "/index.html") as response:
            assert response.headers["Cross-Origin-Opener-Policy"] == "same-origin"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        with urllib.request.urlopen(server.url + "/m.wasm") as response:
            assert response.headers["Content-Type"] == "application/wasm"
        with urllib.request.urlopen(server.url + "/") as response:      # a folder serves its index.html
            assert response.read() == b"<p>hi</p>"
        (tmp_path / "site" / "sub").mkdir()
        rebound = urllib.request.Request(server.url + "/index.html", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:      # DNS rebinding: only loopback names
            urllib.request.urlopen(rebound)
        assert refused.value.code == 403
        for path in ("/../secret.txt", "/%2e%2e/secret.txt", "/sub/"):   # no way out, no listings
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(server.url + path)
            assert refused.value.code == 404


def test_a_one_file_mount_serves_that_file_and_nothing_beside_it(tmp_path):
    from deploykit.browser import Server

    (tmp_path / "m.onnx").write_bytes(b"model")
    (tmp_path / "private.txt").write_text("no")
    with Server({"/model/m.onnx": tmp_path / "m.onnx"}) as server:
        with urllib.request.urlopen(server.url + "/model/m.onnx") as response:
            assert response.read() == b"model"
        for path in ("/model/private.txt", "/model/", "/model/m.onnx/x"):
            with pytest.raises(urllib.error.HTTPError):
                urllib.request.urlopen(server.url + path)


def test_golden_vectors_for_the_web_are_raw_bytes_at_aligned_offsets(tmp_path):
    from deploykit.bundle.web import _write_golden

    inputs = [{"ids": np.array([[1, 2, 3]], np.int64), "x": np.ones((1, 3), np.float32)}]
    outputs = [{"y": np.arange(5, dtype=np.float32), "ok": np.array([True, False])}]
    _write_golden(tmp_path, inputs, outputs)
    index = json.loads((tmp_path / "golden-web.json").read_text())
    data = (tmp_path / "golden.bin").read_bytes()
    for entry, value in zip(index["samples"][0]["inputs"] + index["samples"][0]["outputs"],
                            [*inputs[0].values(), *outputs[0].values()]):
        assert entry["offset"] % 8 == 0
        dtype = "uint8" if entry["dtype"] == "bool" else entry["dtype"]
        got = np.frombuffer(data[entry["offset"]:entry["offset"] + entry["bytes"]], dtype).reshape(entry["shape"])
        np.testing.assert_array_equal(got, value.astype(dtype))


@pytest.mark.skipif(not Path("/usr/bin/node").exists(), reason="needs node")
def test_the_web_selftest_judges_as_deploykit_does(tmp_path):
    """golden.js (the web self-test's rule) and deploykit.parity agree: pooled over samples, integers exactly,
    matching infinities pass, a sign flip or a NaN fails."""
    from deploykit import parity

    tolerance = parity.PRESETS["fp32"]
    rng = np.random.default_rng(0)
    small, large = rng.standard_normal(10).astype("f4"), 3 * rng.standard_normal(10).astype("f4")
    cases = [([small, large], [small + 2e-4, large]), ([small], [small + 1e-2]),
             ([np.array([999, 3], np.int32)], [np.array([998, 3], np.int32)]),
             ([np.array([np.inf, -np.inf, 1.0], "f4")], [np.array([np.inf, -np.inf, 1.0], "f4")]),
             ([np.array([np.inf, 1.0], "f4")], [np.array([-np.inf, 1.0], "f4")]),
             ([np.array([np.nan, 1.0], "f4")], [np.array([np.nan, 1.0], "f4")])]

    def tensor(a):
        return {"dtype": a.dtype.name, "shape": list(a.shape), "data": [None if np.isnan(v) else
                                                                         ("inf" if v == np.inf else "-inf" if v == -np.inf else float(v)) for v in a.ravel()]}

    payload = [{"refs": [tensor(r) for r in refs], "got": [tensor(g) for g in gots]} for refs, gots in cases]
    (tmp_path / "cases.json").write_text(json.dumps({"cases": payload, "tolerance": tolerance.__dict__}))
    for module in ("web/app/golden.js", "web/backends.js"):     # laid out as in a bundle
        (tmp_path / Path(module).name).write_bytes((ROOT / "deploykit" / module).read_bytes())
    script = f"""
import {{judge}} from '{tmp_path / "golden.js"}';
import {{readFileSync}} from 'node:fs';
const {{cases, tolerance}} = JSON.parse(readFileSync('{tmp_path / "cases.json"}', 'utf8'));
const num = (v) => v === null ? NaN : v === 'inf' ? Infinity : v === '-inf' ? -Infinity : v;
const typed = (t) => ({{...t, data: (t.dtype.startsWith('float') ? Float32Array : Int32Array).from(t.data.map(num))}});
console.log(JSON.stringify(cases.map((c) => judge(c.refs.map(typed), c.got.map(typed), tolerance).ok)));
"""
    proc = subprocess.run(["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    web_says = json.loads(proc.stdout)
    ours = [parity.compare([{"y": r} for r in refs], [{"y": g} for g in gots], tolerance).passed for refs, gots in cases]
    assert web_says == ours == [True, False, False, True, False, False]


@contextlib.contextmanager
def served(folder: Path):
    """`deploykit serve FOLDER --port 0` as its own process: yields (the line it printed first, the process), which
    gets SIGTERM when the block ends (its stderr is then in ``process.stderr_text``)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "deploykit.cli.commands", "serve", str(folder), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        yield proc.stdout.readline(), proc
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.stderr_text = proc.communicate(timeout=30)[1]


@pytest.mark.serial
def test_serve_prints_its_url_serves_the_folder_and_stops_cleanly_on_sigterm(tmp_path):
    (tmp_path / "index.html").write_text("<p>bundle</p>")
    with served(tmp_path) as (line, proc):
        url = line.split(" at ", 1)[1].split("/ ", 1)[0]
        with urllib.request.urlopen(url + "/index.html") as response:
            assert response.read() == b"<p>bundle</p>"
            assert response.headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    assert proc.returncode == 0, proc.stderr_text
    assert "Traceback" not in proc.stderr_text


def test_serve_refuses_what_is_not_a_folder(tmp_path):
    assert_clean_error(run_cli("serve", str(tmp_path / "missing")), 2, "is not a folder")


def test_verify_refuses_an_unknown_runtime_or_one_that_runs_none_of_the_artifacts(tmp_path):
    model = builders.tiny_onnx(tmp_path / "m.onnx")
    assert_clean_error(run_cli("verify", str(model), str(model), "--runtime", "webgpu"), 2, "unknown --runtime")
    assert_clean_error(run_cli("verify", str(model), str(model), "--runtime", "litert-js"), 2,
                       "--runtime litert-js runs tflite models, and none of the artifacts is one")


@pytest.mark.parametrize("runtime", ["onnxruntime-web"])
@pytest.mark.onnxruntime
def test_a_missing_browser_is_exit_3_with_the_install_line(tmp_path, monkeypatch, runtime):
    model = builders.tiny_onnx(tmp_path / "m.onnx")
    monkeypatch.setenv("DEPLOYKIT_CHROMIUM", str(tmp_path / "no-chromium"))
    assert_clean_error(run_cli("verify", str(model), str(model), "--runtime", runtime), 3,
                       "cannot run here: no Chromium browser found", "apt-get install chromium")


# --- in Chromium ------------------------------------------------------------------------------------------


def _no_browser_left() -> bool:
    from deploykit.child import descendants

    alive = [pid for pid in descendants(os.getpid()) if _state(pid) not in ("Z", "")]
    return not [pid for pid in alive if b"chrom" in _cmdline(pid)]


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.mark.parametrize("source, via_keras", [
    ("mobilenet_v2.pt2", False), ("tiny_transformer.pt2", False), ("two_layer_custom_relu.pt2", False),
    ("keras_two_layer_net.keras", True)])
@pytest.mark.torch
@pytest.mark.litert
@in_chromium
def test_both_browser_runtimes_match_the_source_at_fp32(source, via_keras, samples_dir, keras_samples_dir, exported):
    """Each sample's ONNX in onnxruntime-web and TFLite in LiteRT.js against the framework source, through the
    one parity engine (the same report verify gives for native runtimes)."""
    from deploykit import api

    folder = keras_samples_dir if via_keras else samples_dir
    artifacts = [exported(source, to, source_dir=folder).artifact for to in ("onnx", "tflite")]
    result = api.verify(str(folder / source), artifacts,
                        options=api.VerifyOptions(samples=3, runtimes=("onnxruntime-web", "litert-js")))
    assert result.passed, result.to_dict()
    ran = [note for report in result.reports for note in report.notes if " ran on " in note]
    assert any("onnxruntime-web (wasm" in note for note in ran) and any("litert-js (wasm" in note for note in ran)
    assert all(report.candidate.endswith(("on onnxruntime-web", "on litert-js")) for report in result.reports)
    assert _no_browser_left()



def _tampered_tflite(path: Path, out: Path) -> Path:
    """Flip the sign of float32 words in the middle of the file (the weights, in a small dense net)."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for offset in range(middle - 20000 - middle % 4 + 3, middle + 20000, 4):
        data[offset] ^= 0x80
    out.write_bytes(bytes(data))
    return out


@pytest.mark.torch
@pytest.mark.litert
@in_chromium
def test_a_tampered_model_fails_in_the_browser_too(samples_dir, exported, tmp_path):
    tflite = Path(exported("two_layer_net.pt2", "tflite").artifact)
    bad = _tampered_tflite(tflite, tmp_path / "tampered.tflite")
    proc = run_cli("verify", str(samples_dir / "two_layer_net.pt2"), str(bad), "--runtime", "litert-js", "--json")
    assert proc.returncode == 1, proc.stderr[-2000:]
    report = json.loads(proc.stdout)["comparisons"][0]
    assert not report["passed"] and report["candidate"].endswith("on litert-js")
    src = builders.division_onnx(tmp_path / "plus.onnx", 1.0)
    flipped = builders.division_onnx(tmp_path / "minus.onnx", -1.0)
    assert run_cli("verify", str(src), str(flipped), "--runtime", "onnxruntime-web").returncode == 1



def _one_node_onnx(path: Path, node, extra_opsets=(), initializers=()) -> Path:
    from onnx import TensorProto, helper

    graph = helper.make_graph([*node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)] +
                              [helper.make_opsetid(d, 1) for d in extra_opsets])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


@in_chromium
def test_an_op_the_web_runtime_lacks_is_named_and_a_model_over_its_memory_is_refused(tmp_path):
    from onnx import helper, numpy_helper

    source = _one_node_onnx(tmp_path / "relu.onnx", [helper.make_node("Relu", ["x"], ["y"])])
    custom = _one_node_onnx(tmp_path / "custom.onnx", [helper.make_node("FooBar", ["x"], ["y"], domain="my.ops")],
                            ["my.ops"])
    assert_clean_error(run_cli("verify", str(source), str(custom), "--runtime", "onnxruntime-web"), 2,
                       "onnxruntime-web cannot run op my.ops:FooBar", "custom.onnx")
    # Expand to 1.2e9 floats (4.8 GB): native ONNX Runtime could, a 32-bit WASM heap cannot.
    shape = numpy_helper.from_array(np.array([1_200_000_000], np.int64), "shape")
    huge = _one_node_onnx(tmp_path / "huge.onnx", [helper.make_node("Expand", ["x", "shape"], ["big"]),
                                                   helper.make_node("ReduceSum", ["big"], ["y"], keepdims=1)],
                          initializers=[shape])
    assert_clean_error(run_cli("verify", str(source), str(huge), "--runtime", "onnxruntime-web", "--samples", "1"),
                       2, "running huge.onnx in Chromium ran out of memory", "at most 4 GiB")
    assert _no_browser_left()



@in_chromium
@pytest.mark.serial
def test_a_page_that_never_answers_is_a_time_out_and_no_browser_is_left(tmp_path):
    # A page busy for seconds (not a tiny model, which a fast machine answers within the limit).
    model = builders.heavy_onnx(tmp_path / "m.onnx")
    proc = run_cli("verify", str(model), str(model), "--runtime", "onnxruntime-web", "--timeout", "2")
    assert_clean_error(proc, 1, "did not finish within 2 s")
    assert _no_browser_left()


@in_chromium
def test_missing_wasm_files_name_the_stage(tmp_path, monkeypatch):
    """A runtime install without its .wasm files (a broken cache) fails at load with the page's reason."""
    from deploykit import browser

    modules = browser.node_modules()
    monkeypatch.setenv("DEPLOYKIT_CACHE", str(tmp_path / "cache"))
    broken = browser.cache_dir() / "node_modules"
    (broken / "onnxruntime-web" / "dist").mkdir(parents=True)
    for name in ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs"):     # the .wasm itself is missing
        (broken / "onnxruntime-web" / "dist" / name).write_bytes((modules / "onnxruntime-web/dist" / name).read_bytes())
    (broken / ".deploykit-complete").write_text("ok\n")
    model = builders.tiny_onnx(tmp_path / "m.onnx")
    assert_clean_error(run_cli("verify", str(model), str(model), "--runtime", "onnxruntime-web"), 2,
                       "onnxruntime-web found no WASM backend", "reinstall")



@pytest.mark.torch
@in_chromium
@pytest.mark.serial
def test_bench_times_in_the_page_and_the_headline_gains_a_browser_column(samples_dir, exported, tmp_path):
    onnx = exported("two_layer_net.pt2", "onnx").artifact
    proc = run_cli("bench", str(samples_dir / "two_layer_net.pt2"), onnx, "--runtime", "torch", "--runtime",
                   "onnxruntime", "--runtime", "onnxruntime-web", "--iterations", "20", "--warmup", "2", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(proc.stdout)
    web = next(c for c in data["cases"] if c["row"] == "onnxruntime-web")
    assert web["latency_ms"]["iterations"] == 20 and web["latency_ms"]["p50"] > 0
    assert web["warmup_calls"] >= 2 + 5          # the asked warm-up, then at least one round until steady
    assert web["memory_of"] == "the browser page's renderer process" and web["page_peak_rss_bytes"] > 20e6
    assert web["providers"][0].startswith("wasm (SIMD), 1 thread") and "Chromium" in web["providers"][1]
    browser = data["headline"]["browser"]
    assert browser["row"].startswith("onnxruntime-web") and browser["slowdown_vs_native"] > 0



def _open_pages(bundle: Path):
    """(server, playwright, browser) on a web bundle; the caller closes them in reverse."""
    from playwright.sync_api import sync_playwright

    from deploykit.browser import chromium_path, serve

    server = serve(bundle).__enter__()
    playwright = sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
    return server, playwright, browser


def _selftest(browser, url: str) -> dict:
    page = browser.new_page()
    page.goto(url + "/selftest.html")
    page.wait_for_function("() => document.body.dataset.result !== undefined", timeout=120_000)
    result = page.evaluate("window.selftest")
    result["status"] = page.inner_text("#status")
    page.close()
    return result


@pytest.mark.torch
@pytest.mark.litert
@pytest.mark.parametrize("to", ["onnx", "tflite"])
@in_chromium
def test_web_bundle_selftest_passes_and_the_page_classifies_a_real_picture(samples_dir, exported, tmp_path, to):
    from sample_models.shapes import CLASSES

    artifact = exported("mobilenet_v2.pt2", to).artifact
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    bundle = tmp_path / "site"
    made = run_cli("package", artifact, "--app", "web", "-o", str(bundle), "--labels", str(tmp_path / "labels.txt"),
                   "--normalize", "unit", "--json")
    assert made.returncode == 0, made.stderr[-2000:]
    info = json.loads(made.stdout)
    assert info["app"] == "web" and info["runtime"] == {"onnx": "onnxruntime-web", "tflite": "litert-js"}[to]
    assert {"index.html", "selftest.html", "backends.js", "web.json", "golden.bin"} <= set(info["files"])
    assert not (bundle / "app.py").exists() and any(f.endswith(".wasm") for f in info["files"])
    bom = json.loads((bundle / "runtime-bom.json").read_text())     # the browser runtime's, with its note
    listed = [row["op"] for row in bom["operators"].get("builtin_operators", bom["operators"].get("operators", []))]
    assert bom["runtime"] == info["runtime"] and {"onnx": "Conv", "tflite": "CONV_2D"}[to] in listed, listed
    assert any(note.startswith(info["runtime"] + " (browser)") for note in bom["readiness"]["notes"])
    picture = next((samples_dir / "shapes").glob("*_diamond.png"))
    server, playwright, browser = _open_pages(bundle)
    try:
        result = _selftest(browser, server.url)
        assert result["passed"], result
        assert "self-test passed" in result["status"] and "thread" in result["status"]
        page = browser.new_page()
        page.goto(server.url + "/index.html")
        page.wait_for_function("() => document.body.dataset.ready === 'yes'", timeout=120_000)
        page.set_input_files("#file", str(picture))
        page.wait_for_function("() => document.body.dataset.predicted === 'yes'", timeout=60_000)
        rows = page.inner_text("#results").split("\n")
        assert rows[1].split("\t")[0] == "diamond", rows
        assert page.evaluate("crossOriginIsolated") is True
        # A changed model fails the same page, and `verify BUNDLE` (which runs it in the browser runtime too).
        model = bundle / info["model"]
        tampered = _tampered_tflite(model, tmp_path / "t") if to == "tflite" else None
        if tampered is None:
            import onnx
            from onnx import numpy_helper

            proto = onnx.load(str(model))
            biggest = max(proto.graph.initializer, key=lambda t: np.prod(t.dims))
            biggest.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(biggest), biggest.name))
            onnx.save(proto, str(tmp_path / "t"))
        model.write_bytes((tmp_path / "t").read_bytes())
        assert not _selftest(browser, server.url)["passed"]
    finally:
        browser.close()
        playwright.stop()
        server.__exit__(None, None, None)
    verify = run_cli("verify", str(bundle), "--json")
    assert verify.returncode == 1
    assert "changed since packaging: " + info["model"] in json.dumps(json.loads(verify.stdout))


@pytest.mark.tensorflow
@in_chromium
def test_a_custom_op_litert_js_cannot_run_is_named_before_it_returns_garbage(tmp_path):
    """LiteRT.js ran a model with an unresolved custom op and returned garbage (cosine 2e-6 against the source)
    where native LiteRT refuses it: deploykit names the op before loading."""
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
    def igamma(x):
        return tf.math.igamma(x, x + 1.0)

    converter = tf.lite.TFLiteConverter.from_concrete_functions([igamma.get_concrete_function()], igamma)
    converter.allow_custom_ops = True
    (tmp_path / "custom.tflite").write_bytes(converter.convert())
    source = builders.division_onnx(tmp_path / "source.onnx", 1.0)     # any source with a [1, 4] float input
    assert_clean_error(run_cli("verify", str(source), str(tmp_path / "custom.tflite"), "--runtime", "litert-js"), 2,
                       "LiteRT.js cannot run custom op Igamma used by custom.tflite")
