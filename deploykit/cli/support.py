"""How a CLI command runs: one API call, its result printed (human or --json), every failure one line and an
exit code — DeploykitError with its own, running out of disk or memory as such, Ctrl-C 130, SIGTERM 143, a bug 5
(still as JSON with --json), never a traceback without --debug."""
from __future__ import annotations

import json
import os
import sys
from typing import Callable

import typer

from deploykit.text import printable

EXIT_INTERNAL = 5
EXIT_INTERRUPTED = 130     # Ctrl-C
EXIT_TERMINATED = 143      # SIGTERM: `timeout`, CI cancellation, container stops


class Terminated(KeyboardInterrupt):
    """SIGTERM unwinds like Ctrl-C: the running child's process group is killed, staging folders removed."""


def _on_sigterm(signum, frame) -> None:
    # A second SIGTERM (a supervisor that repeats it) must not break off the unwinding the first one started.
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated()


def _run(action: Callable[[], dict], as_json: bool, debug: bool, printer: Callable[[dict], None],
         exit_code_of: Callable[[dict], int] = lambda data: 0) -> None:
    """Run a command body: JSON or human output, DeploykitError -> one line + its exit code."""
    from deploykit.errors import DeploykitError

    if not debug:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    else:
        from deploykit.child import DEBUG_ENV

        os.environ[DEBUG_ENV] = "1"
    from deploykit.child import reused_child

    try:
        with reused_child():      # one child per command holds a framework source (deploykit.child)
            data = _resources_named(action)
    except DeploykitError as exc:
        if debug:
            import traceback
            traceback.print_exc()
        location = (exc.details.get("parity") or {}).get("location")
        if as_json:
            print(json.dumps({"passed": False, **exc.to_dict(), **({"locate": [location]} if location else {})}))
        elif location:      # export --locate: the layer table of the check that failed, before the one line
            from deploykit.render import print_locate

            print_locate(terminal_safe(location))
        print(printable(exc.one_line()), file=sys.stderr)
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        code, message = (EXIT_TERMINATED, "terminated (SIGTERM)") if terminated else (EXIT_INTERRUPTED, "interrupted")
        _fail_json(as_json, type(exc).__name__, message, code)
        print(f"error: {message}", file=sys.stderr)
        raise typer.Exit(code) from None
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback without --debug
        if debug:
            raise
        from deploykit.text import one_line

        message = f"internal error: {type(exc).__name__}: {one_line(str(exc))}"
        _fail_json(as_json, "InternalError", message, EXIT_INTERNAL, remedy="rerun with --debug and report it")
        print(printable(f"error: {message} — rerun with --debug and report it"), file=sys.stderr)
        raise typer.Exit(EXIT_INTERNAL) from None
    if as_json:
        print(json.dumps(data, indent=2, default=str))
    else:
        printer(terminal_safe(data))
    code = exit_code_of(data)
    if code:
        raise typer.Exit(code)


def _resources_named(action: Callable[[], dict]) -> dict:
    """Running out of disk or memory anywhere is said as such (exit 2), not as an internal error."""
    from deploykit.errors import exhaustion

    from deploykit.errors import UsageError

    try:
        return action()
    except (MemoryError, OSError) as exc:
        full = exhaustion(exc)
        if full is None and isinstance(exc, OSError) and exc.strerror:
            # EACCES, EROFS, ENAMETOOLONG, ...: the machine refused a path the user gave, not a deploykit bug
            where = f"{exc.filename}: " if exc.filename else ""
            raise UsageError(f"{where}{exc.strerror}", "check the path, its permissions and the file system") from None
        raise full or exc


def _fail_json(as_json: bool, error: str, message: str, code: int, remedy: str = "") -> None:
    """--json promises a JSON result on stdout, for failures that are not a DeploykitError too."""
    if as_json:
        print(json.dumps({"passed": False, "error": error, "message": message, "remedy": remedy, "exit_code": code}))


def _lazy(name: str) -> Callable[[dict], None]:
    def printer(data: dict) -> None:
        from deploykit import render
        getattr(render, name)(data)
    return printer


def terminal_safe(data):
    """Every string of a result, as the terminal may show it: control characters escaped (a model file's tensor
    names and producer strings are not trusted) and rich markup escaped (a name like `x[/red]` is text).
    --json needs neither: JSON escapes control characters itself."""
    from rich.markup import escape

    if isinstance(data, str):
        return escape(printable(data))
    if isinstance(data, dict):
        return {terminal_safe(key): terminal_safe(value) for key, value in data.items()}
    if isinstance(data, (list, tuple)):
        return type(data)(terminal_safe(value) for value in data)
    return data


def _usage_error_types() -> tuple:
    """click's UsageError; typer >= 0.2x vendors click, so look in both places."""
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).UsageError)
        except (ImportError, AttributeError):
            continue
    return tuple(found)


def _exit(code: int) -> None:
    """sys.exit, unless a model's code overran --timeout in a thread that cannot be stopped: a normal
    exit would wait for it forever (deploykit.deadline).

    SIGTERM (143) ends with os._exit too, once the command has unwound (children killed and reaped, staging and
    the private temporary folder removed): a normal interpreter exit runs C++ static destructors while a
    framework's native thread may still run, and one of them then aborts the process ("terminate called without
    an active exception", exit 134 instead of 143)."""
    from deploykit import deadline

    if deadline.abandoned() or code == EXIT_TERMINATED:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def serve_until_interrupted(folder: str, port: int) -> dict:
    """`deploykit serve`: the folder on 127.0.0.1 with COOP/COEP headers until Ctrl-C or SIGTERM (exit 0)."""
    import signal
    import time
    from pathlib import Path

    from deploykit.browser import serve
    from deploykit.errors import UsageError

    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"{folder} is not a folder", "give the folder `deploykit package --app web -o DIR` wrote")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise UsageError(f"--port must be 0..65535 (got {port!r})", "e.g. --port 8000")
    signal.signal(signal.SIGTERM, _on_sigterm)
    with serve(root.resolve(), port) as server:
        page = "" if (root / "index.html").exists() else " (no index.html here: not a web bundle)"
        # The folder's name is the user's but may come from an archive: escaped, it cannot drive the terminal.
        print(f"serving {printable(str(root))} at {server.url}/{page} — cross-origin isolated (COOP/COEP), so WASM "
              f"may use threads; self-test: {server.url}/selftest.html ; Ctrl-C stops", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            print("stopped", flush=True)
    return {}
