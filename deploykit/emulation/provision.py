"""Install the arm64 userland once, from Debian's packages and PyPI, pinned by ``arm64-lock.json``.

What is installed into ``~/.cache/deploykit/arm64-<lock hash>`` (no system change, no binfmt, no root needed
beyond what ``apt-get download`` asks):

* ``bin/qemu-aarch64-static`` from Debian's ``qemu-user-static`` (amd64);
* ``sysroot/``: Debian's arm64 ``python3.11`` and ``libstdc++6`` with their dependencies, each ``.deb`` unpacked
  with ``dpkg -x`` (no maintainer scripts run);
* ``site/``: the aarch64 cp311 wheels of numpy, ai-edge-litert and onnxruntime (the versions constraints.txt pins),
  installed by pip with ``--require-hashes`` and ``--no-deps`` from the lock's closed list.

The lock names every package's version and sha256. apt verifies a download against Debian's signed index; the
lock's sha256 is checked on top. A pinned Debian version that a point release has since replaced cannot be
downloaded any more: the current one is taken, and the drift recorded in ``userland.json`` (doctor shows it;
``python -m deploykit.emulation.provision --relock`` writes a new lock). The install is atomic: it is built in a
staging folder beside the target and renamed into place, under a file lock, so two processes provisioning at
once end with one complete copy and a failure leaves nothing that looks complete.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from deploykit.errors import DeploykitError, MissingDependency

LOCK_FILE = Path(__file__).with_name("arm64-lock.json")
ROOTS = ("python3.11", "libstdc++6")           # what the emulated child needs from Debian
HOST_TOOLS = ("qemu-user-static",)             # installed for the host's architecture (amd64)
WHEELS = ("numpy", "ai-edge-litert", "onnxruntime", "onnx")   # onnx: the ONNX Runtime runner's --locate instruments the graph
GLIBC = 36                                     # bookworm's glibc 2.36: manylinux tags up to 2_36 run there
PYTHON_TAG = ("3.11", "cp311")
INSTALL_TIMEOUT_S = 900.0
COMPLETE = "userland.json"                     # written last: its presence means the folder is complete
FETCH_REMEDY = ("check that Debian's package archive and PyPI are reachable (as for apt-get and pip), then run "
                "again; delete ~/.cache/deploykit/arm64-* to start over")


def lock() -> dict:
    return json.loads(LOCK_FILE.read_text())


def lock_hash() -> str:
    return hashlib.sha256(LOCK_FILE.read_bytes()).hexdigest()[:12]


def host_problem() -> str:
    """Why this host cannot provision (or run) the arm64 userland, "" when it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"ARM emulation runs on x86-64 Linux hosts (this is {platform.system()} {platform.machine()})"
    missing = [tool for tool in ("apt-get", "dpkg") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} missing (needed once to fetch qemu and the arm64 Python from Debian)"
    return ""


def install(target: Path, timeout: float = INSTALL_TIMEOUT_S) -> Path:
    """Provision ``target`` unless it is complete already (waiting for another process installing it)."""
    if (target / COMPLETE).is_file():
        return target
    problem = host_problem()
    if problem:
        raise MissingDependency(f"the arm64 userland cannot be installed: {problem}",
                                "run the ARM runtimes on a Debian/Ubuntu x86-64 host")
    target.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with _file_lock(target.with_name(target.name + ".lock"), timeout):
        if (target / COMPLETE).is_file():     # another process finished it while this one waited
            return target
        from deploykit.progress import Progress

        staging = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
        try:
            with Progress(f"installing the arm64 userland once (qemu, Debian's arm64 Python, aarch64 wheels) "
                          f"into {target}", total=None):
                record = _build(staging, deadline)
            (staging / COMPLETE).write_text(json.dumps(record, indent=1))
            shutil.rmtree(target, ignore_errors=True)      # an incomplete leftover of a killed install
            os.replace(staging, target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float):
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise MissingDependency(f"another process has been installing the arm64 userland for "
                                            f"{timeout:g} s ({path} is locked)",
                                            "wait for it, or end it and delete ~/.cache/deploykit/arm64-*") from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build(staging: Path, deadline: float) -> dict:
    started = time.perf_counter()
    pinned = lock()
    apt = _Apt(staging / "apt")
    apt.update(deadline)
    debs, drift = apt.download(pinned["debian"]["packages"], staging / "debs", deadline)
    sysroot, tools = staging / "sysroot", staging / "bin"
    for deb in debs:
        if deb.name.endswith("_amd64.deb"):
            _extract_tool(deb, tools, "qemu-aarch64-static")
        else:
            _unpack(deb, sysroot, deadline)
    # qemu's -L looks a path up in the sysroot first: a tmp/ or home/ there would hide the host's.
    for shadow in ("tmp", "home", "proc", "dev", "sys", "run"):
        shutil.rmtree(sysroot / shadow, ignore_errors=True)
    _pip_install(pinned["wheels"]["packages"], staging / "site", deadline)
    shutil.rmtree(staging / "apt", ignore_errors=True)
    shutil.rmtree(staging / "debs", ignore_errors=True)
    return {"lock": lock_hash(), "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(time.perf_counter() - started, 1), "drift": drift,
            "qemu": next((p["version"] for p in pinned["debian"]["packages"] if p["name"] == "qemu-user-static"), ""),
            "python": next((p["version"] for p in pinned["debian"]["packages"] if p["name"] == "python3.11"), ""),
            "wheels": {p["name"]: p["version"] for p in pinned["wheels"]["packages"]}}


