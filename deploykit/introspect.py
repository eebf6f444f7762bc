"""`inspect` (what is in a model file) and `doctor` (what this install can do)."""
from __future__ import annotations

import collections
import importlib.metadata
import os
import platform
from pathlib import Path

from deploykit import registry
from deploykit.child import LOAD, in_child, run_child
from deploykit.formats import Format, detect
from deploykit.fsutil import sha256_of
from deploykit.machine import gpu_present
from deploykit.manifest import library_versions, read as read_manifest
from deploykit.model import LoadOptions, load_model
from deploykit.onnx_io import read_onnx
from deploykit.tflite_metadata import carried_contract


def inspect_model(path: str, load: LoadOptions = LoadOptions()) -> dict:
    """Signature, parameter count, op histogram and size of a model file.

    A PyTorch or Keras source is inspected in a child (the command's reused child): counting its
    parameters and ops needs the deserialized object, and torch's or TensorFlow's loader may abort
    on a crafted file — that ends the child, not the CLI."""
    fmt = detect(path)
    if fmt not in registry.FILE_FORMATS and registry.loader_for(fmt).isolated and not in_child():
        registry.require(registry.loader_for(fmt).requires, f"needed to load {fmt.value} models")
        return run_child("deploykit.introspect:inspect_job", {"path": str(path), "load": load.to_dict()},
                         stage=LOAD, what=Path(str(path)).name or str(path), timeout=load.timeout, reuse=True).info
    model = load_model(path, load, fmt)
    info = {"path": path, "format": model.format.value, "signature": model.spec.to_dict()}
    if Path(path).exists():
        info["bytes"] = sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) \
            if Path(path).is_dir() else Path(path).stat().st_size
        info["sha256"] = sha256_of(path)
    if model.format == Format.ONNX:
        info.update(_onnx_graph_facts(path))
    elif model.format == Format.ORT:         # read by ONNX Runtime's own flatbuffer reader (runtimes.onnxruntime)
        ops = model.details.get("ops", {})
        info.update({"ops": ops, "nodes": sum(ops.values()), "parameters": model.details.get("parameters", 0),
                     "producer": model.details.get("producer", "")})
    elif model.format in (Format.TFLITE, Format.COREAI, Format.COREML):    # op histograms their describe read
        ops = model.details.get("ops", {})
        info.update({"ops": ops, "nodes": sum(ops.values())})
    elif model.format == Format.EXECUTORCH:      # instructions: delegate calls by backend, portable kernels by op
        placement = model.details.get("delegation") or {}
        ops = {**placement.get("delegate_calls", {}), **placement.get("portable_ops", {})}
        info.update({"ops": ops, "nodes": sum(ops.values())})
    elif model.format.framework == "torch":
        info.update(_torch_graph_facts(model))
    elif model.handle is not None and hasattr(model.handle, "count_params"):
        info["parameters"] = int(model.handle.count_params())
    carried = carried_contract(path, model.format) if Path(path).is_file() else None
    if carried:
        info["contract"] = carried
    info["details"] = {k: v for k, v in model.details.items()
                       if k != "ops" and isinstance(v, (str, int, float, bool, dict, list))}
    stored = read_manifest(path) if Path(path).exists() else None
    if stored:
        info["manifest"] = {"route": [r.get("edge") for r in stored.get("route", [])],
                            "parity_passed": (stored.get("parity") or {}).get("passed")}
        if stored.get("unverified_reason"):      # kept with --keep-unverified: say why, not just "False"
            info["manifest"]["unverified"] = str(stored["unverified_reason"])
    return info


def inspect_job(request: dict, arrays: dict) -> dict:
    """Child side of inspecting a framework source."""
    return inspect_model(request["path"], LoadOptions.from_dict(request["load"]))


def _onnx_graph_facts(path: str) -> dict:
    proto = read_onnx(path)
    histogram: collections.Counter = collections.Counter()
    _count_nodes(proto.graph, histogram)
    params = 0
    for init in proto.graph.initializer:
        count = 1
        for dim in init.dims:
            count *= dim
        params += count
    return {"parameters": params, "ops": dict(histogram.most_common()), "nodes": sum(histogram.values()),
            "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
            "producer": f"{proto.producer_name} {proto.producer_version}".strip(), "ir_version": proto.ir_version}


