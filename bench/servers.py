"""The processes a run talks to, all on 127.0.0.1: imgproxy itself, and the references.

- ImgproxyServer: `imgproxy serve -c <generated toml>` as a subprocess, fresh storage each start.
- StaticOrigin: the loopback http origin (aiohttp, in the bench process), counting requests.
- NginxServer: nginx serving the imgproxy cache directly (figure 4's reference).
- BareStaticServer: a minimal aiohttp FileResponse server (`python -m bench.bare_static`).
- ThumborServer: thumbor (its own venv, see install.py), HTTP loader, no storage (figures 2, 3).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

import aiohttp
from aiohttp import web

from bench.plan import (
    FILE_PREFIX,
    HTTP_PREFIX,
    LOGS_DIR,
    ORIGINALS_DIR,
    REPO_DIR,
    RUNS_DIR,
    VENV_BIN,
    WORK_DIR,
)
from imgproxy.cache.layout import TILE_DISK_EXT, CacheLayout

START_TIMEOUT = 30.0
START_ATTEMPTS = 3
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of a live process (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


def _status_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (children of each of its threads, recursively)."""
    found = [pid]
    for current in found:  # grows while iterating: a breadth-first walk
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            try:
                found += [int(c) for c in task.read_text().split()]
            except OSError:
                pass
    return found


def rss_kib(pid: int) -> int:
    """Resident set size now (VmRSS) of `pid` plus its child processes, in KiB."""
    total = 0
    for member in descendants(pid):
        try:
            total += _status_kib(member, "VmRSS")
        except OSError:  # exited meanwhile
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process (all its threads) has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`imgproxy ARGS` from the venv, its output captured, in a thread."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(VENV_BIN / "imgproxy"), *args],
        capture_output=True,
        text=True,
        env=clean_env(),
        timeout=60,
    )


def clean_env() -> dict[str, str]:
    """The environment without IMGPROXY_* overrides, so the generated TOML is the whole truth."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IMGPROXY_")}


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


async def wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, need_200: bool) -> None:
    """Until `url` answers over HTTP (200 if `need_200`); bounded, and fails early if `proc` died
    (e.g. its port was taken meanwhile: its log then says so, and start() retries)."""
    deadline = time.monotonic() + START_TIMEOUT
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode}:\n{log_tail(log)}")
            try:
                async with session.get(url) as response:
                    await response.read()
                    if response.status == 200 or not need_200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError(f"{url} not answering after {START_TIMEOUT:.0f}s:\n{log_tail(log)}")


class ManagedProcess:
    """A subprocess we started, logged to bench/work/logs/<label>.log, stopped by its own pid."""

    stop_signal = signal.SIGTERM

    def __init__(self, label: str) -> None:
        self.label = label
        self.port = free_port()
        self.log = LOGS_DIR / f"{label}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.died: int | None = None  # the exit code, when it exited before we stopped it
        self._log_file: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self, argv: list[str]) -> None:
        LOGS_DIR.mkdir(parents=True, exist_ok=True)
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            argv,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=REPO_DIR,
            env=clean_env(),
        )

    async def start(self) -> None:
        """Start and wait until serving; on a port taken meanwhile, retry on another port."""
        for attempt in range(START_ATTEMPTS):
            await asyncio.to_thread(self.log.unlink, True)  # no stale log to misread
            try:
                await self._start()
                return
            except RuntimeError:
                await self.stop()
                taken = "already in use" in log_tail(self.log).lower()
                if not taken or attempt == START_ATTEMPTS - 1:
                    raise
                self.port = free_port()

    async def _start(self) -> None:
        raise NotImplementedError

    def exit_status(self) -> str:
        """'' while running (or stopped by us); else how it ended, with its log's last lines."""
        code = self.died if self.proc is None else self.proc.poll()
        if code is None:
            return ""
        how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
        return f"{self.label} ended by itself ({how}); log tail:\n{log_tail(self.log, 8)}"

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is not None:
            self.died = proc.returncode
        if proc is not None and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            try:
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                await asyncio.to_thread(proc.wait, STOP_TIMEOUT)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        self.proc = None


