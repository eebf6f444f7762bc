"""Headless Chromium as a runtime host: the pinned npm runtimes, a local server, and a driven page.

The browser runtimes (``runtimes/onnxruntime_web.py``, ``runtimes/litert_js.py``) are runners
like any other: the core opens them in a child process, where :class:`BrowserSession` starts

* the npm packages pinned in ``deploykit/web/package-lock.json``, installed once with ``npm ci``
  into ``~/.cache/deploykit/web-<lock hash>`` (no CDN at run time);
* a static server bound to 127.0.0.1 that sends COOP/COEP headers (a cross-origin-isolated
  page gets SharedArrayBuffer, so WASM threads), see :func:`serve`;
* Debian's ``chromium`` driven by Playwright (its own browser download cannot work here), on
  ``deploykit/web/harness.html``, which calls ``deploykit/web/backends.js``.

Every step has its own time limit and its own one-line error naming the stage.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import quote, unquote_to_bytes, urlsplit

from deploykit.errors import (MeasurementError, MissingDependency, ModelLoadError, ParityError, ResourceError,
                              UnsupportedModelError, UsageError)
from deploykit.runner import RunnerBase, RunnerOptions

WEB_DIR = Path(__file__).with_name("web")
CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")
ISOLATION_HEADERS = {"Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp",
                     "Cross-Origin-Resource-Policy": "same-origin", "Cache-Control": "no-store"}
NPM_TIMEOUT_S = 600.0
# A connection that sends nothing (or half a request) for this long is dropped: otherwise each one holds a server
# thread forever. 30 s is far above what a page on this machine needs between two reads of one request.
IDLE_TIMEOUT_S = 30.0
# The web app's pages (deploykit/web/app/*.html carry the same policy in a <meta>; a test checks they agree): only
# this origin's scripts, WASM compilation ('wasm-unsafe-eval', which both runtimes need), and the one inline script
# the pages have, their import map, by its hash. Nothing inline, no plugins, no <base>, no form posts.
WEB_APP_CSP = ("default-src 'self'; script-src 'self' 'wasm-unsafe-eval' "
               "'sha256-6HoJjqliVMaRKGAK5MIlvUPbYhSuzZ0nO4TM74v6W7s='; worker-src 'self'; style-src 'self'; "
               "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'")


def chromium_path() -> str:
    """The system Chromium (``DEPLOYKIT_CHROMIUM`` overrides); MissingDependency with the install line if none."""
    configured = os.environ.get("DEPLOYKIT_CHROMIUM")
    for candidate in ((configured,) if configured else CHROMIUM_CANDIDATES):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise MissingDependency("no Chromium browser found" + (f" at {configured}" if configured else ""),
                            "install Debian's chromium (`apt-get install chromium`; ./run does it) or set "
                            "DEPLOYKIT_CHROMIUM to a Chromium/Chrome executable")


def unavailable_reason() -> str:
    """Why the browser runtimes cannot run here ("" when they can); imports nothing heavy."""
    try:
        chromium_path()
    except MissingDependency as exc:
        return exc.message
    if not (packages_ready() or shutil.which("npm")):
        return "npm is missing (needed once to install the pinned browser runtimes)"
    return ""


def cache_dir() -> Path:
    lock = (WEB_DIR / "package-lock.json").read_bytes()
    root = Path(os.environ.get("DEPLOYKIT_CACHE", Path.home() / ".cache" / "deploykit"))
    return root / f"web-{hashlib.sha256(lock).hexdigest()[:12]}"


def packages_ready() -> bool:
    return (cache_dir() / "node_modules" / ".deploykit-complete").is_file()


def node_modules(timeout: float = NPM_TIMEOUT_S) -> Path:
    """The pinned runtimes' node_modules, installed with ``npm ci`` on first use (atomically: a failed or
    interrupted install leaves nothing that looks complete)."""
    target = cache_dir()
    if packages_ready():
        return target / "node_modules"
    npm = shutil.which("npm")
    if npm is None:
        raise MissingDependency("npm is missing: the browser runtimes are installed from the npm registry once",
                                "install Node.js and npm (`apt-get install npm`; ./run does it)")
    from deploykit.child import run_tool

    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(WEB_DIR / name, staging / name)
        from deploykit.progress import Progress

        # One step (npm reports no progress we can read): the start line and the time it took, once per machine.
        with Progress(f"installing the browser runtimes once with npm ci into {target}", total=None):
            run_tool([npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"], cwd=staging,
                     timeout=timeout, what="npm ci (browser runtimes)")
        (staging / "node_modules" / ".deploykit-complete").write_text("ok\n")
        if not packages_ready():       # another process may have finished the same install meanwhile
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(staging, target)
            except OSError:
                if not packages_ready():
                    raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target / "node_modules"


class _Handler(SimpleHTTPRequestHandler):
    """Static files from a few mounted folders, with the cross-origin-isolation headers; no listings.

    Only regular files whose every path component below the mount is a real (not linked) entry are served:
    a link (``x.txt -> ~/.ssh/id_rsa``), a FIFO or a device in the folder is a 404, and is never opened.
    """

    mounts: dict = {}
    extra_headers: dict = {}
    timeout = IDLE_TIMEOUT_S      # socket timeout of each connection (StreamRequestHandler.setup applies it)
    extensions_map = {**SimpleHTTPRequestHandler.extensions_map, ".mjs": "text/javascript", ".js": "text/javascript",
                      ".wasm": "application/wasm", ".tflite": "application/octet-stream",
                      ".onnx": "application/octet-stream", ".json": "application/json"}

    def translate_path(self, path: str) -> str:
        """The file ``path`` names inside a mount, or "" (a 404) when it is outside every mount or passes a link."""
        url_path = urlsplit(path).path
        for prefix, root in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            if root.is_file():      # a one-file mount (the model): that URL (percent-decoded) and nothing beside it
                if os.fsdecode(unquote_to_bytes(url_path)) == prefix:
                    return str(root) if _real_entry(str(root), str(root)) else ""
                continue
            if url_path.startswith(prefix):
                self.directory = str(root)
                candidate = super().translate_path("/" + url_path[len(prefix):])   # decoded, no "..", no "."
                if candidate.endswith("/"):
                    candidate += "index.html"      # a folder serves its index.html (never a listing)
                return candidate if _real_entry(candidate, str(root)) else ""
        return ""

    def send_head(self):
        path = self.translate_path(self.path)     # a folder without its "/" is a 404 too: no redirect needed
        handle = _open_regular(path) if path else None
        if handle is None:
            self.send_error(404, "File not found")
            return None
        self.send_response(200)
        self.send_header("Content-type", self.guess_type(path))
        self.send_header("Content-Length", str(os.fstat(handle.fileno()).st_size))
        self.end_headers()
        return handle

    def parse_request(self) -> bool:
        # Only this machine's loopback names: a DNS-rebinding page cannot read the served files.
        if not super().parse_request():
            return False
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            self.send_error(403, "unexpected Host")
            return False
        return True

    def list_directory(self, path):
        self.send_error(404, "no listing")
        return None

    def end_headers(self) -> None:
        for name, value in {**ISOLATION_HEADERS, **self.extra_headers}.items():
            self.send_header(name, value)
        super().end_headers()

    def log_message(self, *args) -> None:   # the terminal is the user's: no request log
        pass


def _lstat_mode(path: str) -> int:
    try:
        return os.lstat(path).st_mode
    except OSError:
        return 0


def _real_entry(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or below it with no link on the way (``root`` itself is already resolved)."""
    real = os.path.realpath(path)
    return real == os.path.normpath(path) and (real == root or real.startswith(root.rstrip("/") + "/"))