def _count_nodes(graph, histogram) -> None:
    for node in graph.node:
        histogram[node.op_type] += 1
        for attribute in node.attribute:
            if attribute.g.node:
                _count_nodes(attribute.g, histogram)
            for sub in attribute.graphs:
                _count_nodes(sub, histogram)


def _torch_graph_facts(model) -> dict:
    handle = model.handle
    params = sum(p.numel() for p in handle.parameters())
    histogram: collections.Counter = collections.Counter()
    program = model.details.get("exported_program")
    if program is not None:
        for node in program.graph.nodes:
            if node.op == "call_function":
                histogram[str(node.target).replace("aten.", "")] += 1
    elif hasattr(handle, "inlined_graph"):
        for node in handle.inlined_graph.nodes():
            if not node.kind().startswith("prim::"):
                histogram[node.kind()] += 1
    else:
        for sub in handle.modules():
            if not list(sub.children()):
                histogram[type(sub).__name__] += 1
    return {"parameters": int(params), "ops": dict(histogram.most_common()), "nodes": sum(histogram.values())}


def doctor() -> dict:
    """Versions, accelerators and which routes and runtimes this install supports. Imports nothing heavy."""
    edges = [{"edge": e.name, "from": sorted(f.value for f in e.src), "to": e.dst.value, "available": e.available,
              "missing": registry.missing_packages(e.requires), "hint": _hint(e.requires)} for e in registry.EDGES]
    runtimes = [{"runtime": r.name, "formats": sorted(f.value for f in r.formats), "available": r.available,
                 "missing": registry.missing_packages(r.requires), "hint": _runtime_hint(r),
                 "description": r.description} for r in registry.RUNTIMES]
    apple = _apple()
    _apple_hints(edges, runtimes, apple["routes"])
    return {"platform": f"{platform.system()} {platform.machine()}", "python": platform.python_version(),
            "cpus": os.cpu_count(), "gpu": "NVIDIA GPU present" if gpu_present() else "none detected",
            "versions": library_versions(registry.tracked_distributions()), "routes": edges,
            "runtimes": runtimes, "deploykit": _own_version(), "arm64": _arm64(), "apple": apple}


PROVISIONABLE = ("arm64",)      # what `doctor --provision` installs now instead of on first use


def provision(component: str) -> None:
    """Install ``component`` now (``arm64``: qemu, the arm64 Python and the aarch64 wheels) rather than on the
    first run that needs it; UsageError for an unknown name, MissingDependency when this host cannot."""
    from deploykit.errors import UsageError

    if component != "arm64":
        raise UsageError(f"unknown --provision {component!r}", f"use one of {', '.join(PROVISIONABLE)}")
    from deploykit.emulation.userland import ensure

    ensure()


def _arm64() -> dict:
    """The emulated ARM userland: installed or why not, where, size, versions, drift from the lock, the cores;
    ``lines`` is its text for the terminal (render prints them as they are)."""
    from deploykit.emulation.userland import status

    info = status()
    if info["installed"]:
        drift = ", ".join(f"{d['package']} {d['locked']} → {d['installed']}" for d in info["drift"]) or "none"
        lines = [f"ARM userland: installed at {info['path']} ({info['size_bytes'] / 2**20:.0f} MiB, lock "
                 f"{info['lock']}, {info['seconds']} s to install)",
                 f"  qemu {info['qemu']} · arm64 Python {info['python']} · wheels "
                 + ", ".join(f"{k} {v}" for k, v in info["wheels"].items()),
                 f"  drift from the lock: {drift}"]
    elif info["unavailable"]:
        lines = [f"ARM userland: unavailable: {info['unavailable']}"]
    else:
        lines = [f"ARM userland: not installed (lock {info['lock']}); installed on first use of an ARM runtime "
                 f"(~15 s, ~275 MiB) into {info['path']}, or now: deploykit doctor --provision arm64"]
    cores = ", ".join(c["name"] + (" (default)" if c["default"] else "") for c in info["cores"])
    lines.append(f"  cores: {cores}")
    return dict(info, lines=lines)