class ImgproxyServer(ManagedProcess):
    """`imgproxy serve` with 2 workers, a file origin (f-*) and the loopback http origin (h-*)."""

    def __init__(self, label: str, origin_port: int, workers: int = 2) -> None:
        super().__init__(label)
        self.origin_port = origin_port
        self.workers = workers
        self.storage = RUNS_DIR / label
        self.config = RUNS_DIR / f"{label}.toml"

    @property
    def layout(self) -> CacheLayout:
        return CacheLayout(self.storage / "cache")

    def config_text(self) -> str:
        return f"""# generated by bench/servers.py
[server]
host = "127.0.0.1"
port = {self.port}

[storage]
dir = "{self.storage}"

[processing]
workers = {self.workers}

[limits]
allow_private_networks = true

[[origins]]
name = "bench-http"
type = "http"
id_pattern = "^{HTTP_PREFIX}.*"
url = "http://127.0.0.1:{self.origin_port}/{{id}}.jpg"

[[origins]]
name = "bench-file"
type = "file"
id_pattern = "^{FILE_PREFIX}.*"
root = "{ORIGINALS_DIR}"
path = "{{id}}"
extensions = [".jpg"]
"""

    def _prepare(self) -> None:
        """A fresh storage dir (so every ID is cold) and the TOML."""
        shutil.rmtree(self.storage, ignore_errors=True)
        self.storage.mkdir(parents=True)
        self.config.write_text(self.config_text())

    async def stop(self) -> None:
        """Stop the server, then drop its storage (the log and the TOML stay for inspection)."""
        await super().stop()
        await asyncio.to_thread(shutil.rmtree, self.storage, True)

    async def _start(self) -> None:
        await asyncio.to_thread(self._prepare)
        check = await run_cli("check-config", "-c", str(self.config))
        if check.returncode != 0:
            raise RuntimeError(f"imgproxy check-config refused {self.config}:\n{check.stderr}")
        self._spawn([str(VENV_BIN / "imgproxy"), "serve", "-c", str(self.config)])
        assert self.proc is not None
        await wait_http(f"{self.base_url}/healthz", self.proc, self.log, need_200=True)


@asynccontextmanager
async def running(server: ImgproxyServer) -> AsyncIterator[ImgproxyServer]:
    """Start `server`, always stop it; an error while it had died on its own says so."""
    try:
        await server.start()
        yield server
    except Exception as exc:
        status = server.exit_status()
        if status:
            raise RuntimeError(status) from exc
        raise
    finally:
        await server.stop()


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class StaticOrigin:
    """The loopback http origin: bench/work/originals/ over aiohttp (sendfile) in this process.

    `requests[path]` counts every request it was sent (figure 7 checks one fetch per ID), and
    `request_times[path]` says when each came."""

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.requests: Counter[str] = Counter()
        self.request_times: dict[str, list[float]] = {}  # path -> time.perf_counter() of each

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def start(self) -> None:
        @web.middleware
        async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests[request.path] += 1
            self.request_times.setdefault(request.path, []).append(time.perf_counter())
            return await handler(request)

        app = web.Application(middlewares=[count])
        app.router.add_static("/", ORIGINALS_DIR)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


