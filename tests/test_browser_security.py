"""Issue 26: the web bundle, `serve` and the browser runtimes cannot be turned against the user — markup in names
and labels stays text under a Content-Security-Policy, `serve` hands out only regular files reached without a link
and drops idle connections, and the browser runtimes start under a long $TMPDIR with odd model file names."""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT, run_cli
from tests.hostile import builders
from tests.test_browser import _open_pages, in_chromium, served

HOSTILE_TEXT = ('<img src=x onerror="window.PWNED=1">', '</script><script>window.PWNED=1</script>',
                '<svg onload="window.PWNED=1">', '"><iframe srcdoc="<script>parent.PWNED=1</script>">')


def _hostile_web_bundle(tmp_path: Path) -> Path:
    """A real web bundle of a tiny ONNX classifier whose output tensor name and labels are markup."""
    model = builders.tiny_onnx(tmp_path / "m.onnx", output_name=HOSTILE_TEXT[0])
    (tmp_path / "labels.txt").write_text("\n".join(HOSTILE_TEXT[1:]) + "\n")
    made = run_cli("package", str(model), "--source", str(model), "--app", "web", "-o", str(tmp_path / "site"),
                   "--labels", str(tmp_path / "labels.txt"))
    assert made.returncode == 0, made.stderr[-2000:]
    return tmp_path / "site"


def _page(browser, url: str, ready: str):
    """A page on ``url`` once ``ready`` holds, with its console (CSP refusals are logged there)."""
    page = browser.new_page()
    page.console_lines = []
    page.on("console", lambda message: page.console_lines.append(message.text))
    page.on("pageerror", lambda error: page.console_lines.append(f"pageerror: {error}"))
    response = page.goto(url)
    page.wait_for_function(ready, timeout=120_000)
    page.csp_header = response.headers.get("content-security-policy", "")
    return page


@in_chromium
def test_hostile_names_and_labels_in_a_web_bundle_are_shown_as_text_and_run_nothing(tmp_path):
    """Issue 26: an output tensor name and labels written as markup appear as literal text in the app and the
    self-test, no payload runs (window.PWNED stays undefined), both pages carry a CSP and still work under it."""
    bundle = _hostile_web_bundle(tmp_path)
    server, playwright, browser = _open_pages(bundle)
    try:
        app = _page(browser, server.url + "/index.html", "() => document.body.dataset.ready === 'yes'")
        app.click("#run-golden")
        app.wait_for_function("() => document.body.dataset.predicted === 'yes'", timeout=60_000)
        results = app.inner_text("#results")
        selftest = _page(browser, server.url + "/selftest.html", "() => document.body.dataset.result !== undefined")
        parity = selftest.inner_text("#parity")
        outcome = selftest.evaluate("window.selftest")
        for page in (app, selftest):
            page.wait_for_timeout(300)      # an onerror of a broken <img> fires after the load
            assert page.evaluate("window.PWNED") is None, page.console_lines
            assert page.evaluate("document.querySelectorAll('img, svg, iframe, script:not([src]):not([type=importmap])').length") == 0
            assert "script-src 'self'" in page.csp_header and "object-src 'none'" in page.csp_header
            meta = page.evaluate("document.querySelector('meta[http-equiv=\"Content-Security-Policy\"]')?.content")
            assert meta and "script-src 'self'" in meta and "'unsafe-inline'" not in meta
            assert not [line for line in page.console_lines if "Content Security Policy" in line], page.console_lines
        assert HOSTILE_TEXT[0] in results and all(label in results for label in HOSTILE_TEXT[1:]), results
        assert outcome["passed"], outcome
        assert HOSTILE_TEXT[0] in parity and "pass" in parity, parity
    finally:
        browser.close()
        playwright.stop()
        server.__exit__(None, None, None)