# The Apple routes doctor names (issue 29): what the user types -> the registry's edge (None for a runtime) and
# runtime. ``installs`` says what the runtime's check is about: coreai's is whether coreai-core installs at all
# (its wheels: x86-64 Linux with glibc >= 2.34 or macOS, Python 3.11-3.14), so it outranks a missing package;
# coreml's is only whether Core ML can predict (macOS), while coremltools installs and converts on Linux, so a
# Core ML export goes on unverified there.
APPLE_ROUTES = (("export --to coreai", "torch_to_coreai", "coreai", True),
                ("export --to coreml", "torch_to_coreml", "coreml", False),
                ("runtime coreai", None, "coreai", True),
                ("runtime coreml", None, "coreml", False))
APPLE_INSTALL = "pip install 'deploykit[apple]' -c constraints.txt"
KEEP_UNVERIFIED = "static checks here, keep it with --keep-unverified (exit 6)"


def _apple() -> dict:
    """Each Apple route: available here or not, verified here or not, and why not in one line (``reason``,
    ``fix``); ``lines`` is its text for the terminal. Asks the registry's checks and find_spec only."""
    rows = [_apple_route(*route) for route in APPLE_ROUTES]
    width = max(len(row["route"]) for row in rows)
    lines = ["Apple routes (coreai-core, coreai-torch, coremltools):"]
    for row in rows:
        state = ("yes" if row["verified"] else "yes, unverified") if row["available"] else "no"
        why = f"{row['reason']} — {row['fix']}" if row["reason"] else row["note"]
        lines.append(f"  {row['route']:<{width}}  {state}: {why}")
    return {"routes": rows, "lines": lines}


def _apple_route(label: str, edge_name, runtime_name: str, installs: bool) -> dict:
    """One row of ``_apple``: the host's reason first where it stops the install, then missing packages, then
    (a route) whether its artifact can be verified here."""
    runtime = registry.runtime_entry(runtime_name)
    edge = next((e for e in registry.EDGES if e.name == edge_name), None)
    requires = edge.requires if edge else runtime.requires
    missing = [registry.PACKAGES.get(m, (m, ""))[0] for m in registry.missing_packages(requires)]
    # The check is asked even when packages are missing: then it says why pip would fail too.
    check = registry.resolve(runtime.check)() if runtime.check else ""
    row = {"route": label, "edge": edge_name, "runtime": runtime_name, "missing": missing, "reason": "",
           "fix": "", "note": "", "available": False, "verified": False}
    if check and (installs or not edge):
        return dict(row, reason=check, fix=runtime.remedy)
    if missing:
        return dict(row, reason=f"{', '.join(missing)} not installed", fix=APPLE_INSTALL)
    row.update(available=True, verified=not check)
    if check:           # a Core ML export here: converted and checked statically, never run
        row["note"] = f"{check}: {KEEP_UNVERIFIED}"
    elif edge:
        row["note"] = f"verified here on the {runtime.name} runtime" + (
            " (a reference runtime: parity, not device time)" if runtime.reference else "")
    else:
        row["note"] = runtime.description
    return row


def _apple_hints(edges: list, runtimes: list, apple_rows: list) -> None:
    """The table's install column for the Apple rows says what the Apple lines say: where coreai-core cannot
    install on this host, a pip line would only fail; a Core ML export here is unverified."""
    for row in apple_rows:
        if row["verified"]:
            continue
        hint = f"{row['reason']} — {row['fix']}" if row["reason"] else row["note"]
        for item in (edges if row["edge"] else runtimes):
            if item.get("edge", item.get("runtime")) == (row["edge"] or row["runtime"]):
                item["hint"] = hint


def _runtime_hint(entry) -> str:
    """The pip line for missing packages, else why the runtime cannot run here and what to do (no browser)."""
    hint = _hint(entry.requires)
    problem = None if hint else registry.runtime_problem(entry, "")
    return hint or (f"{problem.message}: {problem.remedy}" if problem else "")


def _hint(requires: tuple) -> str:
    missing = registry.missing_packages(requires)
    if not missing:
        return ""
    extras = sorted({registry.PACKAGES.get(m, (m, "all"))[1] for m in missing})
    return "pip install " + " ".join(f"'deploykit[{x}]'" for x in extras) + " -c constraints.txt"


def _own_version() -> str:
    try:
        return importlib.metadata.version("deploykit")
    except importlib.metadata.PackageNotFoundError:
        return "not installed (running from a source tree)"
