"""Running one job: fetch the original, then build and publish each stage in order.

request -> resolve -> fetch -> process -> store -> serve: this is the fetch..store part.
Every stage is published the moment its files are in place; stages already built (a job
resumed after a crash) are not built again.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from imgproxy.cache.disk import remove
from imgproxy.cache.layout import CacheLayout
from imgproxy.images.negotiation import choose_width, rendition_formats, rendition_widths
from imgproxy.images.service import ImageService
from imgproxy.metadata.store import BULK, VIEWER, ImageRecord, Job, MetadataStore, StoreError
from imgproxy.metrics import Metrics
from imgproxy.origins.base import NotFound, Origin, TooLarge, Unavailable
from imgproxy.origins.registry import pull, pull_url
from imgproxy.origins.sources import SourceFetcher
from imgproxy.processing import pipeline
from imgproxy.processing.pool import ProcessingPool
from imgproxy.settings import Settings

log = logging.getLogger(__name__)


async def _nothing(_image_id: str) -> None:
    return None


RETIRE_GRACE = 60.0  # seconds an old version's files outlive the switch
EARLY_PYRAMID_PIXELS = 40_000_000  # from this size the pyramid starts beside the placeholder


@dataclass
class JobContext:
    settings: Settings
    store: MetadataStore
    service: ImageService
    layout: CacheLayout
    pool: ProcessingPool
    origins: list[Origin]
    metrics: Metrics
    fetcher: SourceFetcher
    # Set by the runtime: wake the workers, and schedule an old version's removal.
    on_released: Callable[[], None] = lambda: None
    retire: Callable[[str, int], None] = lambda image_id, version: None
    measure: Callable[[str], Awaitable[None]] = _nothing


class JobFailed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


Admit = Callable[[int, int, int], bool]  # (bytes, width, height) -> build here and now?


async def run_job(
    ctx: JobContext, job: Job, admit: Admit | None = None, through: str = "zoom"
) -> str:
    """Run a claimed job and settle it in the queue; returns what happened.

    "done": ready, or ended in error (the job is removed either way). "deferred": `admit`
    refused after the fetch, or "partial": built through "display" only (asked, or deferring
    the pyramid to other jobs waiting at the same or a more urgent priority); in both the job
    goes back to the queue for a worker to finish (the fetched original is reused).
    CancelledError (shutdown) is not caught: the job stays queued and resumes later.
    """
    image_id = job.image_id
    outcome = "done"
    try:
        async with asyncio.timeout(ctx.settings.processing.job_timeout):
            outcome = await _build(ctx, job, admit, through)
    except TimeoutError:
        # The pool thread finishes on its own; the image is marked failed now and a later
        # view retries (status `unknown` is retryable).
        limit = ctx.settings.processing.job_timeout
        log.error("image %s: job took longer than %.0fs; abandoned", image_id, limit)
        await _fail(ctx, image_id, "unknown", f"processing took longer than {limit:.0f}s")
    except JobFailed as exc:
        if await ctx.store.get_image(image_id) is None:  # deleted under our feet: not a failure
            log.info("image %s: deleted while being processed", image_id)
        else:
            log.warning("image %s: %s (%s)", image_id, exc.code, exc.detail)
            ctx.metrics.inc("imgproxy_image_errors_total", kind=exc.code)
            await _fail(ctx, image_id, exc.code, exc.detail)
    except _Vanished:
        log.info("image %s: gone (no origin has it, or it was deleted)", image_id)
    except StoreError as exc:
        log.error("image %s: metadata store failed: %s", image_id, exc)
        await _fail(ctx, image_id, "statusUpdateError", "the metadata store failed")
    except Exception:
        log.exception("image %s: unexpected failure", image_id)
        await _fail(ctx, image_id, "unknown", "internal error while processing")
    try:
        if outcome == "done":
            await ctx.store.finish_job(image_id)
        else:
            await ctx.store.release_job(image_id)
            ctx.on_released()
    except StoreError as exc:
        log.error("image %s: cannot settle its job: %s", image_id, exc)
    if await ctx.service.publish(image_id) is not None:
        try:
            await ctx.measure(image_id)
        except StoreError as exc:
            log.error("image %s: cannot record its cache size: %s", image_id, exc)
    return outcome


class _Vanished(Exception):
    """A view-created image no origin has: it was deleted, nothing is left behind."""


async def _fail(ctx: JobContext, image_id: str, code: str, detail: str) -> None:
    try:
        await ctx.store.set_status(image_id, "error", error=code, detail=detail[:500])
    except StoreError as exc:
        log.error("image %s: cannot record error %s: %s", image_id, code, exc)


async def _status(ctx: JobContext, image_id: str, status: str, origin: str | None = None) -> None:
    await ctx.store.set_status(image_id, status, origin=origin)
    await _publish(ctx, image_id)


async def _publish(ctx: JobContext, image_id: str) -> None:
    """Publish a change; stop the job if the image was deleted meanwhile (an API delete)."""
    if await ctx.service.publish(image_id) is None:
        await asyncio.to_thread(remove, ctx.layout.image_dir(image_id))
        raise _Vanished(image_id)


async def _build(ctx: JobContext, job: Job, admit: Admit | None, through: str) -> str:
    store, layout, pool, settings = ctx.store, ctx.layout, ctx.pool, ctx.settings
    image_id, version = job.image_id, job.version
    record = await store.get_image(image_id)
    if record is None:
        return "done"
    served = record.version
    current = await store.get_version(image_id, version)
    original = layout.original(image_id)
    started = time.monotonic()

    # fetch: a new version always pulls again; a resumed one reuses a complete original.
    if current is None or current.width is None or not original.exists():
        await _status(ctx, image_id, "downloading")
        await _fetch(ctx, record, original)
        ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - started, stage="download")
        try:
            info = await pool.run(pipeline.probe, original, settings.limits.max_pixels)
        except pipeline.InvalidImage as exc:
            raise JobFailed("invalidImage", str(exc)) from exc
        await store.set_size(image_id, version, info.width, info.height, info.has_alpha)
        current = await store.get_version(image_id, version)
        assert current is not None and current.width is not None
    if admit is not None and current.height is not None:
        size = original.stat().st_size
        if not admit(size, current.width, current.height):
            return "deferred"
    await _status(ctx, image_id, "processing")
    width, has_alpha = current.width, current.has_alpha
    assert width is not None
    p = settings.processing
    vdir = layout.version_dir(image_id, version)
    is_new_version = version != served

    widths = rendition_widths(width, p.widths)
    formats = rendition_formats(p.formats, has_alpha)
    need_display = not (
        current.display and _renditions_exist(layout, image_id, version, widths, formats)
    )
    need_zoom = not (current.zoom and layout.dzi(image_id, version).exists())

    # A viewer is waiting: the width it asks for by default comes first, built beside the
    # placeholder on the other core, and the display stage is published as soon as it is in
    # place; the other widths follow. Until they land, a request for one of them builds it on
    # request from the original (images/renditions.py), so every width is usable from then on.
    # (Not for a huge image: one more decode of it costs more than it saves.)
    huge = width * (current.height or 0) >= EARLY_PYRAMID_PIXELS
    first_width = choose_width(widths, settings.viewer.default_width, 1.0)
    rest = [w for w in widths if w != first_width]
    split = job.priority == VIEWER and need_display and bool(rest) and not huge
    # Nobody waits for the placeholder alone (a hook, a migration): it comes from the display
    # decode instead of one of its own, and is published just before the display.
    placeholder_path = layout.placeholder(image_id, version)
    need_placeholder = not (current.placeholder and placeholder_path.exists())
    combined = need_placeholder and need_display and job.priority != VIEWER

    async def renditions(
        ws: list[int], encode_in_parallel: bool = False, with_placeholder: bool = False
    ) -> None:
        await pool.run(
            pipeline.build_renditions,
            original,
            functools.partial(layout.rendition, image_id, version),
            ws,
            formats,
            p.quality,
            encode_in_parallel,
            (placeholder_path, p.placeholder_width) if with_placeholder else None,
        )

    async def placeholder_built() -> None:
        await store.set_stage(image_id, version, "placeholder")
        await _publish(ctx, image_id)

    async def display_built() -> None:
        # Viewers switch to a new version only now that it has everything the old one showed.
        await store.set_stage(image_id, version, "display", switch=True)
        await _publish(ctx, image_id)
        if is_new_version:
            ctx.retire(image_id, served)

    async def display(first: asyncio.Future[None] | None, then: Callable[[], None]) -> None:
        """Build and publish the display stage; `then` runs once it is published."""
        t = time.monotonic()
        if first is not None:
            await first
            await display_built()
            then()
            await renditions(rest)
        else:
            await renditions(widths, with_placeholder=combined)
            if combined:
                await placeholder_built()
            await display_built()
            then()
        ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - t, stage="display")

    async def tiles() -> None:
        t = time.monotonic()
        await pool.run(
            pipeline.build_tiles, original, vdir, p.tile_size, p.tile_overlap, p.tile_format,
            p.quality,
        )  # fmt: skip
        ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - t, stage="zoom")

    async def zoom_built() -> None:
        await store.set_stage(image_id, version, "zoom")
        await _publish(ctx, image_id)

    pyramid: asyncio.Future[None] | None = None
    first: asyncio.Future[None] | None = None
    try:
        # Others waiting at this or a more urgent priority: displays first for everyone (round
        # robin below). Not among bulk jobs: a migration is about throughput, and running the
        # pyramid beside the display keeps both cores busy through each job's gaps (~8% more
        # images/s, make bench figure 6); a viewer arriving meanwhile has the express worker.
        waiting = (
            through == "zoom"
            and job.priority < BULK
            and await store.others_waiting(image_id, job.priority)
        )
        alongside = through == "zoom" and need_display and need_zoom and not waiting

        def start_pyramid() -> None:
            nonlocal pyramid
            if alongside and pyramid is None:
                pyramid = asyncio.ensure_future(tiles())

        # Nobody else is waiting: build the pyramid beside the other stages. JPEG decoding is
        # single-threaded, so it leaves a core for them; stages are still published in order.
        # A small image starts it once the viewer has its placeholder and first display width
        # (they get both cores); a huge one at once (its placeholder is little work).
        if huge or not (need_placeholder or split):
            start_pyramid()
        if split:
            first = asyncio.ensure_future(renditions([first_width], encode_in_parallel=True))
        if need_placeholder and not combined:
            t = time.monotonic()
            await pool.run(
                pipeline.build_placeholder, original, placeholder_path, p.placeholder_width
            )
            ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - t, stage="placeholder")
            await placeholder_built()

        if through == "display":
            if need_display:
                await display(first, lambda: None)
                first = None
            return "partial"

        if not split:
            start_pyramid()
        if need_display:
            await display(first, start_pyramid)
            first = None
            if need_zoom and waiting:
                # Round robin: every waiting viewer gets its placeholder and display first;
                # the pyramid is built on this job's next turn (then display is done, so it
                # does not defer again).
                log.info("image %s: display built; tiling deferred", image_id)
                return "partial"
        if need_zoom:
            await _status(ctx, image_id, "tiling")
            await (pyramid if pyramid is not None else tiles())
            pyramid = None
            await zoom_built()
    except BaseException as exc:
        # Their threads run on regardless: wait for them, drop their results.
        await asyncio.gather(
            *(f for f in (first, pyramid) if f is not None), return_exceptions=True
        )
        if isinstance(exc, pipeline.InvalidImage):
            raise JobFailed("invalidImage", str(exc)) from exc
        raise

    await _status(ctx, image_id, "storing")
    await store.set_status(image_id, "ready")
    ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - started, stage="total")
    log.info("image %s v%d ready in %.2fs", image_id, version, time.monotonic() - started)
    return "done"


def _renditions_exist(
    layout: CacheLayout, image_id: str, version: int, widths: list[int], formats: list[str]
) -> bool:
    return all(layout.rendition(image_id, version, w, f).exists() for w in widths for f in formats)


async def _fetch(ctx: JobContext, record: ImageRecord, original: Path) -> None:
    limits = ctx.settings.limits
    image_id = record.id
    try:
        if record.source_url:
            pulled = await pull_url(
                ctx.fetcher,
                record.source_url,
                original,
                limits.max_source_bytes,
                retries=limits.fetch_retries,
            )
        else:
            pulled = await pull(
                ctx.origins,
                image_id,
                original,
                limits.max_source_bytes,
                retries=limits.fetch_retries,
                only_origin=record.origin,
            )
    except NotFound as exc:
        ctx.metrics.inc("imgproxy_origin_errors_total", kind="notFound")
        if record.created_by == "view":
            # SPEC §3: an ID no origin has leaves nothing behind.
            await ctx.store.delete_image(image_id)
            await asyncio.to_thread(remove, ctx.layout.image_dir(image_id))
            raise _Vanished(image_id) from exc
        raise JobFailed("originalNotFound", "the original was not found") from exc
    except TooLarge as exc:
        ctx.metrics.inc("imgproxy_origin_errors_total", kind="tooLarge")
        raise JobFailed("invalidImage", str(exc)) from exc
    except Unavailable as exc:
        ctx.metrics.inc("imgproxy_origin_errors_total", kind="unavailable")
        raise JobFailed("uploadError", str(exc)) from exc
    ctx.metrics.inc("imgproxy_origin_fetches_total", origin=pulled.origin)
    origin = None if record.source_url else pulled.origin
    await ctx.store.set_status(image_id, "downloading", origin=origin)


async def retire_version(ctx: JobContext, image_id: str, old_version: int) -> None:
    """Remove an old version after a switch, once a grace period has passed: clients that read
    the old info.json a moment ago still get its versioned files."""
    await ctx.store.delete_version(image_id, old_version)
    await asyncio.sleep(RETIRE_GRACE)
    # A pyramid has thousands of files: never remove them on the event loop.
    await asyncio.to_thread(remove, ctx.layout.version_dir(image_id, old_version))
    ctx.service.on_gone(image_id)  # nor from memory
    with contextlib.suppress(StoreError):
        await ctx.measure(image_id)