def _open_regular(path: str):
    """``path`` opened for reading if it is a regular file, else None; a FIFO or device is never opened (opening
    a FIFO blocks until a writer comes), and a file swapped for one between the two looks is refused too."""
    if not stat.S_ISREG(_lstat_mode(path)):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    return os.fdopen(fd, "rb")


class Server:
    """A static server on 127.0.0.1 (an ephemeral port unless given), in a daemon thread; ``headers`` are sent
    with every response besides the isolation headers; a connection idle for ``idle_timeout_s`` is dropped."""

    def __init__(self, mounts: Mapping[str, Path], port: int = 0, headers: Optional[Mapping[str, str]] = None,
                 idle_timeout_s: float = IDLE_TIMEOUT_S):
        # Mount roots resolved once: a link the user named is theirs; links found inside a mount are refused.
        handler = type("Handler", (_Handler,), {"mounts": {k: Path(v).resolve() for k, v in mounts.items()},
                                                "extra_headers": dict(headers or {}), "timeout": idle_timeout_s})
        try:
            self.httpd = ThreadingHTTPServer(("127.0.0.1", port), partial(handler, directory=str(WEB_DIR)))
        except OSError as exc:
            raise UsageError(f"cannot serve on 127.0.0.1:{port}: {exc.strerror}", "choose another --port") from None
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> "Server":
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(folder: Path, port: int = 0) -> Server:
    """A server for one static folder (a web bundle), with the headers its runtimes need and the web app's CSP."""
    return Server({"/": folder}, port, headers={"Content-Security-Policy": WEB_APP_CSP})


