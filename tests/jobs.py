"""Child-process jobs for tests of converters/child.py (a hang, a crash, a raising converter)."""
import os
import signal
import time


def sleep_job(payload: dict) -> dict:
    time.sleep(payload["seconds"])
    return {"tool": "sleeper"}


def crash_job(payload: dict) -> dict:
    os.kill(os.getpid(), signal.SIGSEGV)
    return {}


def error_job(payload: dict) -> dict:
    raise RuntimeError("unsupported op FancyOp\nmore lines of log")


def echo_job(payload: dict) -> dict:
    return {"tool": "echo", "payload": payload}
