"""Figure 4 (a baseline, no target yet): cached tile requests/s at 64 keep-alive connections.

Our server, then a static server over the very same cache files, back to back, per reference:
nginx (one worker, sendfile; when installed) and a bare aiohttp FileResponse app (what our
routing, middleware and lookups cost). Uses `wrk` when installed, else an aiohttp generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlsplit

import aiohttp

from bench import loadgen
from bench.client import REQUEST_TIMEOUT, warm_tiles
from bench.images import TestSet
from bench.plan import Plan
from bench.report import Report, Row
from bench.servers import (
    BareStaticServer,
    ImgproxyServer,
    ManagedProcess,
    NginxServer,
    running,
    tile_route_root,
)


async def tile_throughput(plan: Plan, images: TestSet, origin_port: int, report: Report) -> None:
    tool = "wrk" if loadgen.have_wrk() else "aiohttp"
    conns = plan.load_connections
    async with running(ImgproxyServer("throughput", origin_port)) as server:
        async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
            urls = await warm_tiles(
                session, server.base_url, images.tiles.image_id, plan.ready_timeout
            )
        paths = [urlsplit(u).path for u in urls]
        shard_dir = tile_route_root(server.layout, images.tiles.image_id)
        references: list[tuple[str, ManagedProcess]] = []
        if NginxServer.available():
            references.append(("nginx", NginxServer("nginx", shard_dir)))
        references.append(("bare aiohttp", BareStaticServer("bare-static", shard_dir)))
        for name, ref_server in references:
            row = Row(
                f"4. cached tile req/s, {conns} keep-alive conns ({tool})",
                "req/s",
                reference_name=name,
            )
            try:
                note = await _compare(plan, server, ref_server, paths, name, row)
            except Exception as exc:
                row.error = f"{type(exc).__name__}: {exc}"
                note = ""
            report.add(row)
            if note:
                report.note(note)


async def _compare(
    plan: Plan,
    server: ImgproxyServer,
    ref_server: ManagedProcess,
    paths: Sequence[str],
    name: str,
    row: Row,
) -> str:
    """Ours then the reference, back to back; the reference must serve the same bytes."""
    conns, seconds = plan.load_connections, plan.load_seconds
    try:
        await ref_server.start()
        await _same_tile(server.base_url, ref_server.base_url, paths[0])
        ours = await loadgen.measure(server.base_url, paths, conns, seconds)
        theirs = await loadgen.measure(ref_server.base_url, paths, conns, seconds)
    finally:
        await ref_server.stop()
    row.ours, row.reference = ours.per_second, theirs.per_second
    return (
        f"figure 4 vs {name}: {len(paths)} tiles round-robin; ours {ours.requests} requests / "
        f"{ours.errors} errors, {name} {theirs.requests} / {theirs.errors}, "
        f"{seconds:.0f} s each after a {loadgen.WARMUP_SECONDS:.0f} s warm-up"
    )


async def _same_tile(ours_base: str, theirs_base: str, path: str) -> None:
    async with aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session:
        bodies = []
        for base in (ours_base, theirs_base):
            async with session.get(base + path) as response:
                if response.status != 200:
                    raise RuntimeError(f"{base}{path}: {response.status}")
                bodies.append(await response.read())
    if bodies[0] != bodies[1]:
        raise RuntimeError(f"{path}: the reference serves different bytes than ours")
