"""One matrix cell, as child jobs of the one harness: convert + verify, then (apart) bench.

Each phase calls the public API exactly as the commands do, so a cell's record holds what
`deploykit export --json`, `deploykit verify --json` and `deploykit bench --json` print for it:

    convert_job: api.export(ExportRequest.from_dict(the spec's request)) then api.verify(source, artifact)
    bench_job:   api.bench([source, artifact]) on the spec's runtime rows, pinned to one core

A phase that raises a DeploykitError ends in a verdict (a record with a status), never an exception: the
executor retries only what did not answer at all (a crash, a kill, a time-out).
"""
from __future__ import annotations

import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from deploykit.errors import DeploykitError


def convert_job(request: dict, arrays: dict) -> dict:
    """Export the cell's model and verify the artifact; returns the convert part of the cell's record."""
    from deploykit.matrix.store import open_store

    store = open_store(request["store"])
    with _running(store, request, "convert"), _workspace(store, request) as folder:
        started = time.perf_counter()
        record = {"status": "passed", "phases": {}}
        try:
            _export_and_verify(request, folder, record)
        except DeploykitError as exc:
            # Once a cell runs, every verdict is a failure: `unsupported` is only what planning refuses before
            # anything starts (a runtime that cannot run the artifact's ops after conversion fails the cell).
            record.update(status="failed", verdict=exc.one_line().removeprefix("error: "),
                          exit_code=exc.exit_code, **({"outcome": exc.outcome.value} if exc.outcome else {}))
        except Exception as exc:  # noqa: BLE001 - a bug in deploykit is a cell's verdict too, not a lost cell
            record.update(status="error", verdict=f"internal error: {type(exc).__name__}: {exc}"[:500], exit_code=5)
        record["phases"]["convert_s"] = round(time.perf_counter() - started, 3)
        _publish(store, request, folder, record)
    return record


def _export_and_verify(request: dict, folder: Path, record: dict) -> None:
    from deploykit import api
    from deploykit.request import ExportRequest

    export = replace(ExportRequest.from_dict(request["export"]), output=str(folder / request["artifact_name"]))
    settings = request["settings"]
    exported = api.export(export)
    record["export"] = exported.to_dict()
    record["artifact_local"] = exported.artifact
    if not exported.passed:
        record.update(status="failed", verdict="the export's parity check failed", exit_code=1)
        return
    if not settings["verify_runtimes"]:
        # The export's check is `deploykit verify` on the artifact's native runtime with the same options: running
        # it again would only repeat it (0.4-15 s a cell). Other runtimes are a verify of their own.
        record["verify"] = {"passed": exported.passed, "source": export.source, "comparisons": [exported.parity.to_dict()],
                            "from": "the export's check (the artifact's native runtime)"}
        return
    started = time.perf_counter()
    checked = api.verify(export.source, [exported.artifact], load=export.load,
                         options=replace(export.verify, runtimes=tuple(settings["verify_runtimes"]),
                                         arm_cpu=settings.get("arm_cpu")))
    record["verify"] = checked.to_dict()
    record["phases"]["verify_s"] = round(time.perf_counter() - started, 3)
    if not checked.passed:
        worst = next((c for c in checked.to_dict()["comparisons"] if not c.get("passed")), {})
        record.update(status="failed", exit_code=1,
                      verdict=f"verify failed: {worst.get('summary') or worst.get('candidate') or 'see the parity table'}")


def bench_job(request: dict, arrays: dict) -> dict:
    """Time the source and the artifact on the spec's rows, on one core of its own; the bench part of a record."""
    from deploykit import api
    from deploykit.matrix.store import open_store
    from deploykit.request import ExportRequest

    store = open_store(request["store"])
    with _running(store, request, "bench"), tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        core = _pin_to_one_core()
        artifact = store.get_tree(request["artifact"], Path(tmp))
        export = ExportRequest.from_dict(request["export"])     # the source loads as the export loaded it
        started = time.perf_counter()
        try:
            result = api.bench([export.source, str(artifact)], api.BenchOptions(
                runtimes=tuple(request["settings"]["bench"]), threads=(1,), warmup=request["settings"]["warmup"],
                iterations=request["settings"]["iterations"], timeout=request["timeout"]), load=export.load)
        except DeploykitError as exc:
            return {"bench_error": exc.one_line().removeprefix("error: "), "core": core}
        for case in result.get("cases", []):       # the artifact's place in the store, not the temporary copy
            if case.get("model") == str(artifact):
                case["model"] = request["artifact"]
        probed = (result.get("delegation") or {}).get("artifacts") or {}
        if str(artifact) in probed:
            probed[request["artifact"]] = probed.pop(str(artifact))
        return {"bench": result, "core": core, "bench_s": round(time.perf_counter() - started, 3)}


def _pin_to_one_core() -> "int | None":
    """The timed process (and the runs it starts) on the last core it may use: the executor lets one timed
    phase run per node at a time, so two timed jobs never share a core."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    core = max(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    return core


@contextmanager
def _running(store, request: dict, phase: str):
    """``running/<key>.<phase>.pid`` while the phase runs (local stores): who to ask, or to kill. Written through
    the store (never through a link planted at that name)."""
    marker = f"running/{request['key']}.{phase}.pid" if store.local_folder() else None
    if marker:
        store.write_text(marker, f"{os.getpid()}\n")
    try:
        yield
    finally:
        if marker:
            store.remove(marker)


@contextmanager
def _workspace(store, request: dict):
    """Where export writes: a private temporary folder, whatever the store. The converters write by path, so they
    never write into the store itself; the store copies what they made (:func:`_publish`) without following links."""
    with tempfile.TemporaryDirectory(prefix="deploykit-cell-") as tmp:
        yield Path(tmp)


def _publish(store, request: dict, folder: Path, record: dict) -> None:
    """The export's folder (artifact, manifest, side files) into the store's ``artifacts/<key>/``; the record keeps
    their references and the sha256 of what the store now holds, which a rerun checks before it reuses the record."""
    local = record.pop("artifact_local", None)
    if not local or not Path(local).exists():
        return
    from deploykit.benchmark.cases import artifact_size

    record["artifact_bytes"] = artifact_size(local)
    references = store.put_artifacts(folder, request["key"])
    export = record.get("export") or {}
    manifest = Path(export["manifest"]).name if export.get("manifest") else None
    for field, name in (("artifact", Path(local).name), ("manifest", manifest)):
        if name in references:
            record[field] = export[field] = references[name]
            record[f"{field}_sha256"] = store.digest(references[name])
