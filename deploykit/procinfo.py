"""What /proc says about processes: the descendants of a process (to kill a child's whole tree) and its memory.

Read by the child harness (``deploykit.child``, ``deploykit.zygote``) and the benchmark's memory figures; no process
is started here.
"""
from __future__ import annotations

import os
import signal
from pathlib import Path


def descendants(pid: int) -> list:
    """Every process below ``pid`` (from /proc; [] where there is none)."""
    children: dict = {}
    for entry in Path("/proc").iterdir() if Path("/proc/self").exists() else ():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def status_bytes(field: str, pid: "int | str" = "self") -> int:
    """A memory field of /proc/PID/status in bytes (VmRSS now, VmHWM the peak), 0 where there is none.

    VmHWM belongs to the address space, which exec replaces: unlike getrusage's ru_maxrss (kept across exec on
    Linux, so a child started from a 600 MB parent would report 600 MB), it is the child's own peak."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def kill_tree(pid: int) -> None:
    """SIGKILL the process group led by ``pid`` and every process below it. Some descendants start a session of
    their own (Playwright launches Chromium detached): they are found by parentage before the group dies, since
    afterwards they would be orphans."""
    for victim in [pid] + descendants(pid):
        try:
            (os.killpg if victim == pid else os.kill)(victim, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