class BrowserSession:
    """One headless Chromium page on the harness, with a model loaded: ``open`` -> ``call`` ... -> ``close``."""

    def __init__(self, model_path: str, timeout_s: float = 120.0):
        self.model_path = Path(model_path).resolve()
        self.timeout_ms = timeout_s * 1e3
        self.console: list = []
        self._server = self._playwright = self._browser = self.page = None
        self._chromium_tmp: Optional[str] = None

    def open(self) -> None:
        from deploykit.frameworks import import_playwright

        sync_playwright = import_playwright()
        executable = chromium_path()
        modules = node_modules()
        # The model alone is served (not its folder, which may be the user's home).
        mounts = {"/deploykit/": WEB_DIR, "/node_modules/": modules, "/model/" + self.model_path.name: self.model_path}
        self._chromium_tmp = chromium_tmpdir()
        self._server = Server(mounts).__enter__()
        self._playwright = sync_playwright().start()
        try:
            self._browser = self._playwright.chromium.launch(
                executable_path=executable, headless=True, timeout=self.timeout_ms,
                env={**os.environ, "TMPDIR": self._chromium_tmp},
                args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        except Exception as exc:  # noqa: BLE001 - playwright raises its own Error types
            self.close()
            raise ModelLoadError(f"starting Chromium ({executable}) failed: {_first(exc)}",
                                 "check that `chromium --headless --version` runs on this machine") from None
        try:
            self.page = self._browser.new_page()
            self.page.set_default_timeout(self.timeout_ms)
            self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
            self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))
            self.page.goto(self._server.url + "/deploykit/harness.html", wait_until="load")
            self.page.wait_for_function("window.deploykit !== undefined")
        except Exception as exc:  # noqa: BLE001 - the harness page itself did not come up
            log = (self.console or [""])[-1]
            self.close()
            raise ModelLoadError(f"the harness page did not start in Chromium: {_first(exc)} {log}".strip(),
                                 "delete ~/.cache/deploykit/web-* to reinstall the runtimes; --debug shows the "
                                 "page log") from None

    @property
    def model_url(self) -> str:
        # Percent-encoded: a name with a space, "#", "?" or non-ASCII is a path, not a fragment or query
        # (translate_path decodes it back to the mount's name).
        return "/model/" + quote(os.fsencode(self.model_path.name), safe="")

    def call(self, stage: str, expression: str, argument=None, *, error=ParityError):
        """Await ``expression`` (a JS function of one argument) in the page; a throw, a crash or a time-out
        becomes ``error`` naming the stage, with the page's last console line."""
        try:
            return self.page.evaluate(expression, argument)
        except Exception as exc:  # noqa: BLE001 - TimeoutError, Error("Target crashed"), JS exceptions
            message = _first(exc)
            if out_of_memory(message) or "crash" in message.lower():
                raise ResourceError(f"{stage} in Chromium ran out of memory: {message}",
                                    "a browser's WASM heap holds at most 4 GiB: run it natively, or lower the "
                                    "batch or input size") from None
            raise error(f"{stage} in Chromium failed: {message}", self.remedy(exc)) from None

    def remedy(self, exc: BaseException) -> str:
        text = str(exc)
        if "crash" in text.lower():
            return "the page crashed (often out of memory: WASM memory is at most 4 GiB); try a smaller model"
        if "Timeout" in type(exc).__name__ or "timeout" in text.lower():
            return "the page did not answer in time: raise --timeout, or check the model in native runtimes first"
        return "run with --debug for the page's console log"

    def renderer_peak_rss(self) -> Optional[int]:
        """Peak resident memory (VmHWM) of this page's renderer process, from /proc."""
        from deploykit.child import descendants, status_bytes

        peaks = [status_bytes("VmHWM", pid) for pid in descendants(os.getpid()) if _is_renderer(pid)]
        peaks = [p for p in peaks if p]
        return max(peaks) if peaks else None

    def close(self) -> None:
        # The page's console goes to this child's stderr, which deploykit shows with --debug (kept out otherwise).
        import sys

        if self.console:
            sys.stderr.write("".join(f"[chromium] {line}\n" for line in self.console))
            self.console = []
        for closer in (lambda: self._browser and self._browser.close(),
                       lambda: self._playwright and self._playwright.stop(),
                       lambda: self._server and self._server.__exit__(None, None, None),
                       lambda: self._chromium_tmp and shutil.rmtree(self._chromium_tmp, ignore_errors=True)):
            try:
                closer()
            except Exception:  # noqa: BLE001 - closing after a crash must not mask the first error
                pass
        self._browser = self._playwright = self._server = self.page = self._chromium_tmp = None


