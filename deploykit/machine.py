"""What the machine can do (fp32 peak) and what each runtime costs to install."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import re
from pathlib import Path

# FMA units per core for wide vector FP on x86 server/desktop cores since Haswell / Zen: 2.
# It is an assumption (some Xeons run AVX-512 on one unit): the report states it.
FMA_UNITS_ASSUMED = 2


def cpu_peak() -> dict:
    """fp32 peak per core from the vector width, FMA and clock, with the assumptions spelled out."""
    info = _cpuinfo()
    flags = set(info.get("flags", "").split())
    if "avx512f" in flags:
        lanes, isa = 16, "AVX-512"
    elif "avx2" in flags or "avx" in flags:
        lanes, isa = 8, "AVX2" if "avx2" in flags else "AVX"
    elif platform.machine() in ("aarch64", "arm64"):
        lanes, isa = 4, "NEON"
    else:
        lanes, isa = 4, "SSE"
    fma = "fma" in flags or isa == "NEON"
    ghz = _clock_ghz(info)
    per_core = lanes * (2 if fma else 1) * FMA_UNITS_ASSUMED * ghz if ghz else None
    return {"cpu": info.get("model name", platform.processor() or platform.machine()), "isa": isa,
            "fp32_lanes": lanes, "fma": fma, "fma_units_assumed": FMA_UNITS_ASSUMED, "clock_ghz": ghz,
            "cores": os.cpu_count(), "peak_gflops_per_core": round(per_core, 1) if per_core else None,
            "assumption": f"{lanes} fp32 lanes ({isa}) x {'2 (FMA)' if fma else '1'} x {FMA_UNITS_ASSUMED} units "
                          f"x {ghz} GHz per core; turbo, thermal limits and a shared host make real peaks lower"}


def _cpuinfo() -> dict:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {}
    first = text.split("\n\n")[0]
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in first.splitlines())}


def _clock_ghz(info: dict):
    for path in ("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",):
        try:
            return round(int(Path(path).read_text()) / 1e6, 2)
        except (OSError, ValueError):
            pass
    match = re.search(r"([\d.]+)", info.get("cpu MHz", ""))
    return round(float(match.group(1)) / 1000, 2) if match else None




def install_footprint(distribution_names: tuple) -> dict:
    """Bytes on disk of the installed files of these distributions and everything they require."""
    seen, total, missing = set(), 0, []
    stack = [_normalize(n) for n in distribution_names]
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(name)
            continue
        total += sum(_size(dist, f) for f in (dist.files or []))
        stack.extend(_normalize(r) for r in _runtime_requirements(dist))
    return {"bytes": total, "distributions": sorted(seen - set(missing)), "not_installed": sorted(missing)}


def _runtime_requirements(dist) -> list:
    names = []
    for requirement in dist.requires or []:
        if "extra ==" in requirement or 'extra=="' in requirement:
            continue
        names.append(re.split(r"[\s;<>=!~\[(]", requirement.strip(), maxsplit=1)[0])
    return names


def _size(dist, file) -> int:
    try:
        return Path(dist.locate_file(file)).stat().st_size
    except OSError:
        return 0


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_present() -> bool:
    """An NVIDIA GPU is visible to this process (device node or CUDA_VISIBLE_DEVICES naming one)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return Path("/dev/nvidia0").exists()
