"""HTTP client helpers: a timed GET, waiting for `ready`, tile URLs, a paced latency sampler."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from xml.etree import ElementTree

import aiohttp

BROWSER_ACCEPT = "image/avif,image/webp,image/apng,image/*,*/*;q=0.8"
POLL_INTERVAL = 0.1
REQUEST_TIMEOUT = aiohttp.ClientTimeout(total=60)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass(frozen=True)
class Timed:
    seconds: float
    status: int
    headers: dict[str, str]
    size: int


async def timed_get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> Timed:
    """GET `url`, reading the whole body; the time is until the last byte arrived."""
    started = time.perf_counter()
    async with session.get(url, headers=headers or {}) as response:
        body = await response.read()
        elapsed = time.perf_counter() - started
        return Timed(elapsed, response.status, dict(response.headers), len(body))


@dataclass
class Progress:
    """Status changes seen while polling info.json: (seconds since start, status)."""

    started: float = field(default_factory=time.perf_counter)
    changes: list[tuple[float, str]] = field(default_factory=list)

    def see(self, status: str) -> None:
        if not self.changes or self.changes[-1][1] != status:
            self.changes.append((time.perf_counter() - self.started, status))

    def describe(self) -> str:
        return ", ".join(f"{status} {at:.2f}s" for at, status in self.changes)


async def wait_ready(
    session: aiohttp.ClientSession,
    base_url: str,
    image_id: str,
    timeout: float,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Poll info.json every POLL_INTERVAL until `ready` (bounded by `timeout`); error -> raise."""
    url = f"{base_url}/images/{image_id}/info.json"
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(url) as response:
            if response.status == 200:
                last = await response.json()
                if progress is not None:
                    progress.see(str(last.get("status")))
                if last.get("status") == "ready":
                    return last
                if last.get("status") == "error":
                    raise RuntimeError(f"{image_id} ended in error: {last.get('error')}")
            else:
                await response.read()
        await asyncio.sleep(POLL_INTERVAL)
    raise TimeoutError(f"{image_id} not ready after {timeout:.0f}s (last: {last.get('status')})")


@dataclass
class Milestones:
    """When (seconds after `started`) each stage or status was first seen on /events."""

    started: float
    seen: dict[str, float] = field(default_factory=dict)
    display_get: Timed | None = None  # the GET ?w=... made as soon as display was announced
    display_served: float | None = None  # seconds after `started` it was fully read

    def mark(self, key: str) -> None:
        self.seen.setdefault(key, time.perf_counter() - self.started)


async def follow_events(
    session: aiohttp.ClientSession,
    base_url: str,
    image_id: str,
    timeout: float,
    started: float,
    display_width: int | None = None,
) -> Milestones:
    """Follow GET /images/{id}/events until ready (bounded by `timeout`); error -> raise.

    With `display_width`, the moment display is announced `GET /images/{id}?w=…` is made (the
    stream is read on afterwards) and must answer `X-Image-Stage: display`."""
    got = Milestones(started)
    url = f"{base_url}/images/{image_id}/events"
    async with asyncio.timeout(timeout), session.get(url) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: {response.status}")
        async for line in response.content:
            if not line.startswith(b"data: "):
                continue
            info = json.loads(line[len(b"data: ") :])
            for stage, built in dict(info.get("stages") or {}).items():
                if built:
                    got.mark(stage)
            got.mark(str(info.get("status")))
            if info.get("status") == "error":
                raise RuntimeError(f"{image_id} ended in error: {info.get('error')}")
            if display_width is not None and got.display_get is None and "display" in got.seen:
                shown = await timed_get(
                    session,
                    f"{base_url}/images/{image_id}?w={display_width}",
                    {"Accept": BROWSER_ACCEPT},
                )
                got.display_served = time.perf_counter() - started
                got.display_get = shown
                stage = shown.headers.get("X-Image-Stage")
                if shown.status != 200 or stage != "display":
                    raise RuntimeError(
                        f"GET {image_id}?w={display_width} after display was announced: "
                        f"{shown.status}, X-Image-Stage {stage}"
                    )
            if info.get("status") == "ready":
                return got
    raise RuntimeError(f"{url}: the stream ended before ready ({sorted(got.seen)})")


async def stage_metrics(
    session: aiohttp.ClientSession, base_url: str
) -> dict[str, tuple[float, int]]:
    """The server's own per-stage (total seconds, count) from /metrics."""
    async with session.get(f"{base_url}/metrics") as response:
        text = await response.text()
    found: dict[str, tuple[float, int]] = {}
    for line in text.splitlines():
        for kind in ("sum", "count"):
            prefix = f'imgproxy_stage_seconds_{kind}{{stage="'
            if line.startswith(prefix):
                stage = line.split('"')[1]
                value = float(line.rsplit(" ", 1)[1])
                total, count = found.get(stage, (0.0, 0))
                found[stage] = (value, count) if kind == "sum" else (total, int(value))
    return found


