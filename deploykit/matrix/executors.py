"""Executors: who runs a matrix's cells. Both run each phase as a child of the one harness (run_phase).

* ``LocalExecutor`` — threads waiting on the cells' child processes: ``workers`` phases at once (one per core by
  default), the timed (bench) phases one at a time on a thread of their own.
* ``RayExecutor`` — Ray tasks (``deploykit[ray]``, imported only here): 1 CPU and ``memory_mb`` per task, timed
  phases need the per-node resource ``deploykit_bench: 1`` (one at a time per node), models and option files
  shipped once through Ray's object store when the cluster is not this machine, Ray's own ``max_retries`` for a
  worker that dies.

A phase is tried at most ``retries + 1`` times in all — counted in the store, so a retry by Ray and a retry here
draw on the same budget — and then recorded as a ``crashed`` verdict, never left as a hole.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Callable, Optional

from deploykit import errors
from deploykit.child import Stage, run_child
from deploykit.errors import DeploykitError, UsageError
from deploykit.matrix.store import open_store, pack, unpack

CELL = Stage("cell", errors.ConversionError, "the matrix cell {what}",
             "raise timeout in the spec's [matrix] table (seconds per phase) and rerun with --retry-failed",
             "run the cell's own `deploykit export` with --debug for its log")
BENCH_RESOURCE = "deploykit_bench"


class Interrupted(KeyboardInterrupt):
    """Raised in a worker thread when the matrix is stopped: its child is killed, the cell left unfinished."""


def run_phase(phase: str, request: dict, abort: Optional[Callable] = None) -> dict:
    """Run one phase of a cell in a child; a crash or time-out is retried until the cell's budget is spent."""
    store = open_store(request["store"])
    counter, last = f"running/{request['key']}.{phase}.{request['run']}.attempts", "never started"
    while True:
        attempt = _count(store.read_text(counter)) + 1
        if attempt > request["retries"] + 1:
            return {"status": "crashed", "phase": phase, "attempts": attempt - 1, "exit_code": 1,
                    "verdict": f"{phase} did not finish in {attempt - 1} attempt(s): {last}"}
        store.write_text(counter, str(attempt))
        try:
            info = run_child(f"deploykit.matrix.cell:{phase}_job", request, stage=CELL, what=request["label"],
                             timeout=request["timeout"], abort=abort).info
            return {**info, "attempts": attempt}
        except DeploykitError as exc:     # the harness's word for a crash, a kill or a time-out
            last = exc.message
        finally:                          # a killed child never removed its own marker
            if store.local_folder():
                store.remove(f"running/{request['key']}.{phase}.pid")


def _count(text: Optional[str]) -> int:
    """An attempt counter as stored; one that is not a small number was not written by us: no attempts yet."""
    text = (text or "").strip()
    return int(text) if text.isdigit() and len(text) < 4 else 0


class LocalExecutor:
    """Cells on this machine: ``workers`` at once, one timed phase at a time."""

    name = "local"

    def __init__(self, workers: Optional[int] = None) -> None:
        self.workers = workers or cores()
        self._cpus = threading.Semaphore(self.workers)
        self._stop = threading.Event()

    def describe(self) -> dict:
        return {"executor": self.name, "workers": self.workers}

    @contextlib.contextmanager
    def session(self, jobs: list):
        """Nothing to connect to on this machine."""
        yield self

    def run(self, jobs: list, done: Callable[[dict, dict], None]) -> None:
        """Run every job; ``done(job, phases)`` is called (in this thread) as each cell finishes.

        Like Ray's resources: ``workers`` CPU slots, each phase holds one; the timed phases queue on one thread of
        their own (one at a time on this machine), so a cell waiting to be timed never keeps another from converting.
        """
        if not jobs:
            return
        with ThreadPoolExecutor(self.workers, thread_name_prefix="deploykit-cell") as pool, \
                ThreadPoolExecutor(1, thread_name_prefix="deploykit-bench") as timer:
            running = {pool.submit(self._phase, "convert", job["request"]): (job, {}) for job in jobs}
            try:
                while running:
                    finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                    for future in finished:
                        job, phases = running.pop(future)
                        phases["bench" if phases else "convert"] = future.result()
                        if "bench" not in phases and wants_bench(job, phases["convert"]):
                            request = bench_request(job, phases["convert"])
                            running[timer.submit(self._phase, "bench", request)] = (job, phases)
                        else:
                            done(job, phases)
            except BaseException:
                self._stop.set()          # every worker's child is killed within a poll; queued cells never start
                for future in running:
                    future.cancel()
                raise

    def _abort(self) -> Optional[BaseException]:
        return Interrupted() if self._stop.is_set() else None

    def _phase(self, phase: str, request: dict) -> dict:
        with self._cpus:
            if self._stop.is_set():       # stopped while this phase waited for a slot: it never starts
                raise Interrupted()
            return run_phase(phase, request, self._abort)