def _unpack(deb: Path, folder: Path, deadline: float) -> None:
    """``dpkg -x``: the package's files only; no maintainer script runs, nothing is registered."""
    from deploykit.child import run_tool

    run_tool(["dpkg", "-x", str(deb), str(folder)], cwd=deb.parent, timeout=_left(deadline), what=f"dpkg -x {deb.name}",
             remedy="delete ~/.cache/deploykit/arm64-* and run again")


def _extract_tool(deb: Path, folder: Path, name: str) -> None:
    """Only qemu's aarch64 binary from the 370 MB of qemu-user-static."""
    with tempfile.TemporaryDirectory(dir=folder.parent) as unpacked:
        _unpack(deb, Path(unpacked), time.monotonic() + INSTALL_TIMEOUT_S)
        folder.mkdir(exist_ok=True)
        shutil.move(str(Path(unpacked) / "usr" / "bin" / name), folder / name)


class _Apt:
    """apt-get with a private configuration: its own lists and cache, arm64 (+ the host's amd64) packages, the
    system's own sources. Nothing of the system's apt state is read or written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("state/lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (root / "state" / "status").touch()
        lines = [f'Dir::State "{root}/state";', f'Dir::State::status "{root}/state/status";',
                 f'Dir::Cache "{root}/cache";', 'APT::Architecture "arm64";',
                 'APT::Architectures { "arm64"; "amd64"; };', 'Debug::NoLocking "true";',
                 'Acquire::Languages "none";']
        if os.geteuid() == 0:        # as root apt drops to _apt, who cannot write our private folders
            lines.append('APT::Sandbox::User "root";')
        self.config = root / "apt.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def run(self, args: list, deadline: float, cwd: Path = None) -> str:
        from deploykit.child import run_tool

        env_config = dict(os.environ, APT_CONFIG=str(self.config), DEBIAN_FRONTEND="noninteractive")
        return run_tool(["apt-get", "-q", *args], cwd=cwd or self.root, timeout=_left(deadline),
                        what=f"apt-get {args[0]} (arm64 userland)", env=env_config, remedy=FETCH_REMEDY)

    def update(self, deadline: float) -> None:
        self.run(["update"], deadline)

    def candidates(self, names: list, deadline: float) -> dict:
        """{name: version} of what ``apt-get install names`` would install now, dependencies included."""
        out = self.run(["-s", "--no-install-recommends", "install", *names], deadline)
        # "Inst libc6 (2.36-9+deb12u14 Debian:12.13/stable [arm64])"; a foreign package reads "qemu-user-static:amd64"
        return {line.split()[1].split(":")[0]: line.split()[2].lstrip("(") for line in out.splitlines()
                if line.startswith("Inst ")}

    def download(self, packages: list, folder: Path, deadline: float) -> tuple:
        """Download each locked package (its sha256 checked); a version gone from the archive is replaced by
        the current one and reported as drift."""
        folder.mkdir(parents=True, exist_ok=True)
        wanted = [f"{_qualified(p)}={p['version']}" for p in packages]
        drift = []
        try:
            self.run(["download", *wanted], deadline, cwd=folder)
        except DeploykitError as exc:
            if "was not found" not in exc.message:     # apt's words for a version the archive no longer has
                raise
            # A point release replaced a pinned version: take the current ones and record which changed.
            self.run(["download", *map(_qualified, packages)], deadline, cwd=folder)
        debs = sorted(folder.glob("*.deb"))
        by_name = {deb.name.split("_", 1)[0]: deb for deb in debs}
        for package in packages:
            deb = by_name.get(package["name"])
            if deb is None:
                raise MissingDependency(f"Debian's archive no longer has {package['name']} ({package['arch']})",
                                        "relock: `python -m deploykit.emulation.provision --relock`")
            got = deb.name.split("_")[1].replace("%3a", ":")
            if got != package["version"]:
                drift.append({"package": package["name"], "locked": package["version"], "installed": got})
            elif package["sha256"] and _sha256(deb) != package["sha256"]:
                raise MissingDependency(f"{deb.name} does not match the sha256 in arm64-lock.json",
                                        "delete ~/.cache/deploykit/arm64-* and run again; if it persists, relock "
                                        "with `python -m deploykit.emulation.provision --relock`")
        return debs, drift


def _qualified(package: dict) -> str:
    """apt's name for a package of an architecture ("libc6:arm64"); an architecture-independent one has none."""
    return package["name"] if package["arch"] == "all" else f"{package['name']}:{package['arch']}"