def test_the_web_pages_carry_the_served_csp_and_it_allows_their_import_map_by_hash():
    """The <meta> CSP of each app page is the one `serve` sends, and its hash is that page's import map (the only
    inline script): a changed import map fails here, not silently in a user's browser."""
    import base64
    import hashlib
    import re

    from deploykit.browser import WEB_APP_CSP

    assert "'unsafe-inline'" not in WEB_APP_CSP and "'unsafe-eval'" not in WEB_APP_CSP
    for page in ("index.html", "selftest.html"):
        html = (ROOT / "deploykit" / "web" / "app" / page).read_text()
        assert re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html).group(1) == WEB_APP_CSP
        inline = re.findall(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", html, re.S)
        assert len(inline) == 1, page
        digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
        assert f"'sha256-{digest}'" in WEB_APP_CSP, page
        assert html.index("Content-Security-Policy") < html.index("<script")
    app = "".join((ROOT / "deploykit" / "web" / "app" / name).read_text() for name in ("app.js", "selftest.js"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write"):
        assert f".{sink}" not in app and f"{sink}(" not in app, sink


def test_serve_refuses_links_fifos_and_devices_inside_the_folder_without_opening_them(tmp_path):
    """Issue 26: a bundle with `x.txt -> ~/.ssh/id_rsa` (or a linked folder) served the target. Only regular files
    reached without a link are served; a FIFO answers 404 at once instead of blocking a server thread."""
    from deploykit.browser import serve

    site, outside = tmp_path / "site", tmp_path / "home"
    site.mkdir(), outside.mkdir()
    (outside / "id_rsa").write_text("PRIVATE KEY")
    (site / "index.html").write_text("<p>hi</p>")
    (site / "x.txt").symlink_to(outside / "id_rsa")
    (site / "inside.txt").symlink_to(site / "index.html")       # a link, even to a file inside, is refused
    (site / "vendor").symlink_to(outside, target_is_directory=True)
    (site / "sub").mkdir()
    (site / "sub" / "index.html").symlink_to(outside / "id_rsa")
    os.mkfifo(site / "pipe.js")
    (site / "null").symlink_to("/dev/null")
    with serve(site) as server:
        with urllib.request.urlopen(server.url + "/index.html", timeout=10) as response:
            assert response.read() == b"<p>hi</p>"
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
        for path in ("/x.txt", "/inside.txt", "/vendor/id_rsa", "/sub/", "/sub/index.html", "/pipe.js", "/null"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(server.url + path, timeout=10)     # a blocked FIFO open would time out
            assert refused.value.code == 404, path
            assert b"PRIVATE" not in refused.value.read()


def test_a_one_file_mount_refuses_a_fifo_and_serves_a_percent_encoded_name(tmp_path):
    from urllib.parse import quote

    from deploykit.browser import Server

    name = "my model#1?é.onnx"
    (tmp_path / name).write_bytes(b"model")
    os.mkfifo(tmp_path / "pipe.onnx")
    with Server({"/model/" + name: tmp_path / name, "/model/pipe.onnx": tmp_path / "pipe.onnx"}) as server:
        with urllib.request.urlopen(server.url + "/model/" + quote(name, safe=""), timeout=10) as response:
            assert response.read() == b"model"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(server.url + "/model/pipe.onnx", timeout=10)
        assert refused.value.code == 404


def test_an_idle_or_half_sent_connection_is_dropped_after_the_idle_time_out(tmp_path):
    """A client that connects and sends nothing, or half a request, must not hold a server thread forever."""
    import socket
    import time

    from deploykit.browser import IDLE_TIMEOUT_S, Server

    assert 0 < IDLE_TIMEOUT_S <= 60
    (tmp_path / "index.html").write_text("hi")
    with Server({"/": tmp_path}, idle_timeout_s=1.0) as server:
        port = server.httpd.server_address[1]
        for first_bytes in (b"", b"GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                client.sendall(first_bytes)
                started = time.monotonic()
                assert client.recv(1024) == b""        # the server closed it (a recv time-out would raise here)
                assert time.monotonic() - started < 5
        with urllib.request.urlopen(server.url + "/index.html", timeout=10) as response:     # still serving
            assert response.read() == b"hi"


def test_serve_prints_a_folder_name_with_control_characters_escaped(tmp_path):
    folder = tmp_path / "site\x1b]0;owned\x07\x1b[2J"
    folder.mkdir()
    (folder / "index.html").write_text("<p>bundle</p>")
    with served(folder) as (line, _):
        pass
    assert line.startswith("serving ") and "\x1b" not in line and "\x07" not in line, repr(line)
    assert "site\\x1b]0;owned\\x07\\x1b[2J at http://127.0.0.1:" in line, repr(line)


@in_chromium
def test_a_long_tmpdir_and_a_model_name_with_space_hash_query_and_non_ascii_run_in_the_browser(tmp_path, monkeypatch):
    """Issue 26: with a $TMPDIR of 60 characters Chromium aborted at start (its singleton socket path passed the
    107-byte unix socket limit), and a model named "my model#1?é.onnx" was fetched as "/model/my model" (the
    rest a fragment): verify said "run it natively first". Both run now, and Chromium's folder is removed."""
    import tempfile

    long_tmp = tmp_path / ("t" * max(1, 60 - len(str(tmp_path)) - 1))
    long_tmp.mkdir()
    assert len(str(long_tmp)) >= 60
    source = builders.tiny_onnx(tmp_path / "m.onnx")
    odd = tmp_path / "my model#1?é.onnx"
    odd.write_bytes(source.read_bytes())
    leftovers = set(Path("/tmp").glob("deploykit-chromium-*"))     # Chromium's folder goes there: $TMPDIR is long
    monkeypatch.setenv("TMPDIR", str(long_tmp))
    proc = run_cli("verify", str(source), str(odd), "--runtime", "onnxruntime-web", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["comparisons"][0]["passed"]
    assert not list(long_tmp.iterdir()) and set(Path("/tmp").glob("deploykit-chromium-*")) <= leftovers
    from deploykit.browser import BrowserSession

    monkeypatch.setattr(tempfile, "tempdir", None)      # re-read the long TMPDIR in this process
    session = BrowserSession(str(odd), timeout_s=60)
    try:
        session.open()
        fetched = session.page.evaluate("async (url) => (await (await fetch(url)).arrayBuffer()).byteLength",
                                        session.model_url)
        assert fetched == odd.stat().st_size
        chromium_tmp = session._chromium_tmp
        assert chromium_tmp and len(chromium_tmp) < len(str(long_tmp))
    finally:
        session.close()
    assert not Path(chromium_tmp).exists()