def cores() -> int:
    """The cores this process may use (its affinity, which a container or `taskset` narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def wants_bench(job: dict, convert: dict) -> bool:
    """A passing cell is timed when one of the spec's bench rows runs its source's or its artifact's format."""
    if convert.get("status") != "passed" or not convert.get("artifact"):
        return False
    from deploykit.benchmark.cases import ROWS
    from deploykit.formats import detect
    from deploykit.registry import target_format

    request = job["request"]
    formats = {detect(request["source"]), target_format(request["target"])}
    return any(name in request["settings"]["bench"] and formats & set(row_formats)
               for name, _runtime, _extra, row_formats, _gpu in ROWS)


def bench_request(job: dict, convert: dict) -> dict:
    return {**job["request"], "artifact": convert["artifact"]}


class RayExecutor:
    """Cells as Ray tasks on a running cluster (``address``) or on a Ray instance started here."""

    name = "ray"

    def __init__(self, address: Optional[str] = None, workers: Optional[int] = None, memory_mb: int = 2048,
                 retries: int = 1) -> None:
        from deploykit import registry

        registry.require(("ray",), "needed for --executor ray")
        self.address, self.workers, self.memory_mb, self.retries = address, workers, memory_mb, retries
        self.ship = address is not None     # another machine may not see our files
        self.nodes = 0

    def describe(self) -> dict:
        return {"executor": self.name, "address": self.address or "local instance", "nodes": self.nodes,
                "workers": self.workers, "models_shipped": self.ship}

    @contextlib.contextmanager
    def session(self, jobs: list):
        """Connected to (or running) Ray while the cells run; no connection when every cell finished before."""
        if not jobs:
            yield self
            return
        import ray

        # Ray's driver prints what its workers report ("(raylet) A worker died ...") on stdout, from threads of its
        # own: stdout belongs to deploykit's result (--json), so while Ray runs, its words go to stderr.
        with contextlib.redirect_stdout(sys.stderr):
            self._connect(ray)
            try:
                self._check_schedulable(ray, jobs)
                yield self
            finally:
                # Also from a cluster we only joined (it keeps running): disconnecting here, not at exit, keeps
                # what Ray still has to say about dead workers on stderr, after the JSON on stdout.
                ray.shutdown()

    def run(self, jobs: list, done: Callable[[dict, dict], None]) -> None:
        if not jobs:
            return
        import ray

        with contextlib.redirect_stdout(sys.stderr):
            self._run(ray, jobs, done)

    def _connect(self, ray) -> bool:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")     # an offline machine must not phone home
        from deploykit.child import code_root

        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, (code_root(), os.environ.get("PYTHONPATH"))))}}
        import logging

        quiet = not os.environ.get("DEPLOYKIT_DEBUG")      # Ray's INFO lines are not deploykit's output
        common = dict(include_dashboard=False, log_to_driver=not quiet, runtime_env=env, ignore_reinit_error=True,
                      logging_level=logging.ERROR if quiet else logging.INFO)
        if self.address:
            _check_reachable(self.address)
            try:
                ray.init(address=self.address, **common)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise UsageError(f"cannot reach the Ray cluster at {self.address}: {' '.join(str(exc).split())[:300]}",
                                 "check --address (the head's host:port from `ray start --head`)") from None
        else:
            ray.init(num_cpus=self.workers or cores(), resources={BENCH_RESOURCE: 1},
                     object_store_memory=200 * 2**20, **common)
        resources = ray.cluster_resources()
        self.workers = int(resources.get("CPU", 0))
        self.nodes = len([n for n in ray.nodes() if n.get("Alive")])
        return self.address is None

    def _run(self, ray, jobs: list, done) -> None:
        convert_task = ray.remote(ray_phase).options(num_cpus=1, memory=self.memory_mb * 2**20,
                                                     max_retries=self.retries)
        bench_task = ray.remote(ray_phase).options(num_cpus=1, resources={BENCH_RESOURCE: 1}, max_retries=self.retries)
        shipped = self._ship(ray, jobs)
        pending = {convert_task.remote("convert", job["request"], shipped.get(job["request"]["key"], {})):
                   (job, {}) for job in jobs}
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
                for ref in ready:
                    job, phases = pending.pop(ref)
                    phase = "bench" if "convert" in phases else "convert"
                    phases[phase] = self._result(ray, ref, phase)
                    if phase == "convert" and wants_bench(job, phases["convert"]):
                        request = bench_request(job, phases["convert"])
                        pending[bench_task.remote("bench", request, shipped.get(request["key"], {}))] = (job, phases)
                    else:
                        done(job, phases)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise

    def _check_schedulable(self, ray, jobs: list) -> None:
        """Ray waits forever for a task no node can take: say so now instead."""
        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if not any(r.get("CPU", 0) >= 1 for r in nodes):
            raise UsageError("the Ray cluster has no node with a CPU to give a cell", "add a node with CPUs")
        if not any(r.get("CPU", 0) >= 1 and r.get("memory", 0) >= self.memory_mb * 2**20 for r in nodes):
            raise UsageError(f"no node of the Ray cluster can grant memory_mb = {self.memory_mb} to a cell",
                             "lower memory_mb in the spec's [matrix] table, or add a larger node")
        if any(job["request"]["settings"]["bench"] for job in jobs) and not any(r.get(BENCH_RESOURCE) for r in nodes):
            raise UsageError(f"the Ray cluster has no node with the {BENCH_RESOURCE} resource, so no timed phase "
                             "could ever be scheduled",
                             f"start each node with: ray start ... --resources '{{\"{BENCH_RESOURCE}\": 1}}', "
                             "or set bench = [] in the spec")

    def _result(self, ray, ref, phase: str) -> dict:
        from ray.exceptions import RayError, RayTaskError

        try:
            return ray.get(ref)
        except RayTaskError as exc:
            return {"status": "error", "phase": phase, "exit_code": 5,
                    "verdict": f"internal error in the Ray task: {' '.join(str(exc.cause).split())[:300]}"}
        except RayError as exc:           # the worker (or its node) died more often than the retries allow
            return {"status": "crashed", "phase": phase, "attempts": self.retries + 1, "exit_code": 1,
                    "verdict": f"{phase}: the Ray worker died {self.retries + 1} time(s): "
                               f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"}

    def _ship(self, ray, jobs: list) -> dict:
        """{cell key: {request path key: object ref}}: every model and option file put once into Ray's store."""
        if not self.ship:
            return {}
        refs: dict = {}
        shipped: dict = {}
        for job in jobs:
            for where, path in _local_files(job["request"]).items():
                if path not in refs:
                    refs[path] = ray.put(pack({Path(path).name: Path(path)}))
                shipped.setdefault(job["request"]["key"], {})[where] = refs[path]
        return shipped


def _check_reachable(address: str, seconds: float = 5.0) -> None:
    """A HOST:PORT nobody answers at is refused in seconds (ray.init would retry it for minutes)."""
    import socket

    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return          # "auto", ray:// client addresses: Ray's own resolution
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        raise UsageError(f"nothing answers at the Ray address {address} ({exc.strerror or exc})",
                         "check --address: the head's host:port that `ray start --head` printed") from None


# The files an export request names besides its source: (section of ExportRequest.to_dict(), key). The labels
# travel as text inside the request, so their file needs no shipping.
SHIPPED_FILES = (("load", "weights"), ("verify", "inputs_npz"), ("quantize", "calibration"))


def _local_files(request: dict) -> dict:
    export = request["export"]
    files = {"source": request["source"]} if Path(request["source"]).exists() else {}
    files.update({f"{section}.{key}": export[section][key] for section, key in SHIPPED_FILES
                  if (export.get(section) or {}).get(key)})
    return files


def ray_phase(phase: str, request: dict, shipped: dict) -> dict:
    """The Ray task: files shipped from the driver land in a temporary folder, then the phase runs as a child."""
    store = open_store(request["store"])
    marker = f"running/{request['key']}.{phase}.worker.pid" if store.local_folder() else None
    if marker:      # which Ray worker runs the phase: what a test (or an operator) kills
        store.write_text(marker, f"{os.getpid()}\n")
    try:
        with tempfile.TemporaryDirectory(prefix="deploykit-ray-") as tmp:
            return run_phase(phase, _unshipped(request, shipped, Path(tmp)))
    finally:
        if marker:
            store.remove(marker)


def _unshipped(request: dict, shipped: dict, folder: Path) -> dict:
    if not shipped:
        return request
    import ray

    export = dict(request["export"])
    request = {**request, "export": export}
    for index, (where, ref) in enumerate(sorted(shipped.items())):
        data = ref if isinstance(ref, bytes) else ray.get(ref)
        names = unpack(data, folder / str(index))
        local = str(folder / str(index) / names[0])
        if where == "source":
            request["source"] = export["source"] = local
        else:
            section, _, key = where.partition(".")
            export[section] = {**export[section], key: local}
    return request