def _pip_args(folder: Path) -> list:
    platforms = ["manylinux2014_aarch64"] + [f"manylinux_2_{minor}_aarch64" for minor in range(17, GLIBC + 1)]
    return [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
            "--target", str(folder), "--only-binary=:all:", *(arg for p in platforms for arg in ("--platform", p)),
            "--python-version", PYTHON_TAG[0], "--implementation", "cp", "--abi", PYTHON_TAG[1]]


pip_args = _pip_args     # public: a bundle's pins are installed for the arm64 Python the same way (bundle.arm_selftest)


def _pip_install(packages: list, folder: Path, deadline: float) -> None:
    from deploykit.child import run_tool

    requirements = folder.with_name("requirements.txt")
    requirements.write_text("".join(f"{p['name']}=={p['version']} --hash=sha256:{p['sha256']}\n" for p in packages))
    run_tool(_pip_args(folder) + ["--no-deps", "--require-hashes", "-r", str(requirements)], cwd=folder.parent,
             timeout=_left(deadline), what="pip install (aarch64 wheels)", remedy=FETCH_REMEDY)


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise MissingDependency("installing the arm64 userland took too long", FETCH_REMEDY)
    return left


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def relock(constraints: Path, out: Path = LOCK_FILE) -> dict:
    """Resolve the userland anew (Debian's current packages, the wheels constraints.txt pins) and write the lock."""
    with tempfile.TemporaryDirectory(prefix="deploykit-relock-") as tmp:
        root = Path(tmp)
        deadline = time.monotonic() + INSTALL_TIMEOUT_S
        apt = _Apt(root / "apt")
        apt.update(deadline)
        names = apt.candidates([*ROOTS], deadline)
        tools = apt.candidates([f"{t}:amd64" for t in HOST_TOOLS], deadline)
        packages = [{"name": n, "arch": "arm64", "version": v} for n, v in sorted(names.items())]
        packages += [{"name": n, "arch": "amd64", "version": tools[n]} for n in HOST_TOOLS]
        debs = root / "debs"
        apt.download([dict(p, sha256="") for p in packages], debs, deadline)
        for package in packages:
            deb = next(debs.glob(f"{package['name']}_*.deb"))
            package["arch"] = deb.name.rsplit("_", 1)[-1][:-4]      # "all" for architecture-independent ones
            package["sha256"] = _sha256(deb)
        report = root / "report.json"
        from deploykit.child import run_tool

        run_tool(_pip_args(root / "site") + ["--dry-run", "--ignore-installed", "--report", str(report),
                                             "-c", str(constraints), *WHEELS], cwd=root, timeout=_left(deadline),
                 what="pip (resolving the aarch64 wheels)", remedy=FETCH_REMEDY)
        wheels = [{"name": item["metadata"]["name"], "version": item["metadata"]["version"],
                   "sha256": item["download_info"]["archive_info"]["hashes"]["sha256"]}
                  for item in json.loads(report.read_text())["install"]]
    data = {"about": "The arm64 userland of the ARM runtimes (deploykit.emulation.provision). Regenerate with "
                     "`python -m deploykit.emulation.provision --relock`; the wheels follow constraints.txt.",
            "debian": {"roots": list(ROOTS), "host_tools": list(HOST_TOOLS), "packages": packages},
            "wheels": {"python": PYTHON_TAG[0], "glibc": f"2.{GLIBC}", "roots": list(WHEELS),
                       "packages": sorted(wheels, key=lambda w: w["name"].lower())}}
    out.write_text(json.dumps(data, indent=1) + "\n")
    return data


def main(argv: list = None) -> int:
    parser = argparse.ArgumentParser(description="The arm64 userland of deploykit's ARM runtimes.")
    parser.add_argument("--relock", action="store_true", help="resolve the packages anew and rewrite the lock")
    parser.add_argument("--constraints", default=str(Path(__file__).resolve().parents[2] / "constraints.txt"))
    args = parser.parse_args(argv)
    if args.relock:
        data = relock(Path(args.constraints))
        print(f"wrote {LOCK_FILE} ({len(data['debian']['packages'])} Debian packages, "
              f"{len(data['wheels']['packages'])} wheels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
