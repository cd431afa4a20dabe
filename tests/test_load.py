"""Mixed load on loopback: no 5xx, no leaked file descriptors, no memory growth (issue 8).

The server runs as a subprocess so that its RSS (/proc/<pid>/status VmRSS) and its open file
descriptors (/proc/<pid>/fd) can be read. IMGPROXY_LOAD_SECONDS (default 120) sets the length
of the main load; the request rate is fixed, so a shorter run sends fewer requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import signal
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import make_image, poll
from tests.serverproc import create_org, free_port, start_server

LOAD_SECONDS = float(os.environ.get("IMGPROXY_LOAD_SECONDS", "120"))
WARMUP_SECONDS = 15.0
CONCURRENCY = 16
RATE = 250.0  # requests per second at most: 30,000 in two minutes
MAX_REQUESTS = 30_000
SEED = 808
STABLE = [f"stable-{n:02d}" for n in range(20)]  # viewed by version: never updated
MUTABLE = [f"mutable-{n:02d}" for n in range(10)]  # updated by hooks, viewed unversioned
COLD = [f"cold-{n:03d}" for n in range(200)]  # never viewed before the main load
HOOKED = [f"hooked-{n:03d}" for n in range(100)]  # created by the create hook in the main load
WARM_COLD = [f"wcold-{n:02d}" for n in range(30)]  # the same, for the warm-up load
WARM_HOOKED = [f"whooked-{n:02d}" for n in range(15)]
COLD_EVERY = 0.6  # seconds between first views of cold IDs (200 in two minutes)
HOOK_EVERY = 1.2  # between create hooks of new IDs
UPDATE_EVERY = 2.0  # between update hooks of existing images (each rebuilt in the request)
SETTLE_IDLE = 2.0  # seconds the descriptor count must hold still
TILE = 254

# Requests that fill the paced rate between the ones drawn from the pools, by weight.
MIX = {
    "view-cached": 25,
    "rendition": 15,
    "tile": 15,
    "dzi": 4,
    "info": 10,
    "placeholder": 5,
    "revalidate": 5,
    "status": 12,
    "events": 2,
    "healthz": 2,
}
EXPECTED = {"revalidate": {304}}  # every other kind: 200


def write_config(tmp_path: Path, originals: Path, port: int) -> Path:
    config = tmp_path / "imgproxy.toml"
    config.write_text(
        f"""
[server]
port = {port}

[storage]
dir = "{tmp_path / "data"}"

[processing]
widths = [320, 640]

