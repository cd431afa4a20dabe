"""Browser fixtures: Debian's Chromium through playwright, the real server as a subprocess on a
cold cache, and an origin on loopback (a thread) that can stall an image mid-body and serves the
test pages from another origin than the proxy's."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TIMEOUT_MS = 30_000


def unavailable(reason: str) -> None:
    """Skip a browser test for a missing tool; under CI=true the tests must run, so fail."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI=true requires the browser tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="package")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's, never a downloaded one) for every browser test."""
    if not CHROMIUM.exists():
        unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed (pip install playwright)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """Open pages in fresh contexts (viewport and devicePixelRatio per call); closed afterwards."""
    contexts: list[Any] = []

    def open_page(width: int = 1000, height: int = 800, dpr: float = 1, **options: Any) -> Any:
        context = browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=dpr, **options
        )
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        return page

    yield open_page
    for context in contexts:
        context.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Origin:
    """Files by name under /files/, pages under /pages/; a held name stalls after half its body."""

    files: dict[str, bytes] = field(default_factory=dict)
    pages: dict[str, str] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    requested: dict[str, threading.Event] = field(default_factory=dict)
    released: dict[str, threading.Event] = field(default_factory=dict)
    port: int = 0

    def hold(self, name: str) -> tuple[threading.Event, threading.Event]:
        """Stall `name` mid-body: returns (requested, release) events."""
        self.requested[name] = threading.Event()
        self.released[name] = threading.Event()
        return self.requested[name], self.released[name]

    def page_url(self, name: str, html: str) -> str:
        """Serve `html` from http://localhost (another origin than the proxy's 127.0.0.1)."""
        self.pages[name] = html
        return f"http://localhost:{self.port}/pages/{name}"


def make_handler(origin: Origin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def reply(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            kind, _, name = self.path.lstrip("/").partition("/")
            if kind == "pages" and name in origin.pages:
                return self.reply(200, origin.pages[name].encode(), "text/html; charset=utf-8")
            origin.hits[name] += 1
            if kind != "files" or name not in origin.files:
                return self.reply(404, b"not here", "text/plain")
            body = origin.files[name]
            if name not in origin.released:
                return self.reply(200, body, "image/jpeg")
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            origin.requested[name].set()
            origin.released[name].wait(30)
            self.wfile.write(body[len(body) // 2 :])

    return Handler


@pytest.fixture(scope="package")
def origin() -> Iterator[Origin]:
    """A threaded HTTP server on loopback: independent of any test's event loop."""
    state = Origin()
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state))
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, name="test-origin", daemon=True)
    thread.start()
    yield state
    for event in state.released.values():
        event.set()
    server.shutdown()
    server.server_close()
    thread.join(10)


@dataclass
class Server:
    url: str
    log: Path
    process: subprocess.Popen[bytes]


def wait_healthy(server: Server, timeout: float = 60) -> None:
    """Poll /healthz until it answers 200; fail with the server log after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            break
        try:
            with urllib.request.urlopen(f"{server.url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.1)  # polling interval under a deadline
    raise AssertionError(f"server did not become healthy:\n{server.log.read_text()[-4000:]}")


def start_server(args: list[str], log: Path, env: dict[str, str], port: int) -> Server:
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [sys.executable, "-m", "imgproxy", "serve", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
    server = Server(f"http://127.0.0.1:{port}", log, process)
    try:
        wait_healthy(server)
    except BaseException:
        stop_server(server)
        raise
    return server


def stop_server(server: Server) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait(timeout=10)


@pytest.fixture(scope="package")
def proxy(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The real server on a cold cache, pulling from `origin`, with small widths."""
    tmp = tmp_path_factory.mktemp("proxy")
    port = free_port()
    config = tmp / "imgproxy.toml"
    config.write_text(
        f"""
[server]
port = {port}

[storage]
dir = "{tmp / "data"}"

[processing]
widths = [320, 640, 960, 1280]
formats = ["webp", "jpg"]

[limits]
allow_private_networks = true

[[origins]]
name = "web"
type = "http"
url = "http://127.0.0.1:{origin.port}/files/{{id}}"
"""
    )
    server = start_server(["-c", str(config)], tmp / "server.log", {}, port)
    yield server
    stop_server(server)


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>smart-frame test</title>
<style>body {{ margin: 0; padding: 10px; }} smart-frame {{ margin-bottom: 10px; }}</style>
<script>
  // Record each frame's stages, and whether every rendition was decoded before it was shown.
  window.stages = {{}};
  window.insertedUndecoded = [];
  document.addEventListener("stagechange", (e) => {{
    const list = (stages[e.target.id] ||= []);
    if (list[list.length - 1] !== e.detail.stage) list.push(e.detail.stage);
  }});
  customElements.whenDefined("smart-frame").then(() => {{
    for (const frame of document.querySelectorAll("smart-frame")) {{
      new MutationObserver((records) => {{
        for (const r of records) for (const node of r.addedNodes) {{
          if (node.classList?.contains("disp") && !(node.complete && node.naturalWidth)) {{
            insertedUndecoded.push(node.src);
          }}
        }}
      }}).observe(frame.shadowRoot, {{ childList: true, subtree: true }});
    }}
  }});
</script>
<script type="module" src="{proxy}/smart-frame.js"></script>
</head><body>
{body}
</body></html>
"""


def frames_page(origin: Origin, proxy: Server, name: str, body: str) -> str:
    """A page on another origin than the proxy, embedding the component from the proxy."""
    return origin.page_url(name, PAGE.format(proxy=proxy.url, body=body))
