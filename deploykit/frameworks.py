"""Importing the heavy frameworks the same way everywhere (quietly, logs set up first)."""
from __future__ import annotations

import os


def import_tensorflow():
    """TensorFlow with its C++ log noise off (TF_CPP_MIN_LOG_LEVEL must be set before the first import)."""
    from deploykit.quiet import captured_output

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with captured_output():
        import tensorflow as tf
    tf.get_logger().setLevel("ERROR")
    return tf


def import_onnxruntime():
    """onnxruntime with its telemetry events off. Its Linux wheels carry Microsoft's 1DS telemetry client,
    which also writes a session file (``$TMPDIR/.ses``) at import: deploykit runs keep that in their private
    temporary folder (``fsutil.private_tempdir``), and no event is sent for a deploykit run."""
    import onnxruntime

    onnxruntime.disable_telemetry_events()
    return onnxruntime


def import_playwright():
    """Playwright's sync API (``sync_playwright``); MissingDependency with the extra when absent."""
    from deploykit.registry import require

    require(("playwright",), "needed to run models in a browser")
    from playwright.sync_api import sync_playwright

    return sync_playwright


def caller_import_paths() -> list:
    """The folders this process imports from beyond the interpreter's own (stdlib, site-packages, .pth entries,
    PYTHONPATH): a script's folder, a ``sys.path.insert`` in a notebook. A child that imports the caller's factory
    (``package.module:factory``) gets them on PYTHONPATH, so it finds what the caller would. The working directory
    is never one of them — a child must not import a ``numpy.py`` lying there (it runs with ``python -P``)."""
    import site
    import sys
    import sysconfig

    interpreter = (*sysconfig.get_paths().values(), *site.getsitepackages(), site.getusersitepackages(),
                   *os.environ.get("PYTHONPATH", "").split(os.pathsep),
                   *[p for p in sys.path if p.endswith((".zip", "lib-dynload")) or "site-packages" in p])
    own = {os.path.realpath(p) for p in interpreter if p}
    cwd, found = os.path.realpath(os.getcwd()), []
    for entry in sys.path:
        real = os.path.realpath(entry) if entry else cwd
        if os.path.isabs(entry) and real != cwd and real not in own and real not in found and os.path.isdir(real):
            found.append(real)
    return found
