"""Child-process jobs for tests of deploykit/child.py (a hang, a crash, a raising job, arrays both ways)."""
import os
import signal
import time

from deploykit.errors import ModelLoadError


def sleep_job(request: dict, arrays: dict) -> dict:
    time.sleep(request["seconds"])
    return {"tool": "sleeper"}


def crash_job(request: dict, arrays: dict) -> dict:
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def error_job(request: dict, arrays: dict) -> dict:
    raise RuntimeError("unsupported op FancyOp\nmore lines of log")


def deploykit_error_job(request: dict, arrays: dict) -> dict:
    raise ModelLoadError("the file is odd", "give another file", details={"where": "header"})


def echo_job(request: dict, arrays: dict) -> dict:
    doubled = {name: value * 2 for name, value in arrays.items()}
    return {"tool": "echo", "request": {k: v for k, v in request.items() if not k.startswith("_")},
            "context": sorted(k for k in request if k.startswith("_")), "arrays": doubled}


def path_job(request: dict, arrays: dict) -> dict:
    import sys

    import numpy

    return {"cwd_on_path": os.getcwd() in sys.path or "" in sys.path, "numpy": numpy.__file__}


def spawn_grandchild_job(request: dict, arrays: dict) -> dict:
    """Starts a long sleeper and hangs: a time-out must take the grandchild down too."""
    import subprocess

    child = subprocess.Popen(["sleep", "60"])
    with open(request["pid_file"], "w") as handle:
        handle.write(str(child.pid))
    time.sleep(60)
    return {}
