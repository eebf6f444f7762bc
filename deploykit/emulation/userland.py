"""The provisioned arm64 userland and the emulated child interpreter an ARM runtime runs in.

    interpreter = child_interpreter("cortex-a76")     # provisions on first use
    run_child("deploykit.harness:run_job", request, interpreter=interpreter, ...)

The child is ``qemu-aarch64-static -cpu CORE -L VIEW VIEW/usr/bin/python3.11 -P -m deploykit.child JOB``: the
same child module as every other, reading deploykit's (pure Python) code from the host's checkout and numpy and
the runtimes from the userland's aarch64 ``site/``. Nothing of the host's Python (its site-packages, PYTHONPATH,
virtualenv) reaches it: an x86 extension module imported under emulation would crash it.
"""
from __future__ import annotations

import os
from pathlib import Path

from deploykit.emulation import provision
from deploykit.emulation.cores import DEFAULT_CORE, core, cpuinfo, features

QEMU = "bin/qemu-aarch64-static"
PYTHON = "usr/bin/python3.11"
HWCAP_PROBE = ("import ctypes; libc = ctypes.CDLL(None); libc.getauxval.restype = ctypes.c_ulong; "
               "print(libc.getauxval(16), libc.getauxval(26))")        # AT_HWCAP, AT_HWCAP2


def cache_root() -> Path:
    return Path(os.environ.get("DEPLOYKIT_CACHE", Path.home() / ".cache" / "deploykit"))


def cache_dir() -> Path:
    """Where this lock's userland lives (a new lock gets a new folder; the old one can be deleted)."""
    return cache_root() / f"arm64-{provision.lock_hash()}"


def ready() -> bool:
    return (cache_dir() / provision.COMPLETE).is_file()


def unavailable_reason() -> str:
    """Why the ARM runtimes cannot run here ("" when they can, or can once provisioned on first use)."""
    return "" if ready() else provision.host_problem()


def record() -> dict:
    """What the installed userland holds (versions, drift from the lock), {} when it is not installed."""
    import json

    try:
        return json.loads((cache_dir() / provision.COMPLETE).read_text())
    except (OSError, ValueError):
        return {}


def ensure(timeout: float = provision.INSTALL_TIMEOUT_S) -> Path:
    """The userland's folder, provisioned now if needed."""
    return provision.install(cache_dir(), timeout)


def child_interpreter(cpu: str = DEFAULT_CORE, timeout: float = provision.INSTALL_TIMEOUT_S):
    """The ``deploykit.child.Interpreter`` of an arm64 Python emulating core ``cpu`` (UsageError for an unknown
    core; the userland and the core's view are made on first use)."""
    from deploykit.child import Interpreter

    chosen = core(cpu or DEFAULT_CORE)
    root = ensure(timeout)
    view = core_view(root, chosen.name)
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONNOUSERSITE": "1",
           "PYTHONPATH": str(root / "site"), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return Interpreter(argv=(str(root / QEMU), "-cpu", chosen.name, "-L", str(view), str(view / PYTHON)),
                       env=env, label=f"arm64 {chosen.describe()}, emulated by qemu", cpu=chosen.name)


def core_view(root: Path, name: str) -> Path:
    """The sysroot as core ``name`` sees it: links to the shared sysroot's folders plus a ``proc/cpuinfo`` of
    its own (qemu 7.2 would show the guest the host's x86 one). Made once per core, atomically."""
    view = root / "cores" / name
    if (view / "proc" / "cpuinfo").is_file():
        return view
    import shutil
    import tempfile

    (root / "cores").mkdir(exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{name}.tmp", dir=root / "cores"))
    try:
        for entry in (root / "sysroot").iterdir():
            (staging / entry.name).symlink_to(Path("..", "..", "sysroot", entry.name))
        (staging / "proc").mkdir()
        hwcap, hwcap2 = _hwcaps(root, name)
        processors = len(os.sched_getaffinity(0)) or 1
        (staging / "proc" / "cpuinfo").write_text(cpuinfo(core(name), features(hwcap, hwcap2), processors))
        try:
            os.rename(staging, view)
        except OSError:             # another process made the same view meanwhile
            if not (view / "proc" / "cpuinfo").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return view


def _hwcaps(root: Path, name: str) -> tuple:
    """The HWCAP bits qemu gives a guest on core ``name`` (asked of the guest itself, before anything reads
    /proc/cpuinfo)."""
    from deploykit.child import run_tool
    from deploykit.errors import DeploykitError, MissingDependency

    argv = [str(root / QEMU), "-cpu", name, "-L", str(root / "sysroot"), str(root / "sysroot" / PYTHON), "-I", "-c",
            HWCAP_PROBE]
    fix = f"delete {root} and run again to reinstall the userland"
    try:
        out = run_tool(argv, cwd=root, timeout=120, what=f"the emulated arm64 Python on {name}",
                       env={"PATH": "/usr/bin:/bin"}, remedy=fix).split()
        return int(out[0]), int(out[1])
    except (DeploykitError, IndexError, ValueError) as exc:
        raise MissingDependency(f"the emulated arm64 Python does not start on {name}: {exc}", fix) from None


def status() -> dict:
    """What doctor shows: installed or not (and why it cannot be), where, size, lock, versions, drift, cores."""
    from deploykit.emulation.cores import CORES

    folder, installed = cache_dir(), record()
    cores = [{"name": c.name, "arch": c.arch, "fp16_arithmetic": c.fp16_arithmetic, "dotprod": c.dotprod,
              "lse": c.lse, "phone": c.phone, "default": c.name == DEFAULT_CORE} for c in CORES.values()]
    info = {"installed": bool(installed), "path": str(folder), "lock": provision.lock_hash(),
            "unavailable": unavailable_reason(), "cores": cores,
            "locked": {"qemu": _locked("qemu-user-static"), "python": _locked("python3.11"),
                       "wheels": {w["name"]: w["version"] for w in provision.lock()["wheels"]["packages"]}}}
    if installed:
        info.update(size_bytes=_size(folder), installed_at=installed.get("installed_at"),
                    seconds=installed.get("seconds"), qemu=installed.get("qemu"), python=installed.get("python"),
                    wheels=installed.get("wheels", {}), drift=installed.get("drift", []),
                    core_views=sorted(p.name for p in (folder / "cores").glob("*") if p.is_dir()
                                      and (p / "proc" / "cpuinfo").is_file()))
    return info


def _locked(name: str) -> str:
    return next((p["version"] for p in provision.lock()["debian"]["packages"] if p["name"] == name), "")


def _size(folder: Path) -> int:
    """Bytes on disk (symbolic links not followed: a core view is links into the shared sysroot)."""
    total, seen = 0, set()
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            stat = os.lstat(os.path.join(dirpath, name))
            if (stat.st_dev, stat.st_ino) not in seen and not os.path.islink(os.path.join(dirpath, name)):
                seen.add((stat.st_dev, stat.st_ino))       # hard links (Debian's python3.11 has some) once
                total += stat.st_blocks * 512               # on disk, as du counts
    return total
