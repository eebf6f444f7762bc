"""A bundle proves itself on the phone's CPU: its own ``python app.py selftest``, on an emulated ARM core.

    deploykit verify bundle/ --runtime litert-arm64 [--arm-cpu cortex-a53]

What runs is exactly what a device runs: the arm64 Python of the emulated userland (``deploykit.emulation``),
``app.py selftest --json`` of the bundle, and on its path only what the bundle's ``requirements.txt`` pins, as the
aarch64 wheels pip picks for an arm64 phone or board: no deploykit, no x86 package, nothing of the userland's own
runtimes. The pins are installed once per requirements text into ``<userland>/bundle-sites/<hash>`` (atomically:
built beside it, renamed into place). The bundle has passed every check of ``bundle_check`` before this runs (no
unlisted file, every file unchanged): app.py runs whatever lies beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from deploykit import parity
from deploykit.errors import DeploykitError

# What `deploykit package` pins (bundle.packaging.requirements): numpy, the one runtime, Pillow for images. A
# bundle's requirements.txt is data from whoever sent the bundle: anything else in it is refused, never installed.
PINNABLE = ("numpy", "onnxruntime", "ai-edge-litert", "pillow")
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)")
COMPLETE = "site.json"
# The app's --json selftest prints each output's detail as "max_abs 1.2e-07, cosine 1.000000, 0.00% outside"
# (app_templates/app.py.txt, the same in every bundle deploykit wrote): read back into the report's numbers.
DETAIL = re.compile(r"max_abs (\S+), cosine (\S+), (\S+)% outside")


class BadRequirements(Exception):
    """requirements.txt holds something `package` never writes (a problem of the verdict, as tampering is)."""


def selftest_on_arm(folder: Path, info: dict, tolerance: parity.Tolerance, runtime: str, arm_cpu, timeout: float):
    """The ParityReport of ``app.py selftest`` of the (checked) bundle ``folder`` on an emulated core."""
    from deploykit.emulation.userland import child_interpreter

    candidate = f"{folder.name}/{info['model']} on {runtime}"
    try:
        pins = read_pins((folder / "requirements.txt").read_text(encoding="utf-8", errors="replace"))
    except BadRequirements as exc:
        return parity.ParityReport("golden vectors", candidate, 0, tolerance, problems=[f"tampered: {exc}"])
    interpreter = child_interpreter(arm_cpu or "")
    site = requirements_site(pins)
    data = _run_selftest(folder, interpreter, site, timeout)
    report = _report(data, tolerance, f"{candidate} ({interpreter.cpu})")
    report.notes.append(f"ran `python app.py selftest` on {interpreter.label}, with only the bundle's requirements "
                        f"({', '.join(pins)}; aarch64 wheels)")
    return report


def read_pins(text: str) -> list:
    """The ``name==version`` lines of a bundle's requirements.txt; BadRequirements for anything else (an option,
    a URL, a range, a package no bundle needs), so nothing but the pinned wheels can reach pip."""
    pins = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        match = PIN.fullmatch(line)
        if not match or match.group(1).lower().replace("_", "-") not in PINNABLE:
            shown = line[:80].encode("unicode_escape").decode("ascii")
            raise BadRequirements(f"requirements.txt has {shown!r}: a bundle pins only {', '.join(PINNABLE)} "
                                  "(name==version)")
        pins.append(f"{match.group(1).lower()}=={match.group(2)}")
    if not pins:
        raise BadRequirements("requirements.txt pins nothing")
    return pins


def requirements_site(pins: list) -> Path:
    """A folder holding ``pins`` (and what they depend on) as aarch64 cp311 wheels, made once per pin list: the
    folder is named by the hash of the pins and of the userland's lock (whose versions of the dependencies the
    pins do not name are taken, so the same bundle gets the same site everywhere)."""
    from deploykit.emulation import provision, userland

    text = "".join(f"{pin}\n" for pin in sorted(pins))
    key = hashlib.sha256((text + provision.lock_hash()).encode()).hexdigest()[:16]
    target = userland.cache_dir() / "bundle-sites" / key
    if (target / COMPLETE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{key}.tmp", dir=target.parent))
    try:
        _pip_install(text, staging)
        (staging / "site" / COMPLETE).write_text(json.dumps({"pins": sorted(pins)}) + "\n")
        try:
            os.rename(staging / "site", target)
        except OSError:             # another process installed the same pins meanwhile
            if not (target / COMPLETE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _pip_install(text: str, staging: Path) -> None:
    from deploykit.child import run_tool
    from deploykit.emulation import provision

    named = {pin.split("==")[0].replace("_", "-") for pin in text.split()}
    locked = [p for p in provision.lock()["wheels"]["packages"] if p["name"].lower().replace("_", "-") not in named]
    (staging / "requirements.txt").write_text(text)
    (staging / "constraints.txt").write_text("".join(f"{p['name']}=={p['version']}\n" for p in locked))
    run_tool(provision.pip_args(staging / "site") + ["-c", str(staging / "constraints.txt"), "-r",
                                                     str(staging / "requirements.txt")],
             cwd=staging, timeout=provision.INSTALL_TIMEOUT_S, what="pip install (the bundle's aarch64 wheels)",
             remedy="check that PyPI is reachable (as for pip) and that every pin has an aarch64 cp311 wheel; "
                    "re-package the bundle with deploykit's pinned versions if not")


def _run_selftest(folder: Path, interpreter, site: Path, timeout: float) -> dict:
    """``app.py selftest --json``'s answer. It exits 1 when the model fails its golden vectors: that answer is
    still read (its stdout goes to a file, which run_tool's error would not keep); any other failure is raised."""
    from deploykit.child import RUN, run_tool

    with tempfile.TemporaryDirectory(prefix="deploykit-arm-selftest-") as scratch:
        answer = Path(scratch) / "selftest.json"
        home = Path(scratch) / "home"          # ONNX Runtime writes under ~/.cache: never the user's home
        home.mkdir()
        env = dict(interpreter.env, PYTHONPATH=str(site), HOME=str(home), TMPDIR=scratch)
        # absolute: the app runs in the scratch folder, where a relative `verify bundle/` would name nothing
        argv = ["/bin/sh", "-c", 'exec "$@" > "$0"', str(answer), *interpreter.argv,
                str(folder.absolute() / "app.py"), "selftest", "--json"]
        try:
            run_tool(argv, cwd=Path(scratch), timeout=timeout, what=f"app.py selftest on {interpreter.cpu}",
                     stage=RUN, env=env, remedy="run `python app.py selftest` in the bundle for the app's own "
                     "message; re-package the bundle if it is broken")
        except DeploykitError:
            data = _answer(answer)
            if data is None:
                raise
            return data
        data = _answer(answer)
        if data is None:
            from deploykit.errors import ParityError

            raise ParityError(f"app.py selftest on {interpreter.cpu} printed no result",
                              "run `python app.py selftest --json` in the bundle to see what it prints")
        return data


def _answer(path: Path):
    """The selftest's JSON answer, None when there is none (it crashed, or was killed before printing)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8").strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("outputs"), list) else None


def _report(data: dict, tolerance: parity.Tolerance, candidate: str) -> parity.ParityReport:
    """The app's verdict as a ParityReport: one OutputResult per output it judged, with its numbers."""
    outputs = []
    for item in data["outputs"]:
        if not isinstance(item, dict):
            continue
        detail = str(item.get("detail", ""))[:300]
        numbers = DETAIL.search(detail)
        values = [_number(v) for v in numbers.groups()] if numbers else [None, None, None]
        outputs.append(parity.OutputResult(
            str(item.get("output", "?"))[:200], str(item.get("output", "?"))[:200],
            status="pass" if item.get("passed") is True else "fail",
            reason="" if item.get("passed") is True else f"app.py selftest: {detail}", max_abs=values[0],
            cosine=values[1], mismatch_fraction=values[2] / 100 if values[2] is not None else None))
    # The outputs carry a failure they name; a failed verdict that names none is a problem of its own.
    unnamed = data.get("passed") is not True and all(o.passed for o in outputs)
    samples = data.get("samples") if isinstance(data.get("samples"), int) else 0
    return parity.ParityReport("golden vectors", candidate, samples, tolerance, outputs,
                               ["app.py selftest failed, naming no output"] if unnamed else [])


def _number(text: str):
    try:
        return float(text)
    except ValueError:
        return None
