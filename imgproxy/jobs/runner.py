"""Running one job: fetch the original, then build and publish each stage in order.

request -> resolve -> fetch -> process -> store -> serve: this is the fetch..store part.
Every stage is published the moment its files are in place; stages already built (a job
resumed after a crash) are not built again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from imgproxy.cache.disk import remove
from imgproxy.cache.layout import CacheLayout
from imgproxy.images.negotiation import rendition_formats, rendition_widths
from imgproxy.images.service import ImageService
from imgproxy.metadata.store import Job, MetadataStore, StoreError
from imgproxy.metrics import Metrics
from imgproxy.origins.base import NotFound, Origin, TooLarge, Unavailable
from imgproxy.origins.registry import pull
from imgproxy.processing import pipeline
from imgproxy.processing.pool import ProcessingPool
from imgproxy.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class JobContext:
    settings: Settings
    store: MetadataStore
    service: ImageService
    layout: CacheLayout
    pool: ProcessingPool
    origins: list[Origin]
    metrics: Metrics


class JobFailed(Exception):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


async def run_job(ctx: JobContext, job: Job) -> None:
    """Run a claimed job to `ready` or `error`, then drop it from the queue."""
    image_id = job.image_id
    # CancelledError (shutdown) is not caught: the job stays in the queue and resumes later.
    try:
        async with asyncio.timeout(ctx.settings.processing.job_timeout):
            await _build(ctx, job)
    except TimeoutError:
        # The pool thread finishes on its own; the image is marked failed now and a later
        # view retries (status `unknown` is retryable).
        limit = ctx.settings.processing.job_timeout
        log.error("image %s: job took longer than %.0fs; abandoned", image_id, limit)
        await _fail(ctx, image_id, "unknown", f"processing took longer than {limit:.0f}s")
    except JobFailed as exc:
        log.warning("image %s: %s (%s)", image_id, exc.code, exc.detail)
        ctx.metrics.inc("imgproxy_image_errors_total", kind=exc.code)
        await _fail(ctx, image_id, exc.code, exc.detail)
    except _Vanished:
        log.info("image %s: no origin has it; forgotten", image_id)
    except StoreError as exc:
        log.error("image %s: metadata store failed: %s", image_id, exc)
        await _fail(ctx, image_id, "statusUpdateError", "the metadata store failed")
    except Exception:
        log.exception("image %s: unexpected failure", image_id)
        await _fail(ctx, image_id, "unknown", "internal error while processing")
    try:
        await ctx.store.finish_job(image_id)
    except StoreError as exc:
        log.error("image %s: cannot remove finished job: %s", image_id, exc)
    await ctx.service.publish(image_id)


class _Vanished(Exception):
    """A view-created image no origin has: it was deleted, nothing is left behind."""


async def _fail(ctx: JobContext, image_id: str, code: str, detail: str) -> None:
    try:
        await ctx.store.set_status(image_id, "error", error=code, detail=detail)
    except StoreError as exc:
        log.error("image %s: cannot record error %s: %s", image_id, code, exc)


async def _status(ctx: JobContext, image_id: str, status: str, origin: str | None = None) -> None:
    await ctx.store.set_status(image_id, status, origin=origin)
    await ctx.service.publish(image_id)


async def _build(ctx: JobContext, job: Job) -> None:
    store, layout, pool, settings = ctx.store, ctx.layout, ctx.pool, ctx.settings
    image_id, version = job.image_id, job.version
    record = await store.get_image(image_id)
    if record is None:
        return
    served = record.version
    current = await store.get_version(image_id, version)
    original = layout.original(image_id)
    started = time.monotonic()

    # fetch: a new version always pulls again; a resumed one reuses a complete original.
    if current is None or current.width is None or not original.exists():
        await _status(ctx, image_id, "downloading")
        await _fetch(ctx, image_id, original, record.origin, record.created_by)
        ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - started, stage="download")
        try:
            info = await pool.run(pipeline.probe, original, settings.limits.max_pixels)
        except pipeline.InvalidImage as exc:
            raise JobFailed("invalidImage", str(exc)) from exc
        await store.set_size(image_id, version, info.width, info.height, info.has_alpha)
        current = await store.get_version(image_id, version)
        assert current is not None and current.width is not None
    await _status(ctx, image_id, "processing")
    width, has_alpha = current.width, current.has_alpha
    assert width is not None
    p = settings.processing
    vdir = layout.version_dir(image_id, version)
    is_new_version = version != served

    try:
        if not (current.placeholder and layout.placeholder(image_id, version).exists()):
            t = time.monotonic()
            await pool.run(
                pipeline.build_placeholder,
                original,
                layout.placeholder(image_id, version),
                p.placeholder_width,
            )
            ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - t, stage="placeholder")
            await store.set_stage(image_id, version, "placeholder")
            await ctx.service.publish(image_id)

        widths = rendition_widths(width, p.widths)
        formats = rendition_formats(p.formats, has_alpha)
        if not (current.display and _renditions_exist(layout, image_id, version, widths, formats)):
            t = time.monotonic()
            await pool.run(
                pipeline.build_renditions,
                original,
                lambda w, f: layout.rendition(image_id, version, w, f),
                widths,
                formats,
                p.quality,
            )
            ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - t, stage="display")
            # Viewers switch to a new version only now that it has everything the old one showed.
            await store.set_stage(image_id, version, "display", switch=True)
            await ctx.service.publish(image_id)
            if is_new_version:
                await _retire(ctx, image_id, served)

        if not (current.zoom and layout.dzi(image_id, version).exists()):
            await _status(ctx, image_id, "tiling")
            t = time.monotonic()
            await pool.run(
                pipeline.build_tiles,
                original,
                vdir,
                p.tile_size,
                p.tile_overlap,
                p.tile_format,
                p.quality,
            )
            ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - t, stage="zoom")
            await store.set_stage(image_id, version, "zoom")
            await ctx.service.publish(image_id)
    except pipeline.InvalidImage as exc:
        raise JobFailed("invalidImage", str(exc)) from exc

    await _status(ctx, image_id, "storing")
    await store.set_status(image_id, "ready")
    ctx.metrics.observe("imgproxy_stage_seconds", time.monotonic() - started, stage="total")
    log.info("image %s v%d ready in %.2fs", image_id, version, time.monotonic() - started)


def _renditions_exist(
    layout: CacheLayout, image_id: str, version: int, widths: list[int], formats: list[str]
) -> bool:
    return all(layout.rendition(image_id, version, w, f).exists() for w in widths for f in formats)


async def _fetch(
    ctx: JobContext, image_id: str, original: Path, origin: str | None, created_by: str
) -> None:
    limits = ctx.settings.limits
    try:
        pulled = await pull(
            ctx.origins,
            image_id,
            original,
            limits.max_source_bytes,
            retries=limits.fetch_retries,
            only_origin=origin,
        )
    except NotFound as exc:
        if created_by == "view":
            # SPEC §3: an ID no origin has leaves nothing behind.
            await ctx.store.delete_image(image_id)
            await asyncio.to_thread(remove, ctx.layout.image_dir(image_id))
            ctx.metrics.inc("imgproxy_origin_errors_total", kind="notFound")
            raise _Vanished(image_id) from exc
        ctx.metrics.inc("imgproxy_origin_errors_total", kind="notFound")
        raise JobFailed("originalNotFound", "no origin has this image") from exc
    except TooLarge as exc:
        ctx.metrics.inc("imgproxy_origin_errors_total", kind="tooLarge")
        raise JobFailed("invalidImage", str(exc)) from exc
    except Unavailable as exc:
        ctx.metrics.inc("imgproxy_origin_errors_total", kind="unavailable")
        raise JobFailed("uploadError", str(exc)) from exc
    ctx.metrics.inc("imgproxy_origin_fetches_total", origin=pulled.origin)
    await ctx.store.set_status(image_id, "downloading", origin=pulled.origin)


async def _retire(ctx: JobContext, image_id: str, old_version: int) -> None:
    """Remove an old version after a switch (requests already streaming keep their open files)."""
    await ctx.store.delete_version(image_id, old_version)
    # A pyramid has thousands of files: never remove them on the event loop.
    await asyncio.to_thread(remove, ctx.layout.version_dir(image_id, old_version))
