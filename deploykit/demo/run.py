"""`deploykit demo`: the main job end to end on the bundled samples (PyTorch -> ONNX, TFLite and ExecuTorch)."""
from __future__ import annotations

import time
from pathlib import Path

from deploykit import fsutil, registry
from deploykit.checking.checker import verify_artifacts
from deploykit.errors import ConversionError, UsageError
from deploykit.exporting.pipeline import export_model
from deploykit.formats import Format
from deploykit.introspect import inspect_model
from deploykit.model import LoadOptions
from deploykit.options import QuantizeOptions, VerifyOptions
from deploykit.readiness import readiness
from deploykit.readiness.printing import print_readiness
from deploykit.request import ExportRequest

MARKER = ".deploykit-demo"


def _prepare_dir(output: str) -> Path:
    folder = Path(output)
    if folder.exists() and (not folder.is_dir() or (any(folder.iterdir()) and not (folder / MARKER).exists())):
        raise UsageError(f"{folder} exists and was not made by `deploykit demo`",
                         "choose an empty or new directory with -o")
    folder.mkdir(parents=True, exist_ok=True)
    # through fsutil: a link planted at the marker's name is replaced, never written through (issue 26)
    fsutil.write_text_atomic(folder / MARKER, "files here are written by `deploykit demo` and replaced on its next run\n")
    return folder


def training_notice() -> "str | None":
    """What the demo says before the one-time MobileNetV2 training (None when its weights are cached)."""
    from sample_models.mobilenet import TRAINING_TIME, is_trained_here

    if is_trained_here():
        return None
    return (f"   mobilenet_v2 is trained once on this machine ({TRAINING_TIME}; its progress is shown below), "
            "then its weights are cached for every later run")


def run_demo(output: str = "deploykit-demo", echo: bool = True, debug: bool = False) -> dict:
    registry.require(("torch", "onnx", "onnxscript", "onnxruntime", "ai_edge_litert", "litert_torch", "onnx2tf",
                      "executorch"),
                     "needed by the demo")
    from deploykit import render
    from sample_models.build import build_samples

    say = render.console.print if echo else (lambda *a, **k: None)
    folder = _prepare_dir(output)
    started, steps = time.perf_counter(), []
    say(f"[bold]1. build sample models[/bold] into {folder}/ (seeded, trained / calibrated)")
    notice = training_notice()
    if notice:
        say(notice)
    built = build_samples(folder, ("two_layer_net", "mobilenet_v2", "dynamic_gate"), force=True)
    for item in built:
        say(f"   {item['name']}: {item['parameters']:,} parameters {_preparation_text(item['preparation'])}")
    steps.append({"step": "samples", "built": [b["name"] for b in built]})

    exports = [("two_layer_net.pt", "TorchScript"), ("mobilenet_v2.pt2", "torch.export")]
    exported = {}      # (sample, Format) -> ExportResult, reused by the last step's table
    for number, (name, kind) in enumerate(exports, start=2):
        say(f"[bold]{number}. export[/bold] {name} ({kind}) → ONNX, verified on 5 seeded samples")
        output = str(folder / Path(name).with_suffix(".onnx").name)
        result = export_model(ExportRequest(str(folder / name), "onnx", output, force=True, debug=debug))
        exported[(Path(name).stem, Format.ONNX)] = result
        if echo:
            render.print_export(result.to_dict())
        steps.append({"step": f"export {name}", **result.to_dict()})

    say("[bold]4. export[/bold] mobilenet_v2.pt2 → TFLite (the first route that verifies: litert-torch, "
        "else ONNX + onnx2tf)")
    tflite = export_model(ExportRequest(str(folder / "mobilenet_v2.pt2"), "tflite", str(folder / "mobilenet_v2.tflite"),
                                        force=True, debug=debug))
    exported[("mobilenet_v2", Format.TFLITE)] = tflite
    if echo:
        render.print_export(tflite.to_dict())
    steps.append({"step": "export mobilenet_v2.pt2 to tflite", **tflite.to_dict()})

    say("[bold]5. verify the chain[/bold] mobilenet_v2.pt2 → .onnx → .tflite on its example image + 5 random ones")
    verified = verify_artifacts(str(folder / "mobilenet_v2.pt2"), [str(folder / "mobilenet_v2.onnx"),
                                                                   str(folder / "mobilenet_v2.tflite")],
                                LoadOptions(), VerifyOptions(inputs_npz=str(folder / "mobilenet_v2.inputs.npz")))
    if echo:
        render.print_verify(verified.to_dict())
    steps.append({"step": "verify mobilenet_v2 chain", **verified.to_dict()})

    say("[bold]6. inspect --readiness[/bold] mobilenet_v2.onnx and .tflite: which accelerator takes them")
    info = inspect_model(str(folder / "mobilenet_v2.onnx"))
    found = [readiness(str(folder / name)) for name in ("mobilenet_v2.onnx", "mobilenet_v2.tflite")]
    info["readiness"] = found[0].to_dict()
    if echo:
        render.print_inspect(info)
        print_readiness(found[1].to_dict(), render.console)
    steps.append({"step": "inspect", "parameters": info["parameters"], "nodes": info["nodes"],
                  "readiness": {f"{r.format}: {t.target}": t.summary() for r in found for t in r.tables}})

    steps.append(_quantize_step(folder, say, echo, debug))
    steps.append(_dynamic_step(folder, say, debug))
    steps.append(_seed_story_step(folder, exported, say, echo, debug))
    passed = all(s.get("passed", True) for s in steps)
    seconds = time.perf_counter() - started
    say(f"[bold]{'demo passed' if passed else 'demo FAILED'}[/bold] in {seconds:.1f} s — files in {folder}/")
    return {"passed": passed, "output": str(folder), "seconds": round(seconds, 2), "steps": steps}


