"""Figures 4 and 8: cached serving at 64 keep-alive connections, and the server's memory.

Figure 4: a few cold-set images are made ready on a fresh server; every tile of their
pyramids (>= 1,000 distinct URLs) rotates through a wrk Lua script, then every rendition
(each width and format). Our server, then nginx (one worker, sendfile on) serving the very
same files from the same cache directory, back to back; p99 latency from wrk --latency. A
bare aiohttp FileResponse app over the same files is a baseline without target (what our
routing, middleware and lookups cost). Uses `wrk` (installed by the bench when missing),
else an aiohttp generator.

Figure 8: the server's resident set size (VmRSS, with any child processes) right after
start-up, and after figure 4's load, beside the bare aiohttp app's at the same points.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bench import loadgen
from bench.client import BROWSER_ACCEPT, REQUEST_TIMEOUT, read_dzi, timed_get, wait_ready
from bench.images import Original, TestSet
from bench.plan import Plan
from bench.report import Report, Row
from bench.servers import (
    BareStaticServer,
    ImgproxyServer,
    NginxServer,
    rss_kib,
    running,
    shard_map,
    vm_hwm_kib,
)

THROUGHPUT_RATIO_TARGET = 0.5
MIN_TILE_URLS = 1000
RSS_TARGET_MB = 250.0
SETTLE_SECONDS = 1.0  # after start-up, before the idle RSS is read
CHECK_CONCURRENCY = 8


def _mb(kib: int) -> float:
    return kib * 1024 / 1e6


@dataclass(frozen=True)
class Urls:
    tiles: list[str]  # paths
    renditions: list[str]


async def _dzi_tiles(session: aiohttp.ClientSession, dzi_url: str) -> list[str]:
    """Every tile URL of every level of a DeepZoom pyramid."""
    dzi = await read_dzi(session, dzi_url)
    width, height, tile_size, fmt, top, base = (
        dzi.width, dzi.height, dzi.tile_size, dzi.fmt, dzi.top, dzi.tiles
    )  # fmt: skip
    urls = []
    for level in range(top + 1):
        scale = 2 ** (top - level)
        w, h = math.ceil(width / scale), math.ceil(height / scale)
        cols, rows = math.ceil(w / tile_size), math.ceil(h / tile_size)
        urls += [f"{base}/{level}/{c}_{r}.{fmt}" for c in range(cols) for r in range(rows)]
    return urls


def _rendition_urls(info: dict[str, Any]) -> list[str]:
    template = str(info["renditions"]["url"])
    return [
        template.replace("{width}", str(w)).replace("{format}", f)
        for w in info["renditions"]["widths"]
        for f in info["renditions"]["formats"]
    ]


async def _check_all(session: aiohttp.ClientSession, urls: Sequence[str]) -> None:
    """Fetch each URL once (so all exist, and are cached): any non-200 is an error."""
    queue = list(urls)

    async def worker() -> None:
        while queue:
            url = queue.pop()
            got = await timed_get(session, url, {"Accept": BROWSER_ACCEPT})
            if got.status != 200:
                raise RuntimeError(f"{url}: {got.status}")

    await asyncio.gather(*(worker() for _ in range(CHECK_CONCURRENCY)))


async def _warm(plan: Plan, server: ImgproxyServer, originals: Sequence[Original]) -> Urls:
    """View the images, wait until all are ready, and list their cached tile/rendition paths."""
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for original in originals:
            await timed_get(session, f"{server.base_url}/images/{original.image_id}")
        infos = await asyncio.gather(
            *(
                wait_ready(session, server.base_url, o.image_id, plan.ready_timeout)
                for o in originals
            )
        )
        tiles: list[str] = []
        renditions: list[str] = []
        for info in infos:
            tiles += await _dzi_tiles(session, str(info["zoom"]["dzi"]))
            renditions += _rendition_urls(info)
        await _check_all(session, tiles + renditions)
    if len(tiles) < MIN_TILE_URLS:
        raise RuntimeError(f"only {len(tiles)} tile URLs (< {MIN_TILE_URLS}): add serve_images")
    return Urls([urlsplit(u).path for u in tiles], [urlsplit(u).path for u in renditions])


def _rows(plan: Plan, urls_note: str, tool: str) -> dict[str, Row]:
    conns = plan.load_connections
    secs = f"{plan.load_seconds:.0f} s"
    ratio_target = f"ratio >= {THROUGHPUT_RATIO_TARGET}"

    def at_least(r: Row) -> bool:
        return r.ratio is not None and r.ratio >= THROUGHPUT_RATIO_TARGET

    def small(r: Row) -> bool:
        return r.ours is not None and r.ours <= RSS_TARGET_MB

    return {
        "tiles": Row(
            f"4. cached tiles req/s, {urls_note}, {conns} conns ({tool} {secs})",
            "req/s",
            reference_name="nginx",
            target=ratio_target,
            check=at_least,
        ),
        "tiles_p99": Row(
            f"4. cached tiles p99 latency (same runs), {conns} conns", "ms", reference_name="nginx"
        ),
        "renditions": Row(
            f"4. cached renditions req/s, {conns} conns ({tool} {plan.side_load_seconds:.0f} s)",
            "req/s",
            reference_name="nginx",
            target=ratio_target,
            check=at_least,
        ),
        "bare": Row(
            f"4. cached tiles req/s, {conns} conns ({tool} {plan.side_load_seconds:.0f} s)",
            "req/s",
            reference_name="bare aiohttp",
        ),
        "rss_idle": Row(
            "8. server RSS after start-up (idle)",
            "MB",
            reference_name="bare aiohttp",
            target=f"<= {RSS_TARGET_MB:.0f} MB",
            check=small,
        ),
        "rss_served": Row(
            "8. server RSS after figure 4's load",
            "MB",
            reference_name="bare aiohttp",
            target=f"<= {RSS_TARGET_MB:.0f} MB",
            check=small,
        ),
    }


async def tile_throughput(plan: Plan, images: TestSet, origin_port: int, report: Report) -> None:
    tool = "wrk" if loadgen.have_wrk() else "aiohttp"
    originals = images.cold[: plan.serve_images]
    rows = _rows(plan, "all tiles of {n} images rotating", tool)
    notes: list[str] = []
    try:
        await _measure(plan, origin_port, originals, rows, notes, tool)
    except Exception as exc:
        for row in rows.values():
            if row.ours is None and row.error is None:
                row.error = f"{type(exc).__name__}: {exc}"
    for row in rows.values():
        report.add(row)
    for note in notes:
        report.note(note)


async def _measure(
    plan: Plan,
    origin_port: int,
    originals: Sequence[Original],
    rows: dict[str, Row],
    notes: list[str],
    tool: str,
) -> None:
    conns, seconds, side = plan.load_connections, plan.load_seconds, plan.side_load_seconds
    async with running(ImgproxyServer("throughput", origin_port)) as server:
        await asyncio.sleep(SETTLE_SECONDS)
        rows["rss_idle"].ours = _mb(rss_kib(server.pid))
        urls = await _warm(plan, server, originals)
        warm_mb = _mb(rss_kib(server.pid))
        rows["tiles"].figure = rows["tiles"].figure.replace(
            "all tiles of {n} images rotating",
            f"{len(urls.tiles)} tile URLs rotating ({len(originals)} images)",
        )
        shards = shard_map(server.layout, [o.image_id for o in originals])
        cache_root = server.layout.root
        bare = BareStaticServer("bare-static", cache_root)
        try:
            await bare.start()
            await asyncio.sleep(SETTLE_SECONDS)
            rows["rss_idle"].reference = _mb(rss_kib(bare.pid))
            await _same_bytes(server.base_url, bare.base_url, [urls.tiles[-1], urls.renditions[0]])
            ours_bare = await loadgen.measure(server.base_url, urls.tiles, conns, side)
            theirs_bare = await loadgen.measure(bare.base_url, urls.tiles, conns, side)
            rows["rss_served"].reference = _mb(rss_kib(bare.pid))
        finally:
            await bare.stop()
        _fill(rows["bare"], ours_bare, theirs_bare)
        notes.append(
            f"figure 4 vs bare aiohttp (tiles): ours {ours_bare.describe()}; bare aiohttp "
            f"{theirs_bare.describe()}"
        )
        if not NginxServer.available():
            for key in ("tiles", "tiles_p99", "renditions"):
                rows[key].unavailable = "nginx is not installed (apt-get install nginx failed)"
            ours_tiles = await loadgen.measure(server.base_url, urls.tiles, conns, seconds)
            ours_rend = await loadgen.measure(server.base_url, urls.renditions, conns, side)
            rows["tiles"].ours = ours_tiles.per_second
            rows["renditions"].ours = ours_rend.per_second
            rows["tiles_p99"].ours = None if ours_tiles.p99 is None else ours_tiles.p99 * 1e3
        else:
            nginx = NginxServer("nginx", cache_root, shards)
            try:
                await nginx.start()
                await _same_bytes(
                    server.base_url, nginx.base_url, [urls.tiles[-1], urls.renditions[0]]
                )
                ours_tiles = await loadgen.measure(server.base_url, urls.tiles, conns, seconds)
                nginx_tiles = await loadgen.measure(nginx.base_url, urls.tiles, conns, seconds)
                ours_rend = await loadgen.measure(server.base_url, urls.renditions, conns, side)
                nginx_rend = await loadgen.measure(nginx.base_url, urls.renditions, conns, side)
            finally:
                await nginx.stop()
            _fill(rows["tiles"], ours_tiles, nginx_tiles)
            _fill(rows["renditions"], ours_rend, nginx_rend)
            if ours_tiles.p99 is not None and nginx_tiles.p99 is not None:
                rows["tiles_p99"].ours = ours_tiles.p99 * 1e3
                rows["tiles_p99"].reference = nginx_tiles.p99 * 1e3
            notes += [
                f"figure 4 tiles: {len(urls.tiles)} distinct tile URLs (every level of "
                f"{len(originals)} {originals[0].width}x{originals[0].height} pyramids) rotating, "
                f"{conns} keep-alive connections, {seconds:.0f} s each after a "
                f"{loadgen.WARMUP_SECONDS:.0f} s warm-up: ours {ours_tiles.describe()}; nginx "
                f"{nginx_tiles.describe()}",
                f"figure 4 renditions: {len(urls.renditions)} rendition URLs (every width and "
                f"format) rotating: ours {ours_rend.describe()}; nginx {nginx_rend.describe()}",
            ]
        rows["rss_served"].ours = _mb(rss_kib(server.pid))
        notes.append(
            f"figure 8: VmRSS of the server (and any children) {rows['rss_idle'].ours:.0f} MB "
            f"{SETTLE_SECONDS:.0f} s after start-up, {warm_mb:.0f} MB once {len(originals)} "
            f"images were made ready (both at once), {rows['rss_served'].ours:.0f} MB after "
            f"figure 4's load; peak (VmHWM) "
            f"{_mb(vm_hwm_kib(server.pid)):.0f} MB; the bare aiohttp app (no pyvips) is the "
            "reference at the same points"
        )


def _fill(row: Row, ours: loadgen.Throughput, theirs: loadgen.Throughput) -> None:
    row.ours, row.reference = ours.per_second, theirs.per_second
    if ours.errors or theirs.errors:
        row.error = f"{ours.errors} errors ours, {theirs.errors} errors reference"


async def _same_bytes(ours_base: str, theirs_base: str, paths: Sequence[str]) -> None:
    """The reference must serve the same bytes as ours for the same URL."""
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        for path in paths:
            bodies = []
            for base in (ours_base, theirs_base):
                async with session.get(base + path, headers={"Accept": BROWSER_ACCEPT}) as got:
                    if got.status != 200:
                        raise RuntimeError(f"{base}{path}: {got.status}")
                    bodies.append(await got.read())
            if bodies[0] != bodies[1]:
                raise RuntimeError(f"{path}: the reference serves different bytes than ours")