# Chromium makes its singleton socket at $TMPDIR/org.chromium.Chromium.XXXXXX/SingletonSocket, and a unix socket
# path holds at most 107 bytes: under a $TMPDIR of 40 characters (plus deploykit's own run folder) it aborted at
# start ("Socket path too long"), which Playwright reported as "Target page, context or browser has been closed".
_CHROMIUM_ROOM = 107 - len("/deploykit-chromium-XXXXXXXX/org.chromium.Chromium.XXXXXX/SingletonSocket")


def chromium_tmpdir() -> str:
    """A new private folder short enough for Chromium's sockets, for its $TMPDIR: under this run's temporary
    folder when that is short enough, else under /tmp (or /var/tmp, /dev/shm); the caller removes it."""
    for base in (tempfile.gettempdir(), "/tmp", "/var/tmp", "/dev/shm"):
        if len(base) <= _CHROMIUM_ROOM and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return tempfile.mkdtemp(prefix="deploykit-chromium-", dir=base)      # mode 0700
    raise UsageError(f"no writable temporary folder is short enough for Chromium's sockets ($TMPDIR is "
                     f"{tempfile.gettempdir()!r})", f"set TMPDIR to a folder of at most {_CHROMIUM_ROOM} characters")


def _first(exc: BaseException) -> str:
    """The page's error in one line, without Playwright's call prefix or the runtime's build paths."""
    import re

    from deploykit.text import first_line

    text = re.sub(r"^(?:[\w.]+: )?(?:Error: )+", "", str(exc).strip())
    text = re.sub(r"(?:/[\w.+-]+)+\.(?:h|cc|cpp|c):\d+ (?:[^ ]+ )*?(?=[A-Z])", "", text)   # build paths, C++ frames
    return first_line(text, 300) or type(exc).__name__


# How WASM runtimes say a 32-bit heap (at most 4 GiB) cannot hold what the model needs.
_OUT_OF_MEMORY = ("Integer overflow", "Out of memory", "out of memory", "Aborted(OOM)", "Cannot enlarge memory",
                  "failed to allocate", "Failed to allocate", "Array buffer allocation failed", "bad_alloc")


def out_of_memory(message: str) -> bool:
    return any(sign in message for sign in _OUT_OF_MEMORY)


def _is_renderer(pid: int) -> bool:
    try:
        return b"--type=renderer" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


