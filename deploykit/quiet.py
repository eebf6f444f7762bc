"""Keep converter and framework noise out of the user's terminal (and out of --json stdout)."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile


@contextlib.contextmanager
def captured_output(echo: bool = False):
    """Redirect file descriptors 1 and 2 to a temp file; yields a list that receives the text.

    Exporters print progress with print() and C++ logging straight to the fds, so
    redirecting sys.stdout alone is not enough. With ``echo`` (--debug) the text is
    written to stderr afterwards.
    """
    sink: list = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 1)
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            sink.append(text)
            if echo and text:
                sys.stderr.write(text)