class NginxServer(ManagedProcess):
    """nginx (one worker, sendfile) serving tile and rendition URLs straight from imgproxy's
    cache dir; `shards` maps each image ID to its shard directory (a blake2s nginx lacks)."""

    stop_signal = signal.SIGQUIT

    def __init__(
        self, label: str, cache_root: Path, shards: dict[str, str], tile_format: str = "jpg"
    ) -> None:
        super().__init__(label)
        self.prefix = WORK_DIR / "nginx"
        self.cache_root = cache_root
        self.shards = shards
        self.tile_format = tile_format

    @staticmethod
    def available() -> bool:
        return shutil.which("nginx") is not None

    def config_text(self) -> str:
        p = self.prefix
        user = "user root;\n" if os.geteuid() == 0 else ""
        temps = "\n".join(
            f"    {kind}_temp_path {p}/tmp/{kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        shards = "\n".join(f'        "{i}" "{shard}";' for i, shard in sorted(self.shards.items()))
        disk_ext = TILE_DISK_EXT[self.tile_format]
        immutable = 'add_header Cache-Control "public, max-age=31536000, immutable";'
        return f"""# generated by bench/servers.py
{user}worker_processes 1;
daemon off;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 2048; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    types {{ image/jpeg jpeg jpg; image/png png; image/webp webp; image/avif avif; }}
    default_type application/octet-stream;
{temps}
    map $img $shard {{
        default "-";
{shards}
    }}
    server {{
        listen 127.0.0.1:{self.port} backlog=1024;
        root {self.cache_root};
        location = / {{ return 204; }}
        location ~ ^/images/(?<img>[^/]+)/v(?<ver>\\d+)/zoom_files/(?<lvl>\\d+)/(?<col>\\d+)_(?<row>\\d+)\\.{self.tile_format}$ {{
            try_files /$shard/$img/v$ver/zoom_files/$lvl/${{col}}_${{row}}.{disk_ext} =404;
            {immutable}
        }}
        location ~ ^/images/(?<img>[^/]+)/v(?<ver>\\d+)/(?<w>\\d+)\\.(?<ext>jpg|webp|avif|png)$ {{
            try_files /$shard/$img/v$ver/$w.$ext =404;
            {immutable}
        }}
    }}
}}
"""

    def _prepare(self) -> Path:
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.prefix / "tmp" / kind).mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(self.config_text())
        return conf

    async def _start(self) -> None:
        conf = await asyncio.to_thread(self._prepare)
        self._spawn(["nginx", "-p", str(self.prefix), "-c", str(conf)])
        assert self.proc is not None
        await wait_http(self.base_url + "/", self.proc, self.log, need_200=False)


def shard_map(layout: CacheLayout, image_ids: Iterable[str]) -> dict[str, str]:
    """Each image ID's shard directory name under the cache root."""
    return {image_id: layout.image_dir(image_id).parent.name for image_id in image_ids}


class BareStaticServer(ManagedProcess):
    """The same URLs through a minimal aiohttp app (what our routing and middleware cost), plus
    `POST /echo`, a trivial JSON echo (the reference of the images/add answer time)."""

    def __init__(self, label: str, cache_root: Path, tile_format: str = "jpg") -> None:
        super().__init__(label)
        self.cache_root = cache_root
        self.tile_format = tile_format

    async def _start(self) -> None:
        self._spawn(
            [
                sys.executable,
                "-m",
                "bench.bare_static",
                str(self.cache_root),
                str(self.port),
                TILE_DISK_EXT[self.tile_format],
            ]
        )
        assert self.proc is not None
        await wait_http(self.base_url + "/", self.proc, self.log, need_200=False)


THUMBOR_CONFIG = """# generated by bench/servers.py: every request cold (no storage, no result storage)
LOADER = "thumbor.loaders.http_loader"
STORAGE = "thumbor.storages.no_storage"
RESULT_STORAGE = None
ALLOW_UNSAFE_URL = True
QUALITY = {quality}
"""


class ThumborServer(ManagedProcess):
    """thumbor from its own venv (bench/work/thumbor-venv): one process, HTTP loader, no
    storage of originals and no result storage, so each distinct URL is a cold request."""

    def __init__(self, label: str, thumbor_bin: Path, quality: int) -> None:
        super().__init__(label)
        self.thumbor_bin = thumbor_bin
        self.config = RUNS_DIR / f"{label}.conf"
        self.quality = quality

    async def _start(self) -> None:
        self.config.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(self.config.write_text, THUMBOR_CONFIG.format(quality=self.quality))
        self._spawn(
            [
                str(self.thumbor_bin),
                "--port",
                str(self.port),
                "--ip",
                "127.0.0.1",
                "--conf",
                str(self.config),
                "--log-level",
                "warning",
            ]
        )
        assert self.proc is not None
        await wait_http(self.base_url + "/healthcheck", self.proc, self.log, need_200=True)