def _preparation_text(info: dict) -> str:
    if "accuracy" in info:
        cached = " (weights from the cache)" if info.get("from_cache") else f" in {info['seconds']:.0f} s"
        return (f"trained {info['steps']} steps on {info['task']}: {info['accuracy']:.1%} accurate on held-out "
                f"images{cached}")
    return str(info or "")


def _quantize_step(folder: Path, say, echo: bool, debug: bool) -> dict:
    """int8 with real calibration data: the shapes images that come with the trained CNN."""
    from deploykit import render

    say("[bold]7. quantize[/bold] mobilenet_v2.pt2 → int8 ONNX (static QDQ), calibrated on 100 of the shapes "
        "images, judged on the 32 held out")
    result = export_model(ExportRequest(str(folder / "mobilenet_v2.pt2"), "onnx",
                                        str(folder / "mobilenet_v2.int8.onnx"), force=True, debug=debug,
                                        quantize=QuantizeOptions(mode="int8", calibration=str(folder / "shapes"))))
    if echo:
        render.print_export(result.to_dict())
    return {"step": "quantize mobilenet_v2 to int8", **result.to_dict()}


def _dynamic_step(folder: Path, say, debug: bool) -> dict:
    """Data-dependent control flow must be refused with the construct named, not exported wrong."""
    say("[bold]8. export[/bold] the dynamic-graph sample (an `if` on tensor values) — deploykit must refuse it")
    try:
        export_model(ExportRequest("sample_models.dynamic:dynamic_gate", "onnx", str(folder / "dynamic_gate.onnx"),
                                   force=True, debug=debug,
                                   load=LoadOptions(weights=str(folder / "dynamic_gate.weights.pt"))))
    except ConversionError as exc:
        say(f"   caught as expected (exit {exc.exit_code}): {exc.one_line()}")
        return {"step": "export dynamic_gate", "passed": True, "expected_failure": exc.to_dict()}
    say("   [red]the dynamic model exported without a verdict: this is a bug[/red]")
    return {"step": "export dynamic_gate", "passed": False}


def _seed_story_step(folder: Path, exported: dict, say, echo: bool, debug: bool) -> dict:
    """The lecture's claim, measured: PyTorch for research; ONNX Runtime, LiteRT or ExecuTorch for production."""
    from deploykit import render
    from deploykit.demo.seed_story import seed_story

    say("[bold]9. research vs production[/bold]: the two-layer net and MobileNetV2 exported to ONNX, TFLite and "
        "ExecuTorch (each verified) — and to Core AI where it runs, a reference column — then each benchmarked "
        "in its own process at 1 thread")
    table = seed_story(folder, {"two_layer_net": folder / "two_layer_net.pt", "mobilenet_v2": folder / "mobilenet_v2.pt2"},
                       exported, debug, echo=say)
    if echo:
        render.print_seed_story(table)
    return {"step": "research vs production", **table}
