"""Figure 1 (and 1b) on the big (250 MPix; quick: 61 MPix) original, file origin.

Figure 1: from the first `GET /images/{id}` until info.json says `ready` (placeholder, every
width and format, DeepZoom pyramid), beside a bare pyvips dzsave of the same file in its own
process; and the peak RSS (VmHWM) of each. Each run has a fresh server, and the order of
ours and the reference alternates between runs; the figure is the median over runs.

Figure 1b: p99 latency of already-cached tiles (a small image made ready first) while the big
image processes, beside the same requests on the idle server. These runs are separate from
figure 1's, so the tile traffic does not slow the pipeline being timed.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from bench import reference
from bench.client import (
    BROWSER_ACCEPT,
    REQUEST_TIMEOUT,
    LatencySample,
    Progress,
    Timed,
    sample_latency,
    timed_get,
    wait_ready,
    warm_tiles,
)
from bench.images import Original, TestSet
from bench.plan import WORK_DIR, Plan
from bench.report import Report, Row
from bench.servers import ImgproxyServer, cpu_seconds, running, vm_hwm_kib

PIPELINE_RATIO_TARGET = 1.3
RSS_TARGET_MIB = 1024.0
TILE_P99_TARGET_MS = 50.0


@dataclass(frozen=True)
class OursRun:
    seconds: float
    cores: float  # average CPU cores the server used meanwhile
    first: Timed  # the first GET (the placeholder)
    timeline: str


@dataclass(frozen=True)
class PipelineRun:
    ours: OursRun
    ours_hwm_kib: int
    ours_tiles: int
    stages: str
    bare: reference.DzReference


def _rows(plan: Plan, big: Original) -> tuple[Row, Row, Row]:
    mpix = f"{big.megapixels:.0f} MPix"
    runs = plan.pipeline_runs
    time_row = Row(
        f"1. whole pipeline, {big.width}x{big.height} ({mpix}), {_runs(runs, 'paired run')}",
        "s",
        reference_name="bare dzsave",
        target=f"ratio <= {PIPELINE_RATIO_TARGET}",
        check=lambda r: r.ratio is not None and r.ratio <= PIPELINE_RATIO_TARGET,
    )
    rss_row = Row(
        f"1. peak RSS (VmHWM) of the server, max over {_runs(runs, 'run')}",
        "MiB",
        reference_name="bare dzsave",
        target=f"<= {RSS_TARGET_MIB:.0f} MiB",
        check=lambda r: r.ours is not None and r.ours <= RSS_TARGET_MIB,
    )
    p99_row = Row(
        f"1b. cached tile p99 while {mpix} processes, {plan.tile_connections} conns",
        "ms",
        reference_name="idle server",
        target=f"<= {TILE_P99_TARGET_MS:.0f} ms",
        check=lambda r: r.ours is not None and r.ours <= TILE_P99_TARGET_MS,
    )
    return time_row, rss_row, p99_row


def _runs(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pacing(plan: Plan) -> str:
    if plan.tile_gap <= 0:
        return "closed loop"
    return f"{plan.tile_gap * 1e3:.0f} ms pause per connection"


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


async def pipeline_figures(plan: Plan, images: TestSet, origin_port: int, report: Report) -> None:
    time_row, rss_row, p99_row = _rows(plan, images.big)
    notes: list[str] = []
    try:
        runs = [
            await _pipeline_run(plan, images.big, origin_port, i) for i in range(plan.pipeline_runs)
        ]
        time_row.ours = statistics.median(r.ours.seconds for r in runs)
        time_row.reference = statistics.median(r.bare.seconds for r in runs)
        time_row.paired_ratio = statistics.median(r.ours.seconds / r.bare.seconds for r in runs)
        rss_row.ours = max(r.ours_hwm_kib for r in runs) / 1024
        rss_row.reference = max(r.bare.vm_hwm_kib for r in runs) / 1024
        notes += _pipeline_notes(images.big, runs)
    except Exception as exc:
        time_row.error = rss_row.error = _error(exc)
    try:
        idle, busy, seconds = await _loaded_runs(plan, images, origin_port)
        p99_row.ours = busy.p(99) * 1e3
        p99_row.reference = idle.p(99) * 1e3
        notes += [
            f"figure 1b idle server ({plan.tile_connections} conns, {_pacing(plan)}): "
            f"{idle.describe()}",
            f"figure 1b while processing ({plan.tile_connections} conns, {_pacing(plan)}; "
            f"the big pipeline took "
            f"{', '.join(f'{s:.2f}' for s in seconds)} s under this load): {busy.describe()}",
        ]
    except Exception as exc:
        p99_row.error = _error(exc)
    for row in (time_row, rss_row, p99_row):
        report.add(row)
    for note in notes:
        report.note(note)


def _pipeline_notes(big: Original, runs: Sequence[PipelineRun]) -> list[str]:
    notes = [
        f"figure 1: {big.size_mb:.0f} MB original via the file origin; the first GET answered "
        f"{runs[0].ours.first.status} {runs[0].ours.first.headers.get('X-Image-Stage', '-')} "
        f"in {runs[0].ours.first.seconds * 1e3:.0f} ms (median "
        f"{statistics.median(r.ours.first.seconds for r in runs) * 1e3:.0f} ms)"
    ]
    for i, run in enumerate(runs, 1):
        notes.append(
            f"figure 1 run {i}: ours {run.ours.seconds:.2f} s using {run.ours.cores:.2f} cores "
            f"on average, bare dzsave {run.bare.seconds:.2f} s using {run.bare.cores:.2f} cores "
            f"(ratio {run.ours.seconds / run.bare.seconds:.2f}); "
            f"status timeline {run.ours.timeline}; server stage totals {run.stages}; "
            f"VmHWM ours {run.ours_hwm_kib / 1024:.0f} MiB, bare {run.bare.vm_hwm_kib / 1024:.0f} MiB"
        )
    ratios = sorted(r.ours.seconds / r.bare.seconds for r in runs)
    notes.append(
        f"figure 1 paired ratios (each run's ours / its own reference, the table's ratio is "
        f"their median): {', '.join(f'{x:.3f}' for x in ratios)}; times in the table are the "
        "medians of each side"
    )
    notes.append(
        f"figure 1 pyramid: ours {runs[0].ours_tiles} tiles, bare dzsave {runs[0].bare.tiles} tiles"
    )
    return notes


async def _pipeline_run(plan: Plan, big: Original, origin_port: int, index: int) -> PipelineRun:
    """One fresh server; ours and the bare dzsave one after the other (order alternates)."""
    async with (
        running(ImgproxyServer(f"pipeline-{index}", origin_port)) as server,
        aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
    ):
        if index % 2 == 0:
            bare = await _bare(plan, big)
            ours, hwm, stages = await _ours(plan, session, server, big)
        else:
            ours, hwm, stages = await _ours(plan, session, server, big)
            bare = await _bare(plan, big)
        tiles_dir = server.layout.tiles_dir(big.image_id, 1)
        tiles = await asyncio.to_thread(reference.count_tiles, tiles_dir)
    return PipelineRun(ours, hwm, tiles, stages, bare)


async def _ours(
    plan: Plan, session: aiohttp.ClientSession, server: ImgproxyServer, big: Original
) -> tuple[OursRun, int, str]:
    ours = await _view_until_ready(plan, session, server, big)
    return ours, vm_hwm_kib(server.pid), await _stage_seconds(session, server)


async def _bare(plan: Plan, big: Original) -> reference.DzReference:
    return await reference.dzsave_reference(big.path, WORK_DIR / "ref-dzsave", plan.big_timeout)


async def _view_until_ready(
    plan: Plan, session: aiohttp.ClientSession, server: ImgproxyServer, original: Original
) -> OursRun:
    """Timed from the first GET /images/{id} until info.json says ready (polled every 0.1 s)."""
    cpu_before = cpu_seconds(server.pid)
    progress = Progress()
    first = await timed_get(
        session, f"{server.base_url}/images/{original.image_id}", {"Accept": BROWSER_ACCEPT}
    )
    await wait_ready(session, server.base_url, original.image_id, plan.big_timeout, progress)
    elapsed = time.perf_counter() - progress.started
    cores = (cpu_seconds(server.pid) - cpu_before) / elapsed
    return OursRun(elapsed, cores, first, progress.describe())


async def _stage_seconds(session: aiohttp.ClientSession, server: ImgproxyServer) -> str:
    """The server's own per-stage totals from /metrics (imgproxy_stage_seconds_sum)."""
    async with session.get(f"{server.base_url}/metrics") as response:
        text = await response.text()
    totals = []
    for line in text.splitlines():
        if line.startswith('imgproxy_stage_seconds_sum{stage="'):
            stage = line.split('"')[1]
            totals.append(f"{stage} {float(line.rsplit(' ', 1)[1]):.2f}s")
    return ", ".join(totals) or "none"


