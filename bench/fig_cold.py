"""Figures 2, 3 and 5: cold views of distinct 24 MPix JPEGs from the loopback http origin.

For each image, on an otherwise idle server (the previous image is followed to `ready`):

- figure 5: time to the placeholder bytes of a cold `GET /images/{id}`, beside a bare pyvips
  thumbnail(32) + jpegsave_buffer of the same file;
- figure 2: the same placeholder time, beside thumbor's cold `/unsafe/1280x0/<url>` of the
  same file from the same origin (its own venv; HTTP loader, no storage, no result storage);
- figure 3: time from that cold GET until `GET /images/{id}?w=1280` is served as
  `X-Image-Stage: display` (made the moment /events announces display), beside the same
  thumbor figure.

The references and ours alternate in order image by image; ratios are the medians of the
per-image ratios. A detail line adds a burst: several distinct cold views at once on a fresh
server (more images than workers).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import aiohttp
import pyvips

from bench import install, reference
from bench.client import (
    BROWSER_ACCEPT,
    REQUEST_TIMEOUT,
    describe_stage_means,
    follow_events,
    stage_metrics,
    timed_get,
    wait_ready,
)
from bench.images import Original, TestSet
from bench.plan import Plan
from bench.report import Report, Row
from bench.servers import ImgproxyServer, ThumborServer, running
from imgproxy.images.negotiation import rendition_formats, rendition_widths
from imgproxy.settings import ProcessingSettings

COLD_TARGET_MS = 300.0
PLACEHOLDER_VS_THUMBOR = 0.5
DISPLAY_VS_THUMBOR = 1.5
DISPLAY_WIDTH = 1280
FLOOR_SAMPLES = 3  # images on which the bare display floors are timed (a detail line)


def _ms(seconds: float) -> float:
    return seconds * 1e3


def _spread(values: Sequence[float]) -> str:
    """min/median/max in ms."""
    return f"{_ms(min(values)):.0f}/{_ms(statistics.median(values)):.0f}/{_ms(max(values)):.0f} ms"


@dataclass
class ColdViews:
    ours: list[float] = field(default_factory=list)  # placeholder
    display: list[float] = field(default_factory=list)  # ?w=1280 served as display
    ready: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    thumbor: list[float] = field(default_factory=list)
    thumbor_widths: set[int] = field(default_factory=set)
    stages: str = ""  # the server's own mean time per stage
    one_rendition: list[float] = field(default_factory=list)  # bare: the 1280 JPEG alone
    all_renditions: list[float] = field(default_factory=list)  # bare: what display builds


@dataclass
class Thumbor:
    server: ThumborServer | None
    version: str = ""  # as `thumbor --version` prints it: "Thumbor v7.8.0 (…)"
    unavailable: str | None = None

    @property
    def name(self) -> str:
        words = self.version.split()
        return f"thumbor {words[1] if len(words) > 1 else ''}".strip()


def _rows(plan: Plan, count: int, thumbor_name: str) -> tuple[Row, Row, Row]:
    width, height = plan.cold_size
    size = f"{width}x{height} JPEG, http origin, median of {count}"
    placeholder = Row(
        f"2. time to placeholder, cold {size}",
        "ms",
        reference_name=thumbor_name,
        target=f"ratio <= {PLACEHOLDER_VS_THUMBOR}",
        check=lambda r: r.ratio is not None and r.ratio <= PLACEHOLDER_VS_THUMBOR,
    )
    display = Row(
        f"3. time to display (?w={DISPLAY_WIDTH} served), cold {size}",
        "ms",
        reference_name=thumbor_name,
        target=f"ratio <= {DISPLAY_VS_THUMBOR}",
        check=lambda r: r.ratio is not None and r.ratio <= DISPLAY_VS_THUMBOR,
    )
    first_view = Row(
        f"5. cold first view (placeholder), {size}",
        "ms",
        reference_name="bare thumbnail",
        target=f"<= {COLD_TARGET_MS:.0f} ms",
        check=lambda r: r.ours is not None and r.ours <= COLD_TARGET_MS,
    )
    return placeholder, display, first_view


def _paired(ours: Sequence[float], theirs: Sequence[float]) -> float | None:
    pairs = [o / t for o, t in zip(ours, theirs, strict=False) if t > 0]
    return statistics.median(pairs) if pairs else None


async def cold_first_view(plan: Plan, images: TestSet, origin_port: int, report: Report) -> None:
    thumbor = await _start_thumbor()
    placeholder, display, first_view = _rows(plan, len(images.cold), thumbor.name)
    views = ColdViews()
    try:
        await _one_by_one(plan, images.cold, origin_port, views, thumbor)
    except Exception as exc:
        placeholder.error = display.error = first_view.error = f"{type(exc).__name__}: {exc}"
    finally:
        if thumbor.server is not None:
            await thumbor.server.stop()
    if thumbor.unavailable is not None:
        placeholder.unavailable = display.unavailable = thumbor.unavailable
    if views.ours:
        first_view.ours = placeholder.ours = _ms(statistics.median(views.ours))
        first_view.reference = _ms(statistics.median(views.bare))
        first_view.paired_ratio = _paired(views.ours, views.bare)
    if views.display:
        display.ours = _ms(statistics.median(views.display))
    if views.thumbor:
        placeholder.reference = display.reference = _ms(statistics.median(views.thumbor))
        placeholder.paired_ratio = _paired(views.ours, views.thumbor)
        display.paired_ratio = _paired(views.display, views.thumbor)
    for row in (placeholder, display, first_view):
        report.add(row)
    if views.ours:
        mb = statistics.median(o.size_mb for o in images.cold)
        report.note(
            f"figures 2, 3, 5: {len(views.ours)} distinct {mb:.1f} MB JPEGs from a loopback http "
            f"origin, min/median/max: placeholder {_spread(views.ours)}, display (?w="
            f"{DISPLAY_WIDTH} served) {_spread(views.display) if views.display else '-'}, "
            f"ready {_spread(views.ready) if views.ready else '-'} after the cold GET; "
            f"bare thumbnail {_spread(views.bare)}; the server's mean per stage: {views.stages}"
            + (
                f"; thumbor /unsafe/{DISPLAY_WIDTH}x0 {_spread(views.thumbor)} (output widths "
                f"{sorted(views.thumbor_widths)})"
                if views.thumbor
                else ""
            )
        )
    if views.all_renditions:
        report.note(
            f"figure 3 floors (bare pyvips, no server, median of {len(views.all_renditions)} "
            f"images, decode included): one {DISPLAY_WIDTH} px JPEG "
            f"{_ms(statistics.median(views.one_rendition)):.0f} ms; every display width and "
            f"format (what the display stage builds, to buffers) "
            f"{_ms(statistics.median(views.all_renditions)):.0f} ms"
        )
    if thumbor.unavailable is not None:
        report.note(f"figures 2, 3: thumbor unavailable: {thumbor.unavailable}")
    elif thumbor.version:
        report.facts.append(("thumbor (reference)", thumbor.version))
        report.note(
            "figures 2, 3: thumbor runs as one process from bench/work/thumbor-venv with the "
            "HTTP loader on the same loopback origin, STORAGE no_storage, RESULT_STORAGE None, "
            f"QUALITY {ProcessingSettings().quality} (ours), PIL engine (JPEG draft mode); "
            "each file is requested once, so every thumbor request is cold"
        )
    try:
        report.note(await _burst(plan, images.cold[: plan.burst_count], origin_port))
    except Exception as exc:
        report.note(f"figure 5 burst: failed: {type(exc).__name__}: {exc}")


async def _start_thumbor() -> Thumbor:
    try:
        version = await asyncio.to_thread(install.ensure_thumbor)
    except install.Unavailable as exc:
        return Thumbor(None, unavailable=str(exc))
    server = ThumborServer("thumbor", install.thumbor_bin(), ProcessingSettings().quality)
    try:
        await server.start()
    except Exception as exc:
        await server.stop()
        return Thumbor(None, version, f"thumbor {version} did not start: {exc}")
    return Thumbor(server, version)


async def _one_by_one(
    plan: Plan,
    originals: Sequence[Original],
    origin_port: int,
    views: ColdViews,
    thumbor: Thumbor,
) -> None:
    async with (
        running(ImgproxyServer("cold", origin_port)) as server,
        aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
    ):
        for index, original in enumerate(originals):
            if index % 2 == 1:
                await _ours(plan, session, server, original, views)
            views.bare.append(await asyncio.to_thread(reference.thumbnail_seconds, original.path))
            if thumbor.server is not None:
                seconds, width = await _thumbor_view(session, thumbor.server, original, origin_port)
                views.thumbor.append(seconds)
                views.thumbor_widths.add(width)
            if index % 2 == 0:
                await _ours(plan, session, server, original, views)
        views.stages = describe_stage_means(await stage_metrics(session, server.base_url))
        settings = ProcessingSettings()
        widths = rendition_widths(originals[0].width, settings.widths)
        formats = rendition_formats(settings.formats, False)
        for original in originals[:FLOOR_SAMPLES]:
            views.one_rendition.append(
                await asyncio.to_thread(
                    reference.one_rendition_seconds, original.path, DISPLAY_WIDTH
                )
            )
            views.all_renditions.append(
                await asyncio.to_thread(
                    reference.all_renditions_seconds, original.path, widths, formats
                )
            )


async def _ours(
    plan: Plan,
    session: aiohttp.ClientSession,
    server: ImgproxyServer,
    original: Original,
    views: ColdViews,
) -> None:
    """A cold view, then /events followed to ready (display fetched as soon as announced)."""
    started = time.perf_counter()
    views.ours.append(await _cold_view(session, server, original))
    got = await follow_events(
        session, server.base_url, original.image_id, plan.ready_timeout, started, DISPLAY_WIDTH
    )
    if got.display_served is None:
        raise RuntimeError(f"{original.image_id}: ready without display being announced")
    views.display.append(got.display_served)
    views.ready.append(got.seen["ready"])


async def _thumbor_view(
    session: aiohttp.ClientSession, thumbor: ThumborServer, original: Original, origin_port: int
) -> tuple[float, int]:
    """Seconds until thumbor's whole cold 1280x0 JPEG arrived, and the width it has."""
    url = (
        f"{thumbor.base_url}/unsafe/{DISPLAY_WIDTH}x0/127.0.0.1:{origin_port}/{original.path.name}"
    )
    started = time.perf_counter()
    async with session.get(url) as response:
        body = await response.read()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"thumbor {url}: {response.status} {body[:200]!r}")
    width = int(pyvips.Image.new_from_buffer(body, "").width)
    return seconds, width


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
        f"figure 5 burst (detail, no target): {len(originals)} distinct cold views at once, "
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