[[origins]]
name = "local"
type = "file"
root = "{originals}"
path = "{{id}}"
extensions = [".jpg", ".png"]
"""
    )
    return config


def make_originals(folder: Path, rng: random.Random) -> None:
    """Small JPEGs, and every fifth a PNG with alpha, 300-700 px, each different."""
    folder.mkdir()
    every = STABLE + MUTABLE + COLD + HOOKED + WARM_COLD + WARM_HOOKED
    for n, image_id in enumerate(every):
        fmt = "png" if n % 5 == 4 else "jpg"
        width, height = rng.randint(300, 700), rng.randint(300, 700)
        data = make_image(width, height, fmt, alpha=fmt == "png", seed=n + 3)
        (folder / f"{image_id}.{fmt}").write_bytes(data)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Paced:
    """A pool of one-off requests (cold IDs, new hook IDs) spread evenly over the load."""

    items: list[str]
    interval: float
    due: float = 0.0

    def take(self, now: float) -> str | None:
        if not self.items or now < self.due:
            return None
        self.due = now + self.interval
        return self.items.pop(0)


@dataclass
class Known:
    """What the load knows about the warm images: sizes, widths, formats, ETags."""

    info: dict[str, dict[str, Any]] = field(default_factory=dict)
    etags: dict[str, str] = field(default_factory=dict)
    org_ids: list[str] = field(default_factory=list)  # created through the hook: status calls


@dataclass
class Tally:
    by_kind: dict[str, Counter[int | str]] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: list[tuple[str, str, int | str, str]] = field(default_factory=list)
    retry_after_503: int = 0

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.by_kind.values())

    def server_errors(self) -> int:
        return sum(
            n
            for c in self.by_kind.values()
            for s, n in c.items()
            if isinstance(s, int) and s >= 500
        )


class Load:
    """Paced, mixed requests from CONCURRENCY clients until the time or the request bound."""

    def __init__(
        self,
        base: str,
        org: dict[str, str],
        known: Known,
        rng: random.Random,
        tally: Tally,
        cold: list[str],
        hooked: list[str],
        seconds: float,
    ) -> None:
        self.base = base
        self.org = org
        self.known = known
        self.rng = rng
        self.tally = tally
        self.seconds = seconds
        self.max_requests = min(MAX_REQUESTS, int(RATE * seconds))
        self.cold = Paced(list(cold), COLD_EVERY)
        self.hooked = Paced(list(hooked), HOOK_EVERY)
        self.updates = Paced(list(MUTABLE) * 100, UPDATE_EVERY)
        self.issued = 0
        self.started = time.monotonic()
        self.kinds = list(MIX)
        self.weights = list(MIX.values())

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self.started = time.monotonic()
            await asyncio.gather(*(self.client(session) for _ in range(CONCURRENCY)))

    async def client(self, session: aiohttp.ClientSession) -> None:
        while True:
            n = self.issued
            now = time.monotonic()
            if n >= self.max_requests or now - self.started >= self.seconds:
                return
            self.issued += 1
            slot = self.started + n / RATE
            if slot > now:
                await asyncio.sleep(slot - now)  # pacing the rate, not synchronising
            kind, call = self.pick(time.monotonic() - self.started)
            await self.send(session, kind, call)

    def pick(self, elapsed: float) -> tuple[str, Callable[[aiohttp.ClientSession], Awaitable[Any]]]:
        b, rng, known = self.base, self.rng, self.known
        image_id = self.cold.take(elapsed)
        if image_id:
            return "view-cold", lambda s: s.get(f"{b}/images/{image_id}?w=320")
        hooked = self.hooked.take(elapsed)
        if hooked:
            self.known.org_ids.append(hooked)
            headers = {"x-api-key": self.org["apiKey"]}
            return "hook-create", lambda s: s.get(f"{b}/v1/eis/create/{hooked}", headers=headers)
        mutable = self.updates.take(elapsed)
        if mutable:
            headers = {"x-api-key": self.org["apiKey"]}
            return "hook-update", lambda s: s.get(f"{b}/v1/eis/update/{mutable}", headers=headers)
        kind = rng.choices(self.kinds, self.weights)[0]
        stable = rng.choice(STABLE)
        info = known.info[stable]
        version = f"{b}/images/{stable}/v{info['version']}"
        if kind == "view-cached":
            target = rng.choice(STABLE + MUTABLE)
            width = rng.choice([100, 320, 500, 640, 1200])
            accept = rng.choice(["image/webp,*/*", "image/avif,image/webp,*/*", "*/*"])
            url = f"{b}/images/{target}?w={width}"
            return kind, lambda s: s.get(url, headers={"Accept": accept})
        if kind == "rendition":
            width = rng.choice(info["renditions"]["widths"])
            fmt = rng.choice(info["renditions"]["formats"])
            return kind, lambda s: s.get(f"{version}/{width}.{fmt}")
        if kind == "tile":
            level, col, row = random_tile(rng, info["width"], info["height"])
            return kind, lambda s: s.get(f"{version}/zoom_files/{level}/{col}_{row}.jpg")
        if kind == "dzi":
            return kind, lambda s: s.get(f"{version}/zoom.dzi")
        if kind == "info":
            target = rng.choice(STABLE + MUTABLE)
            return kind, lambda s: s.get(f"{b}/images/{target}/info.json")
        if kind == "placeholder":
            return kind, lambda s: s.get(f"{b}/images/{stable}/placeholder.jpg")
        if kind == "revalidate":
            headers = {"If-None-Match": known.etags[stable]}
            return kind, lambda s: s.get(f"{b}/images/{stable}?w=320", headers=headers)
        if kind == "status":
            ids = [*rng.sample(known.org_ids, min(len(known.org_ids), 40)), rng.choice(STABLE)]
            body = {
                "organisationId": self.org["organisationId"],
                "apiKey": self.org["apiKey"],
                "imageIds": ids,
            }
            return kind, lambda s: s.post(f"{b}/v2/image/status", json=body)
        if kind == "events":
            return kind, lambda s: s.get(f"{b}/images/{stable}/events")
        return kind, lambda s: s.get(f"{b}/healthz")

    async def send(
        self,
        session: aiohttp.ClientSession,
        kind: str,
        call: Callable[[aiohttp.ClientSession], Any],
    ) -> None:
        url, body = "", b""
        try:
            async with call(session) as response:
                url = str(response.url)
                body = await response.read()
                status: int | str = response.status
                if status == 503 and "Retry-After" in response.headers:
                    self.tally.retry_after_503 += 1
        except (aiohttp.ClientError, TimeoutError) as exc:
            status = type(exc).__name__
        self.tally.by_kind[kind][status] += 1
        if status not in EXPECTED.get(kind, {200}):
            self.tally.unexpected.append((kind, url, status, body[:200].decode(errors="replace")))


def random_tile(rng: random.Random, width: int, height: int) -> tuple[int, int, int]:
    """A tile that exists: a level of the DeepZoom pyramid and a column and row inside it."""
    top = math.ceil(math.log2(max(width, height)))
    level = rng.randint(0, top)
    scale = 2 ** (top - level)
    cols = math.ceil(math.ceil(width / scale) / TILE)
    rows = math.ceil(math.ceil(height / scale) / TILE)
    return level, rng.randrange(cols), rng.randrange(rows)


class Server:
    """The server subprocess, and the quiet moment in which its RSS and descriptors are read."""

    def __init__(self, config: Path, log: Path, base: str) -> None:
        self.base = base
        self.process = start_server(config, log)

    async def healthz(self) -> dict[str, Any] | None:
        # A fresh connection each time, closed at once: it must not count as a held descriptor.
        connector = aiohttp.TCPConnector(force_close=True)
        try:
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"{self.base}/healthz") as response,
            ):
                if response.status != 200:
                    return None
                data: dict[str, Any] = await response.json()
                return data
        except aiohttp.ClientError:
            return None

    async def settle(self) -> tuple[int, int]:
        """Wait for an empty queue and idle workers, then for the descriptors to hold still."""

        async def drained() -> bool:
            state = await self.healthz()
            return state is not None and state["queue"] == 0 and state["workers_busy"] == 0

        await poll(drained, timeout=180, interval=0.25)
        pid = self.process.pid
        samples: list[int] = []

        async def still() -> tuple[int, int] | None:
            samples.append(fd_count(pid))
            steady = int(SETTLE_IDLE / 0.25)
            if len(samples) > steady and len(set(samples[-steady - 1 :])) == 1:
                return rss_kib(pid), samples[-1]
            return None

        return await poll(still, timeout=30, interval=0.25)

    async def trace(self, samples: list[int], every: float = 5.0) -> None:
        """RSS every few seconds while the load runs (printed: growth or a plateau?)."""
        while True:
            samples.append(rss_kib(self.process.pid))
            await asyncio.sleep(every)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


async def warm_up(base: str, known: Known) -> None:
    """View every warm image until ready, and learn its info and display ETag."""
    async with aiohttp.ClientSession() as session:
        for image_id in STABLE + MUTABLE:
            async with session.get(f"{base}/images/{image_id}") as response:
                assert response.status == 200, await response.text()

        async def ready(image_id: str) -> dict[str, Any] | None:
            async with session.get(f"{base}/images/{image_id}/info.json") as response:
                info: dict[str, Any] = await response.json()
            assert info["status"] != "error", info
            return info if info["status"] == "ready" else None

        for image_id in STABLE + MUTABLE:
            known.info[image_id] = await poll(lambda i=image_id: ready(i), timeout=120)
        for image_id in STABLE:
            async with session.get(f"{base}/images/{image_id}?w=320") as response:
                assert response.headers["X-Image-Stage"] == "display"
                known.etags[image_id] = response.headers["ETag"]


@pytest.mark.slow
@pytest.mark.timeout(LOAD_SECONDS + 420)
async def test_mixed_load_no_5xx_no_leaks(tmp_path: Path) -> None:
    """A paced mixed load (cold views, cached renditions and tiles, status, hooks) gives no 5xx and leaks neither descriptors nor memory."""
    rng = random.Random(SEED)
    originals = tmp_path / "originals"
    make_originals(originals, rng)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp_path, originals, port)
    log = tmp_path / "server.log"
    org = await create_org(config)
    server = Server(config, log, base)
    try:
        await poll(server.healthz, timeout=30)
        known = Known()
        await warm_up(base, known)
        warm = Tally()
        await Load(base, org, known, rng, warm, WARM_COLD, WARM_HOOKED, WARMUP_SECONDS).run()
        rss_before, fds_before = await server.settle()
        tally = Tally()
        trace: list[int] = []
        tracer = asyncio.create_task(server.trace(trace))
        started = time.monotonic()
        try:
            await Load(base, org, known, rng, tally, COLD, HOOKED, LOAD_SECONDS).run()
        finally:
            tracer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await tracer
        elapsed = time.monotonic() - started
        rss_after, fds_after = await server.settle()
    finally:
        server.stop()
    print(f"\nwarm-up: {warm.total()} requests; main load: {tally.total()} in {elapsed:.1f}s")
    for kind, counts in sorted(tally.by_kind.items()):
        print(f"  {kind:12} {dict(sorted(counts.items(), key=str))}")
    print(f"  5xx: {tally.server_errors()} (503 with Retry-After: {tally.retry_after_503})")
    print(f"RSS {rss_before} KiB -> {rss_after} KiB ({rss_after / rss_before - 1:+.1%})")
    print(f"RSS during the load, every 5 s (MiB): {[kib // 1024 for kib in trace]}")
    print(f"fds {fds_before} -> {fds_after}")
    text = log.read_text()
    assert warm.server_errors() == 0 and warm.unexpected == []
    assert tally.server_errors() == 0, tally.unexpected[:20]
    assert tally.unexpected == [], tally.unexpected[:20]
    assert fds_after <= fds_before + 5
    assert rss_after <= rss_before * 1.2
    assert "Traceback" not in text