class BrowserRunner(RunnerBase):
    """The Runner contract (``deploykit.runner``) on a browser runtime; ``runtimes/<name>.py`` subclass it,
    naming ``RUNTIME`` (the key in backends.js) and explaining the runtime's load errors.

    Beyond the contract it has ``time_calls(feeds, timing)``: the page times its own calls, because a call
    from Python crosses to the browser and back and that trip would be timed too; and ``memory()``.
    """

    RUNTIME = ""

    def __init__(self, model, options: Optional[RunnerOptions] = None):
        self.model, self.options = model, options or RunnerOptions()
        self.session: Optional[BrowserSession] = None
        self.info: dict = {}
        self.last_ms: Optional[float] = None
        self.warmup_calls: Optional[int] = None     # the asked warm-up plus the rounds until WASM tiered up

    def model_file(self) -> str:
        """The file the page loads (subclasses may give a prepared copy)."""
        return self.model.path

    def open(self) -> None:
        self.session = BrowserSession(self.model_file())
        try:
            self.session.open()
        except BaseException:
            self.close()
            raise
        try:
            self.info = self.session.page.evaluate(
                "([runtime, url, threads]) => window.deploykit.open(runtime, url, threads)",
                [self.RUNTIME, self.session.model_url, self.options.threads or 1])
        except Exception as exc:  # noqa: BLE001 - the page's own error text says what the runtime refused
            message = _first(exc)
            self.close()
            raise self.load_error(message) from None

    def load_error(self, message: str) -> Exception:
        """The error for a model the runtime refuses at load (subclasses name the missing op)."""
        return ModelLoadError(f"{self.RUNTIME} cannot load {Path(self.model.path).name}: {message}",
                              "run it natively first (deploykit verify without --runtime); --debug shows the page log")

    @property
    def active_providers(self) -> list:
        threads = self.info.get("threads", 1)
        return [f"{self.info.get('backend', 'wasm')}, {threads} thread{'s' if threads != 1 else ''}",
                _browser_name(self.info.get("user_agent", ""))]

    def run(self, feeds: Mapping) -> dict:
        result = self.session.call(f"running {Path(self.model.path).name}",
                                   "(wire) => window.deploykit.run(wire)", self._wire(feeds))
        self.last_ms = result["ms"]
        return {t["name"]: _array(t) for t in result["outputs"]}

    def time_calls(self, feeds: Mapping, timing) -> list:
        """Per-call latencies (ms) measured in the page, with the harness's Timing semantics."""
        result = self.session.call(f"timing {Path(self.model.path).name}",
                                   "([wire, timing]) => window.deploykit.time(wire, timing)",
                                   [self._wire(feeds), timing.to_dict()], error=MeasurementError)
        self.warmup_calls = result["warmup_calls"]
        return result["times"]

    def memory(self) -> dict:
        heap = self.session.call("reading memory", "() => window.deploykit.memory()")
        return {"page_peak_rss_bytes": self.session.renderer_peak_rss(), **heap}

    def _wire(self, feeds: Mapping) -> list:
        import base64

        import numpy as np

        wire = []
        for detail in self.info["inputs"]:
            dtype = _numpy_dtype(detail["dtype"]) or np.asarray(feeds[detail["name"]]).dtype
            given = np.asarray(feeds[detail["name"]])
            if given.dtype.kind == "f" and np.dtype(dtype).kind in "iu":
                raise UnsupportedModelError(f"input {detail['name']!r} takes {dtype} and the feed is float: the "
                                            "browser runners do not quantize feeds", "verify the float artifact in "
                                            "the browser, or give --inputs with values already in that type")
            value = np.ascontiguousarray(given, dtype=dtype)
            wire.append({"name": detail["name"], "dtype": np.dtype(dtype).name, "shape": list(value.shape),
                         "b64": base64.b64encode(value.tobytes()).decode("ascii")})
        return wire

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = None


_WEB_DTYPES = {"float32": "float32", "float64": "float64", "float16": "float16", "int64": "int64", "int32": "int32",
               "int16": "int16", "int8": "int8", "uint8": "uint8", "uint16": "uint16", "bool": "bool"}


def _numpy_dtype(web_dtype: str) -> Optional[str]:
    return _WEB_DTYPES.get(web_dtype)


def _array(wire: dict):
    import base64

    import numpy as np

    dtype = _numpy_dtype(wire["dtype"])
    if dtype is None:
        raise ParityError(f"the browser returned output {wire['name']!r} as {wire['dtype']}, which deploykit cannot "
                          "compare", "give the model float or integer outputs")
    return np.frombuffer(base64.b64decode(wire["b64"]), dtype=dtype).reshape(wire["shape"]).copy()


def _browser_name(user_agent: str) -> str:
    import re

    match = re.search(r"(HeadlessChrome|Chrome)/([\d.]+)", user_agent)
    return f"Chromium {match.group(2)}" if match else "Chromium"
