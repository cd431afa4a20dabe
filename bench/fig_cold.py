"""Figure 1: time to the placeholder bytes of a cold `GET /images/{id}` (24 MPix JPEGs from the
loopback http origin), beside a bare pyvips thumbnail(32) + jpegsave_buffer of the same files.

Each image is viewed on an otherwise idle server (the previous one is waited to `ready`), the
reference and ours alternating image by image. A detail line adds a burst: several distinct
cold views at once on a fresh server (more images than workers).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp

from bench import reference
from bench.client import BROWSER_ACCEPT, REQUEST_TIMEOUT, Progress, timed_get, wait_ready
from bench.images import Original, TestSet
from bench.plan import Plan
from bench.report import Report, Row
from bench.servers import ImgproxyServer, running

COLD_TARGET_MS = 300.0


def _ms(seconds: float) -> float:
    return seconds * 1e3


def _spread(values: Sequence[float]) -> str:
    """min/median/max in ms."""
    return f"{_ms(min(values)):.0f}/{_ms(statistics.median(values)):.0f}/{_ms(max(values)):.0f} ms"


@dataclass
class ColdViews:
    ours: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    ready_after: list[float] = field(default_factory=list)


async def cold_first_view(plan: Plan, images: TestSet, origin_port: int, report: Report) -> None:
    width, height = plan.cold_size
    row = Row(
        f"1. cold first view, {width}x{height} JPEG, median of {len(images.cold)}",
        "ms",
        reference_name="bare thumbnail",
        target=f"<= {COLD_TARGET_MS:.0f} ms",
        check=lambda r: r.ours is not None and r.ours <= COLD_TARGET_MS,
    )
    views = ColdViews()
    try:
        await _one_by_one(plan, images.cold, origin_port, views)
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {exc}"
    if views.ours:
        row.ours = _ms(statistics.median(views.ours))
        row.reference = _ms(statistics.median(views.bare))
    report.add(row)
    if views.ours:
        mb = statistics.median(o.size_mb for o in images.cold)
        report.note(
            f"figure 1: {len(views.ours)} distinct {mb:.1f} MB JPEGs from a loopback http "
            f"origin, min/median/max: ours {_spread(views.ours)}, bare thumbnail "
            f"{_spread(views.bare)}; each image then became ready "
            f"{statistics.median(views.ready_after):.1f} s (median) after its placeholder"
        )
    try:
        report.note(await _burst(plan, images.cold[: plan.burst_count], origin_port))
    except Exception as exc:
        report.note(f"figure 1 burst: failed: {type(exc).__name__}: {exc}")


async def _one_by_one(
    plan: Plan, originals: Sequence[Original], origin_port: int, views: ColdViews
) -> None:
    async with (
        running(ImgproxyServer("cold", origin_port)) as server,
        aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
    ):
        for original in originals:
            views.bare.append(await asyncio.to_thread(reference.thumbnail_seconds, original.path))
            views.ours.append(await _cold_view(session, server, original))
            progress = Progress()
            await wait_ready(
                session, server.base_url, original.image_id, plan.ready_timeout, progress
            )
            views.ready_after.append(progress.changes[-1][0])


async def _burst(plan: Plan, originals: Sequence[Original], origin_port: int) -> str:
    """Distinct cold views all at once: the later placeholders wait for free workers."""
    async with (
        running(ImgproxyServer("cold-burst", origin_port)) as server,
        aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
    ):
        times = await asyncio.gather(*(_cold_view(session, server, o) for o in originals))
        started = time.perf_counter()
        waits = [
            wait_ready(session, server.base_url, o.image_id, plan.burst_timeout) for o in originals
        ]
        outcomes = await asyncio.gather(*waits, return_exceptions=True)
        all_ready = time.perf_counter() - started
    ordered = ", ".join(f"{_ms(t):.0f}" for t in sorted(times))
    stuck = [str(o) for o in outcomes if isinstance(o, BaseException)]
    ready = (
        f"all ready {all_ready:.1f} s later"
        if not stuck
        else f"{len(stuck)} of {len(originals)} NOT ready within {plan.burst_timeout:.0f} s "
        f"(first: {stuck[0]}; see bench/work/logs/cold-burst.log)"
    )
    return (
        f"figure 1 burst (detail, no target): {len(originals)} distinct cold views at once, "
        f"{server.workers} workers: placeholders after {ordered} ms; {ready}"
    )


async def _cold_view(
    session: aiohttp.ClientSession, server: ImgproxyServer, original: Original
) -> float:
    """Seconds until the whole placeholder body of a cold GET /images/{id} arrived."""
    url = f"{server.base_url}/images/{original.image_id}"
    got = await timed_get(session, url, {"Accept": BROWSER_ACCEPT})
    stage = got.headers.get("X-Image-Stage")
    if got.status != 200 or stage != "placeholder":
        raise RuntimeError(f"cold GET {original.image_id}: {got.status}, X-Image-Stage {stage}")
    return got.seconds
