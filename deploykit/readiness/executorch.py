"""ExecuTorch readiness (child side): which instructions of the program call a delegate and which are left to
portable kernels (read from the .pte, ``runtimes.executorch.delegation``), and the selected-operators YAML a
selective ExecuTorch build compiles in (ExecuTorch's own ``codegen.tools.gen_oplist``)."""
from __future__ import annotations

import tempfile
from pathlib import Path

from deploykit.manifest import library_versions
from deploykit.readiness.report import Coverage, OpIssue, measured_verdict

RUNTIME = "executorch"


def et_version() -> str:
    return library_versions(("executorch",)).get("executorch", "unknown")


def coverage(delegation: dict) -> Coverage:
    """Delegate calls against portable-kernel calls: the program's instructions, as the runtime executes them."""
    calls = delegation.get("delegate_calls") or {}
    portable = delegation.get("portable_ops") or {}
    delegated, left = sum(calls.values()), sum(portable.values())
    issues = tuple(OpIssue(op=op, count=count, source=f"the .pte's execution plan (executorch {et_version()})",
                           reason="no delegate took it: runs on a portable (reference C++) kernel")
                   for op, count in portable.items())
    backends = ", ".join(f"{name} ×{count}" for name, count in calls.items()) or "none"
    return Coverage(runtime=RUNTIME, target="delegates (" + backends + ")", measured=True,
                    source=f"the .pte's execution plan (executorch {et_version()})",
                    verdict=measured_verdict(delegated, delegated + left), supported=delegated,
                    total=delegated + left, partitions=delegated, unsupported=issues, unit="instructions",
                    notes=("one delegate call runs a whole partition of operators",))


def selected_operators(path: str, delegation: dict) -> dict:
    """The operators (with their kernel dtypes) a selective build of ExecuTorch must include for this program."""
    import yaml
    from executorch.codegen.tools import gen_oplist

    with tempfile.TemporaryDirectory(prefix="deploykit-oplist-") as tmp:
        target = Path(tmp) / "selected_operators.yaml"
        gen_oplist.gen_oplist(output_path=str(target), model_file_path=path)
        text = target.read_text()
    data = yaml.safe_load(text) or {}
    return {"runtime": RUNTIME, "format": "executorch", "tool": f"executorch {et_version()} codegen.tools.gen_oplist",
            "operators": sorted(data.get("operators") or {}),
            "delegate_backends": sorted(delegation.get("delegate_calls") or {}),
            "kernel_metadata": data.get("et_kernel_metadata") or {}, "selected_operators_yaml": text}