async def _loaded_runs(
    plan: Plan, images: TestSet, origin_port: int
) -> tuple[LatencySample, LatencySample, list[float]]:
    idle = busy = LatencySample([], 0, 0.0)
    seconds: list[float] = []
    for index in range(plan.loaded_runs):
        run_idle, run_busy, elapsed = await _loaded_run(plan, images, origin_port, index)
        idle, busy = idle.merge(run_idle), busy.merge(run_busy)
        seconds.append(elapsed)
    return idle, busy, seconds


async def _loaded_run(
    plan: Plan, images: TestSet, origin_port: int, index: int
) -> tuple[LatencySample, LatencySample, float]:
    """Fresh server: make the small image ready, sample its tiles idle, then while the big runs."""
    async with (
        running(ImgproxyServer(f"loaded-{index}", origin_port)) as server,
        aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
    ):
        urls = await warm_tiles(session, server.base_url, images.tiles.image_id, plan.ready_timeout)
        idle = await _sample(plan, urls, plan.tile_idle_requests)
        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(plan, urls, plan.tile_busy_max_requests, stop))
        try:
            ours = await _view_until_ready(plan, session, server, images.big)
        finally:
            stop.set()
            busy = await sampler
    return idle, busy, ours.seconds


async def _sample(
    plan: Plan, urls: Sequence[str], max_requests: int, stop: asyncio.Event | None = None
) -> LatencySample:
    return await sample_latency(
        urls, plan.tile_connections, max_requests, plan.big_timeout, plan.tile_gap, stop
    )
