"""Hostile cases: the web app, `serve` and the browser runtimes (issue 26: stored XSS, links out of the served folder, long $TMPDIR, model URLs).

Each case follows tests/hostile/kit.py's Case contract; corpus.CASES gathers this list. What needs a page to show
(markup in a name or label running in the web app; a link, FIFO or idle socket inside a folder `serve` is serving)
is tested in tests/test_browser.py: `serve` runs until stopped, so the corpus covers what it refuses at start.
"""
from __future__ import annotations

import os

from tests.hostile.kit import Case, _fifo, _onnx

_BROWSER = ("browser", "onnxruntime")


def _link(work, name: str, target: str) -> str:
    os.symlink(target, work / name)
    return name


def _odd_named_copy(work, name: str) -> list:
    """tiny.onnx and a copy under ``name``: verify compares them in onnxruntime-web."""
    _onnx(work)
    (work / name).write_bytes((work / "tiny.onnx").read_bytes())
    return ["verify", "tiny.onnx", name, "--runtime", "onnxruntime-web"]


CASES: list = [
    # `serve` refuses at start what is no folder, and says so without passing control characters to the terminal.
    Case("web-serve-fifo-is-not-a-folder", "web", lambda w: ["serve", _fifo(w, "site")], 2, r"site is not a folder"),
    Case("web-serve-link-to-a-file-is-not-a-folder", "web",
         lambda w: ["serve", _link(w, "site", "/etc/hostname")], 2, r"site is not a folder"),
    Case("web-serve-control-characters-in-the-name", "web", lambda w: ["serve", "site\x1b]0;owned\x07\x1b[2J"], 2,
         r"site\\x1b\]0;owned\\x07\\x1b\[2J is not a folder"),
    # The runner's private $TMPDIR (tmp_path/tmp, about 60 characters under pytest) plus deploykit's run folder
    # made Chromium abort ("starting Chromium failed": its singleton socket path passed 107 bytes); a model name
    # with a space, "#", "?" or non-ASCII was fetched as "/model/my model" and failed "run it natively first".
    Case("web-verify-model-name-with-space-hash-query-non-ascii", "web",
         lambda w: _odd_named_copy(w, "my model#1?é.onnx"), 0, r"verified: 1 comparison", needs=_BROWSER, slow=True),
    Case("web-verify-model-name-with-markup-and-percent", "web",
         lambda w: _odd_named_copy(w, "<img src=x onerror=alert(1)> 100%25 &amp;.onnx"), 0, r"verified: 1 comparison",
         needs=_BROWSER, slow=True),
]
