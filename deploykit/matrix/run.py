"""`deploykit matrix SPEC`: every model × target × precision of a spec as independent cells, on an executor.

    from deploykit.matrix.run import run_matrix
    result = run_matrix("zoo.toml", "zoo-out", executor="local")     # or executor="ray", address="head:6379"
    print(result["summary_line"])            # "12 passed, 1 failed, 3 unsupported"

A cell is convert → verify → bench through the public API (deploykit.api), one child process per phase
(deploykit.matrix.cell), so its record holds what `deploykit export/verify/bench --json` print for it. This
module is the API of the matrix; it composes deploykit.api, which is why it sits above it in the layers.
Finished cells are stored under their content key (deploykit.matrix.keys) as they finish: a re-run, or a run
after Ctrl-C, does only what is left.
"""
from __future__ import annotations

import contextlib
import re
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from deploykit.errors import UsageError
from deploykit.matrix.keys import cell_identity, plan_cell, reusable, unsupported_record
from deploykit.matrix.spec import Cell, MatrixSpec, cell_export, load_spec
from deploykit.matrix.store import OURS, Store, foreign_entries, names, open_store

EXECUTORS = ("local", "ray")
FAILING = ("failed", "crashed", "error")       # an unexpected failure: exit 1
STATUSES = ("passed", "failed", "unsupported", "crashed", "error", "xfail", "xpass")


def run_matrix(spec_path: str, output: str = "deploykit-matrix", *, executor: str = "local",
               address: Optional[str] = None, workers: Optional[int] = None, retry_failed: bool = False,
               force: bool = False, progress: Optional[Callable[[dict, int, int], None]] = None) -> dict:
    """Run every cell of the spec not already finished in ``output``; write matrix.json and matrix.html there.

    ``executor`` is "local" (a process per cell, ``workers`` at once; default one per core) or "ray" (Ray
    tasks; ``address`` of a running cluster, else a Ray instance on this machine). ``retry_failed`` runs cells
    whose stored result failed; ``force`` ignores every stored result. ``progress(record, done, total)`` is
    called as each cell ends. Returns the matrix document (``cells``, ``summary``, ``summary_line``, ``report``).
    """
    if executor not in EXECUTORS:
        raise UsageError(f"unknown --executor {executor!r}", "use local or ray")
    if address and executor != "ray":
        raise UsageError("--address is for --executor ray", "add --executor ray, or drop --address")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise UsageError(f"--workers must be a positive integer (got {workers!r})", "e.g. --workers 2")
    if executor == "ray" and address and "://" not in output:
        raise UsageError(f"-o {output} is a folder of this machine, and the cluster's workers write where they run",
                         "give storage every node reaches as a URI: file:///shared/mount/zoo or s3://bucket/zoo")
    spec = load_spec(spec_path)
    store = open_store(output)
    _check_output(store)
    runner = _executor(executor, address, workers, spec)
    started = time.perf_counter()
    board = _Board(spec, store, progress)
    jobs = board.plan(retry_failed, force)      # reads the store, writes nothing yet
    with runner.session(jobs):                  # a cluster that cannot take the cells fails here, before any write
        board.record_refused()
        try:
            runner.run(jobs, board.finish)
        except KeyboardInterrupt:
            board.write(runner, time.perf_counter() - started, interrupted=True)   # what finished stays, and shows
            raise
    return board.write(runner, time.perf_counter() - started)


def _executor(name: str, address: Optional[str], workers: Optional[int], spec: MatrixSpec):
    from deploykit.matrix.executors import LocalExecutor, RayExecutor

    if name == "ray":
        return RayExecutor(address, workers, spec.memory_mb, spec.retries)
    return LocalExecutor(workers)


# A report file being written when the driver was killed (store.write_bytes's staging name): ours, not foreign.
STAGED = re.compile(r"\.matrix\.(json|html)\.[0-9a-f]{8}\.tmp")


def _check_output(store: Store) -> None:
    """A folder that holds other things is not a matrix's store: refuse it rather than mix files into it."""
    folder = store.local_folder()
    if folder is None or not folder.exists():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in OURS and not STAGED.fullmatch(p.name))
    if foreign:
        raise UsageError(f"-o {folder} holds files a matrix did not write ({', '.join(foreign[:3])})",
                         "give a new folder, or the folder of an earlier matrix run to resume it")
    planted = foreign_entries(folder)
    if planted:     # a link there would take the matrix's writes (or its reads) out of the store
        raise UsageError(f"-o {folder} holds {planted[0].relative_to(folder)}, a link, FIFO or device: a matrix "
                         "store holds only the files and folders it wrote, and never follows a link",
                         "remove it (and check who planted it), or give a new -o")


