"""Before the device: which accelerator takes a model, and which operators the app's runtime must ship.

``readiness(path)`` answers for one artifact with one table per delegate or execution provider
(``deploykit.readiness.report``): LiteRT's XNNPACK (measured here) and GPU delegate (deploykit's verdict from the
delegate's published rules, not TFLite's analyzer), ONNX Runtime's NNAPI / CoreML NeuralNetwork / CoreML MLProgram
(its mobile checker, parsed), ExecuTorch's delegate calls against portable kernels (the .pte's plan); Core AI,
Core ML and the browser runtimes say where no static answer exists. The probes run in a child.
"""
from __future__ import annotations

from pathlib import Path

from deploykit.child import LOAD, run_child
from deploykit.errors import UsageError
from deploykit.formats import Format, detect
from deploykit.model import LoadOptions
from deploykit.readiness.report import NO_STATIC_ANSWER, Coverage, Fix, OpIssue, Readiness

__all__ = ["Coverage", "Fix", "OpIssue", "Readiness", "readiness", "PROBED", "STATIC_NOTES"]

PROBED = frozenset({Format.TFLITE, Format.ONNX, Format.ORT, Format.EXECUTORCH})

# What is said, per format, about runtimes for which nothing here can answer before the device.
STATIC_NOTES = {
    Format.TFLITE: ("litert-js (browser): LiteRT.js runs the XNNPACK delegate built for WASM; its WebGPU "
                    "accelerator has " + NO_STATIC_ANSWER + " here (decided by the browser's GPU at load time)",),
    Format.ONNX: ("onnxruntime-web (browser): the WASM execution provider runs every operator ONNX Runtime's CPU "
                  "EP has; the WebGPU and WebNN providers have " + NO_STATIC_ANSWER + " here",),
    Format.ORT: ("onnxruntime-web (browser) loads .ort files too: its WASM execution provider runs every operator "
                 "listed below",),
    Format.COREAI: ("Core AI: " + NO_STATIC_ANSWER + " on Linux — the CPU / GPU / Neural Engine plan is made on "
                    "the device by Core AI's compiler (coreai-core on Linux runs one CPU path)",),
    Format.COREML: ("Core ML: " + NO_STATIC_ANSWER + " on Linux — MLComputePlan, which says which unit runs each "
                    "op, runs on macOS only",),
}


def readiness(path: str, load: LoadOptions = LoadOptions()) -> Readiness:
    """Every readiness table deploykit can compute for the artifact at ``path``.

    ``load.input_specs`` pin dynamic dims first (ONNX: the checker is re-run on the pinned copy), so the tables
    show what the app would get with the shapes it feeds.
    """
    fmt = detect(path)
    if fmt not in PROBED and fmt not in STATIC_NOTES:
        raise UsageError(f"{Path(path).name} is a source model ({fmt.value}), not a deployable artifact: readiness is a "
                         "property of what ships",
                         "export it first (deploykit export MODEL --to tflite|onnx|executorch), then inspect the "
                         "artifact with --readiness")
    if fmt not in PROBED:
        return Readiness(path=str(path), format=fmt.value, notes=STATIC_NOTES[fmt])
    pins = {spec.name: list(spec.shape) for spec in load.input_specs
            if spec.shape and all(isinstance(d, int) and d > 0 for d in spec.shape)}
    found = run_child("deploykit.readiness.jobs:probe_job", {"path": str(path), "format": fmt.value, "pins": pins},
                      stage=LOAD, what=Path(str(path)).name, timeout=load.timeout, reuse=True).info
    notes = tuple(found.get("notes", ())) + _export_notes(path) + STATIC_NOTES.get(fmt, ())
    if found.get("pinned"):
        notes = ("dims pinned by --input: " + ", ".join(f"{name}:{'x'.join(map(str, dims))}"
                                                       for name, dims in found["pinned"].items()),) + notes
    return Readiness.from_dict({**found, "path": str(path), "format": fmt.value, "notes": notes})


def _export_notes(path: str) -> tuple:
    """What the export recorded about delegation (ExecuTorch's converter counts the operators XNNPACK took, which
    the .pte keeps only inside the delegate's payload), when the manifest beside the file is for this very file."""
    from deploykit.fsutil import sha256_of
    from deploykit.manifest import read as read_manifest

    stored = read_manifest(path) if Path(path).is_file() else None
    hops = [hop for hop in (stored or {}).get("route", []) if isinstance(hop, dict)]
    if not hops or hops[-1].get("artifact_sha256") != sha256_of(path):
        return ()
    return tuple(f"at export: {note}" for note in hops[-1].get("notes", [])
                 if isinstance(note, str) and note.startswith("XNNPACK took "))