def describe_stage_means(stages: dict[str, tuple[float, int]]) -> str:
    """`stage mean ms` per stage, as the server measured them."""
    parts = [
        f"{stage} {total / count * 1e3:.0f} ms"
        for stage, (total, count) in sorted(stages.items())
        if count
    ]
    return ", ".join(parts) or "none"


@dataclass(frozen=True)
class Dzi:
    width: int
    height: int
    tile_size: int
    fmt: str
    top: int  # the full-resolution level
    tiles: str  # the URL of the tile tree: {tiles}/{level}/{col}_{row}.{fmt}


async def read_dzi(session: aiohttp.ClientSession, dzi_url: str) -> Dzi:
    """A DeepZoom descriptor, fetched and parsed."""
    async with session.get(dzi_url) as response:
        if response.status != 200:
            raise RuntimeError(f"{dzi_url}: {response.status}")
        root = ElementTree.fromstring(await response.read())
    size = next(el for el in root.iter() if el.tag.endswith("Size"))
    width, height = int(size.get("Width", "0")), int(size.get("Height", "0"))
    return Dzi(
        width,
        height,
        int(root.get("TileSize", "254")),
        root.get("Format", "jpg"),
        math.ceil(math.log2(max(width, height))),
        re.sub(r"\.dzi$", "_files", dzi_url),
    )


async def tile_urls(
    session: aiohttp.ClientSession, info: dict[str, Any], wanted: int = 16
) -> list[str]:
    """URLs of a square block of (at most `wanted`) full-resolution tiles, each fetched once."""
    dzi = await read_dzi(session, str(info["zoom"]["dzi"]))
    width, height, tile_size, fmt, level = dzi.width, dzi.height, dzi.tile_size, dzi.fmt, dzi.top
    side = math.isqrt(wanted)
    cols = min(side, math.ceil(width / tile_size))
    rows = min(side, math.ceil(height / tile_size))
    urls = [f"{dzi.tiles}/{level}/{c}_{r}.{fmt}" for c in range(cols) for r in range(rows)]
    for url in urls:
        got = await timed_get(session, url)
        if got.status != 200:
            raise RuntimeError(f"tile {url}: {got.status}")
    return urls


async def warm_tiles(
    session: aiohttp.ClientSession, base_url: str, image_id: str, timeout: float
) -> list[str]:
    """View an image, wait until it is ready, and return cached tile URLs of it."""
    await timed_get(session, f"{base_url}/images/{image_id}")
    info = await wait_ready(session, base_url, image_id, timeout)
    return await tile_urls(session, info)


@dataclass
class LatencySample:
    latencies: list[float]
    errors: int
    elapsed: float

    @property
    def count(self) -> int:
        return len(self.latencies)

    def merge(self, other: LatencySample) -> LatencySample:
        return LatencySample(
            self.latencies + other.latencies,
            self.errors + other.errors,
            self.elapsed + other.elapsed,
        )

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    def describe(self) -> str:
        if not self.latencies:
            return f"no successful requests ({self.errors} errors)"
        return (
            f"{self.count} requests in {self.elapsed:.1f}s ({self.count / self.elapsed:.0f}/s), "
            f"p50 {self.p(50) * 1e3:.1f} ms, p99 {self.p(99) * 1e3:.1f} ms, "
            f"max {max(self.latencies) * 1e3:.1f} ms, {self.errors} errors"
        )


async def sample_latency(
    urls: Sequence[str],
    connections: int,
    max_requests: int,
    max_seconds: float,
    gap: float,
    stop: asyncio.Event | None = None,
) -> LatencySample:
    """`connections` keep-alive clients cycling over `urls`, each pausing `gap` s between requests.

    Ends at `max_requests`, after `max_seconds`, or when `stop` is set, whichever comes first.
    """
    latencies: list[float] = []
    errors = 0
    issued = itertools.count()
    started = time.monotonic()
    deadline = started + max_seconds
    connector = aiohttp.TCPConnector(limit=connections)

    def more() -> bool:
        return time.monotonic() < deadline and not (stop is not None and stop.is_set())

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal errors
        while more():
            n = next(issued)
            if n >= max_requests:
                return
            t = time.perf_counter()
            try:
                async with session.get(urls[n % len(urls)]) as response:
                    await response.read()
                    ok = response.status == 200
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            if ok:
                latencies.append(time.perf_counter() - t)
            else:
                errors += 1
            if gap > 0:
                await asyncio.sleep(gap)

    async with aiohttp.ClientSession(connector=connector, timeout=REQUEST_TIMEOUT) as session:
        await asyncio.gather(*(client(session) for _ in range(connections)))
    return LatencySample(latencies, errors, time.monotonic() - started)