class _Board:
    """The cells of one run: planned, reused, finished; what is written to the store."""

    def __init__(self, spec: MatrixSpec, store: Store, progress) -> None:
        self.spec, self.store, self.progress = spec, store, progress
        self.records: dict = {}          # key -> record
        self.order: list = []            # (cell, key) in spec order
        self.versions: dict = {}
        self.refused: list = []          # (cell, key, unsupported record) to store once the run starts
        self.reasons: dict = {}          # key -> why its stored record was not reused
        self.run_id = uuid.uuid4().hex[:8]
        self.done = self.total = 0

    def plan(self, retry_failed: bool, force: bool) -> list:
        """The jobs to run; stored results are taken, unsupported cells recorded at once."""
        planned = [(cell, *plan_cell(cell, self.spec)) for cell in self.spec.cells()]
        self.order = [(cell, key) for cell, key, _, _ in planned]
        self.total = len({key for _, key in self.order})
        jobs = []
        for cell, key, versions, unsupported in planned:
            if key in self.versions:        # the same bytes and options under another name: one job, two rows
                continue
            self.versions[key] = versions
            stored, why = (None, None) if force else reusable(self.store, key)
            if why:
                self.reasons[key] = why       # the new record says why the stored one was not reused
            if stored and not (retry_failed and stored.get("status") in FAILING):
                self.records[key] = {**stored, "reused": True}
                self.done += 1
            elif unsupported:
                self.refused.append((cell, key, unsupported_record(cell, key, unsupported, versions)))
            else:
                jobs.append(self._job(cell, key))
        return jobs

    def record_refused(self) -> None:
        """The cells no route can make here: recorded as they are, nothing to run."""
        for cell, key, record in self.refused:
            self._save(cell, key, record)

    def _job(self, cell: Cell, key: str) -> dict:
        from deploykit.exporting.pipeline import default_output

        export = cell_export(cell, self.spec)
        request = {"key": key, "label": cell.label, "source": cell.model.source, "target": cell.target,
                   "export": export.to_dict(),      # the child runs ExportRequest.from_dict(...) of it
                   "settings": self.spec.settings(), "store": self.store.location, "timeout": self.spec.timeout,
                   "retries": self.spec.retries,
                   "run": self.run_id,        # attempts are counted per run: a rerun gets a fresh budget
                   "artifact_name": Path(default_output(export.source, export.target)).name}
        return {"cell": cell, "key": key, "request": request}

    def finish(self, job: dict, phases: dict) -> None:
        """A cell's phases are in: make its record, store it at once (Ctrl-C later loses nothing of it)."""
        self._save(job["cell"], job["key"], record_of(job["cell"], job["key"], phases, self.versions[job["key"]]))

    def _save(self, cell: Cell, key: str, record: dict) -> None:
        record["finished_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if key in self.reasons:
            record["rerun_because"] = self.reasons[key]
        self.store.save_cell(record)
        self.records[key] = record
        self.done += 1
        if self.progress:
            self.progress(shown(cell, record), self.done, self.total)

    def write(self, runner, seconds: float, interrupted: bool = False) -> dict:
        from deploykit.matrix.report import write_report

        cells = [shown(cell, {**self.records.get(key, {"status": "not run"}), **cell_identity(cell, key)})
                 for cell, key in self.order]
        summary = summarize(cells)
        document = {"schema_version": 1, "spec": self.spec.path, "name": self.spec.name,
                    "executor": runner.describe(), "output": self.store.location, "seconds": round(seconds, 1),
                    "interrupted": interrupted, "summary": summary, "summary_line": summary_line(summary),
                    "passed": not any(c["status"] in FAILING for c in cells) and not interrupted,
                    "skipped_files": list(self.spec.skipped), "cells": cells}
        document["report"] = write_report(self.store, document)
        self._forget_attempts()
        return document

    def _forget_attempts(self) -> None:
        """This run's attempt counters (local stores): the records keep the counts."""
        folder = self.store.local_folder()
        if not folder:
            return
        stale = [f".{self.run_id}.attempts"] + [f"{key}." for key in self.versions]   # + markers of killed workers
        for name in names(folder, "running"):
            if name.endswith(stale[0]) or (name.endswith("pid") and name.startswith(tuple(stale[1:]))):
                self.store.remove(f"running/{name}")
        with contextlib.suppress(OSError):      # only when empty; rmdir never follows a link
            (folder / "running").rmdir()


def record_of(cell: Cell, key: str, phases: dict, versions: dict) -> dict:
    """One cell's record from its convert (and bench) phase results."""
    convert, bench = phases["convert"], phases.get("bench")
    record = {**cell_identity(cell, key), "versions": versions,
              **{k: v for k, v in convert.items() if k not in ("phase",)}}
    record.setdefault("verdict", None)
    if bench is not None:
        _add_bench(record, bench)
    record["metrics"] = metrics(record)
    return record


def shown(cell: Cell, record: dict) -> dict:
    """A stored record as this spec shows it: xfail/xpass come from the spec's expect_fail now, not from the run
    that stored the record (the store keeps the plain status, so editing expect_fail needs no rerun)."""
    status = record.get("status")
    if cell.expected_to_fail and status in FAILING + ("passed",):
        return {**record, "status": "xpass" if status == "passed" else "xfail", "outcome_status": status}
    return record


def _add_bench(record: dict, bench: dict) -> None:
    record["bench_attempts"] = bench.get("attempts")
    if bench.get("status") == "crashed":
        record.update(status="crashed", verdict=bench["verdict"], exit_code=1)
        return
    if bench.get("bench_error"):
        record.update(status="failed", verdict=f"bench: {bench['bench_error']}", exit_code=1)
        return
    record["bench"], record["bench_core"] = bench.get("bench"), bench.get("core")
    record.setdefault("phases", {})["bench_s"] = bench.get("bench_s")
    broken = [c for c in (record["bench"] or {}).get("cases", []) if "error" in c]
    if broken:
        record.update(status="failed", exit_code=1,
                      verdict=f"bench: {len(broken)} case(s) failed, the first ({broken[0].get('row')}): "
                              f"{broken[0]['error']}"[:500])


def metrics(record: dict) -> dict:
    """The numbers a grid cell shows: agreement with the source, size, latency of source and artifact."""
    found: dict = {}
    outputs = [o for c in (record.get("verify") or {}).get("comparisons", [])[:1] for o in c.get("outputs", [])]
    if outputs:
        found["cosine"] = min(o.get("cosine") or 0.0 for o in outputs)
        found["max_abs"] = max(o.get("max_abs") or 0.0 for o in outputs)
    if record.get("artifact_bytes"):
        found["artifact_bytes"] = record["artifact_bytes"]
    cases = [c for c in (record.get("bench") or {}).get("cases", []) if "error" not in c]
    artifact = record.get("artifact")
    for role, mine in (("artifact", [c for c in cases if c.get("model") == artifact]),
                       ("source", [c for c in cases if c.get("model") != artifact])):
        if mine:
            best = min(mine, key=lambda c: c["latency_ms"]["p50"])
            found[f"{role}_p50_ms"], found[f"{role}_row"] = best["latency_ms"]["p50"], best["row"]
            if role == "artifact":
                found.update(delegation_metrics(best))
    if found.get("artifact_p50_ms") and found.get("source_p50_ms"):
        found["speedup"] = round(found["source_p50_ms"] / found["artifact_p50_ms"], 2)
    return found


def delegation_metrics(case: dict) -> dict:
    """The artifact row's "delegated" cell (measured here) and each predicted phone accelerator's verdict, as the
    bench computed them once for the artifact (``deploykit.benchmark.delegation``). A record benched before the
    column existed has neither: the grid shows "—"."""
    cell = case.get("delegated")
    if not isinstance(cell, dict) or not isinstance(cell.get("text"), str):
        return {}
    found = {"delegated": cell["text"]}
    predicted = [f"{p.get('target')}: {p.get('verdict')}" for p in cell.get("predicted_all") or ()
                 if isinstance(p, dict)]
    if predicted:
        found["predicted"] = predicted
    return found


def summarize(cells: list) -> dict:
    counts = {status: 0 for status in STATUSES + ("not run",)}
    for cell in cells:
        counts[cell["status"]] = counts.get(cell["status"], 0) + 1
    counts["reused"] = sum(1 for c in cells if c.get("reused"))
    return counts


def summary_line(summary: dict) -> str:
    """The CI line: "N passed, N failed, N unsupported", then what else happened."""
    failed = summary["failed"] + summary["crashed"] + summary["error"]
    line = f"{summary['passed']} passed, {failed} failed, {summary['unsupported']} unsupported"
    extra = [f"{summary[k]} {label}" for k, label in (("crashed", "crashed"), ("error", "internal error"),
                                                     ("xfail", "expected failure(s)"), ("xpass", "unexpected pass(es)"),
                                                     ("not run", "not run"), ("reused", "reused from an earlier run"))
             if summary.get(k)]
    return line + (f" ({'; '.join(extra)})" if extra else "")
