"""Conversion cases generated from the registry: every edge is exercised by at least one route
from a sample file, so a new edge is tested the day it is registered (or this file fails)."""
from pathlib import Path

import pytest

from deploykit import registry

from deploykit.exporting import routing
from deploykit.checking.checker import make_checker
from deploykit.conversion import ExportOptions
from deploykit.formats import Format
from deploykit.model import LoadOptions, load_model
from deploykit.options import PRECISION_OF, VerifyOptions
from deploykit.parity import tolerance_for

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime, pytest.mark.tensorflow, pytest.mark.litert]

# A sample file for each source format a route can start from: (how to get it, file name or edge that makes it).
SOURCES = {
    Format.EXPORTED_PROGRAM: ("torch", "two_layer_net.pt2"),
    Format.TORCHSCRIPT: ("torch", "two_layer_net.pt"),
    Format.KERAS: ("keras", "keras_two_layer_net.keras"),
    Format.KERAS_H5: ("keras", "keras_two_layer_net.h5"),
    Format.ONNX: ("made", ("two_layer_net.pt2", "onnx")),
    Format.TFLITE: ("made", ("two_layer_net.pt2", "tflite")),
    Format.SAVED_MODEL: ("made", ("keras_two_layer_net.keras", "saved_model")),
}


def _candidate_routes() -> list:
    """(source format, [edge, ...], quantize mode) for every planned route, float and quantized."""
    found = []
    for src in SOURCES:
        for dst in registry.TARGETS.values():
            if src != dst:
                found += [(src, route, None) for route in registry.plan(src, dst)]
        for mode in registry.QUANTIZE_MODES:
            for dst in (Format.ONNX, Format.TFLITE):
                try:
                    found += [(src, r, mode) for r in routing.select_routes(src, dst, None, mode, "int8")]
                except Exception:  # noqa: BLE001 - a source/target pair without quantized routes
                    continue
    return found


def _covering_cases() -> list:
    """The fewest, shortest routes that together use every edge (shortest first, a route kept when it adds one)."""
    cases, covered = [], set()
    for src, route, mode in sorted(_candidate_routes(), key=lambda c: (len(c[1]), c[2] or "")):
        names = {e.name for e in route}
        if not names <= covered:
            cases.append((src, route, mode))
            covered |= names
    return cases


CASES = _covering_cases()


def _params() -> list:
    """The cases, each marked with the markers of the packages its edges need (an ExecuTorch case skips alone
    where ExecuTorch is not installed)."""
    markers = registry.test_markers()
    params = []
    for src, route, mode in CASES:
        needed = {package for edge in route for package in edge.requires}
        marks = [getattr(pytest.mark, m) for m, modules in markers.items() if needed & set(modules)]
        params.append(pytest.param(src, route, mode, marks=marks,
                                   id=f"{src.value}:{'+'.join(e.name for e in route)}{':' + mode if mode else ''}"))
    return params


def test_every_registered_edge_has_a_case():
    covered = {edge.name for _src, route, _mode in CASES for edge in route}
    # Causal-LM edges take a Hugging Face folder or GGUF: tests/test_llm_flow.py exports tiny_llama through each.
    from deploykit.formats import LLM_FORMATS

    missing = {edge.name for edge in registry.EDGES if not edge.src <= LLM_FORMATS} - covered
    assert not missing, f"edges no sample route exercises: {missing} — add a sample source to SOURCES"


@pytest.fixture(scope="module")
def source_file(samples_dir, keras_samples_dir, exported):
    def get(fmt: Format) -> str:
        kind, what = SOURCES[fmt]
        if kind == "torch":
            return str(samples_dir / what)
        if kind == "keras":
            return str(keras_samples_dir / what)
        name, to = what
        folder = keras_samples_dir if name.startswith("keras") else samples_dir
        return exported(name, to, source_dir=folder).artifact
    return get


SHARED_TARGETS = {Format.ONNX: "onnx", Format.TFLITE: "tflite", Format.SAVED_MODEL: "saved_model",
                  Format.COREAI: "coreai"}


def _shared_export(exported, samples_dir, keras_samples_dir, src: Format, route: list, mode):
    """The run's own export of this route when it is one the `exported` fixture makes for other tests anyway (a
    sample source, a float export, the route an export takes first): asserted on, not converted again."""
    kind, name = SOURCES[src]
    to = SHARED_TARGETS.get(route[-1].dst)
    if mode or kind not in ("torch", "keras") or to is None:
        return None
    folder = keras_samples_dir if kind == "keras" else samples_dir
    first = routing.select_routes(src, route[-1].dst, None)[0]
    if [e.name for e in first] != [e.name for e in route]:
        return None
    return exported(name, to, None, folder)


@pytest.mark.slow
@pytest.mark.parametrize("src, route, mode", _params())
def test_route_converts_and_every_hop_is_verified(source_file, exported, samples_dir, keras_samples_dir, tmp_path,
                                                  src, route, mode):
    shared = _shared_export(exported, samples_dir, keras_samples_dir, src, route, mode)
    if shared is not None:
        table = shared.chosen.to_dict()
        assert shared.passed and table["outcome"] == "OK", table
        assert [h["edge"] for h in table["hops"]] == [e.name for e in route]
        assert all(hop["outcome"] == "OK" for hop in table["hops"])
        assert table["hops"][-1]["artifact_sha256"] == shared.opened.sha256 == _sha256(shared.artifact)
        assert shared.opened.format == route[-1].dst
        return
    model = load_model(source_file(src), LoadOptions())
    checker = make_checker(model, VerifyOptions(samples=3))
    suffix = routing.SUFFIXES[route[-1].dst]
    # A target no runtime here runs (Core ML off macOS) can only be kept unverified: it must say so, never pass.
    unprovable = not registry.runtime_for(route[-1].dst).available
    options = ExportOptions(samples=3, quantize=mode, keep_unverified=unprovable)
    run = routing.run_route(route, model, tmp_path / f"out{suffix}", options, checker,
                            calibration=[f for _k, f in checker.feeds(8)] if mode == "int8" else None,
                            final_tolerance=tolerance_for(PRECISION_OF[mode]) if mode else None)
    assert run.passed and run.unverified == unprovable, run.to_dict()
    assert not unprovable or (run.final.parity.samples == 0 and not run.final.parity.passed)
    table = run.to_dict()
    assert table["outcome"] == "OK" and [h["edge"] for h in table["hops"]] == [e.name for e in route]
    for hop, made in zip(table["hops"], run.hops):
        assert hop["outcome"] == "OK" and hop["artifact_sha256"] == made.artifact.sha256
        assert made.artifact.path == str(made.path) and Path(made.path).exists()
    assert run.artifact.format == route[-1].dst


def _sha256(path: str) -> str:
    from deploykit.fsutil import sha256_of

    return sha256_of(Path(path))
