"""Opening and closing every long-lived part, for the server and for `imgproxy warm --process`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from imgproxy.cache.budget import CacheBudget
from imgproxy.cache.disk import remove_temporaries
from imgproxy.cache.hot import HotFiles
from imgproxy.cache.layout import CacheLayout
from imgproxy.images.renditions import Renditions
from imgproxy.images.service import ImageService
from imgproxy.jobs.admission import Admission
from imgproxy.jobs.runner import JobContext, retire_version
from imgproxy.jobs.workers import Workers
from imgproxy.memory import Memory
from imgproxy.metadata.accounts import Accounts
from imgproxy.metadata.catalog import Catalog
from imgproxy.metadata.shop import Shop
from imgproxy.metadata.store import MetadataStore
from imgproxy.metrics import Metrics
from imgproxy.origins.fetch import make_session
from imgproxy.origins.registry import build_origins, close_origins
from imgproxy.origins.sources import SourceFetcher
from imgproxy.processing.pipeline import configure_vips
from imgproxy.processing.pool import ProcessingPool
from imgproxy.settings import Settings
from imgproxy.state import AppState
from imgproxy.web.auth import FailedAuth
from imgproxy.web.replay import Replays

log = logging.getLogger(__name__)


@asynccontextmanager
async def open_runtime(
    settings: Settings, metrics: Metrics | None = None, workers: bool = True
) -> AsyncIterator[AppState]:
    """Store, cache, pool, origins and (optionally) workers, opened in order and closed in reverse."""
    configure_vips()
    metrics = metrics or Metrics()
    layout = CacheLayout(settings.data_dir / "cache")
    layout.root.mkdir(parents=True, exist_ok=True)
    store = MetadataStore(settings.data_dir / "imgproxy.sqlite3")
    await store.open()
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        session = make_session(settings.limits)
        stack.push_async_callback(session.close)
        # Each worker (and the express one) may run two builds at once (display beside the
        # pyramid), plus one thread for renditions built on request.
        memory = Memory()
        memory.limit_arenas()  # before the pool's threads exist
        pool = ProcessingPool(2 * (settings.processing.workers + 1) + 1)
        stack.push_async_callback(asyncio.to_thread, pool.shutdown)
        origins = build_origins(settings.origins, session)
        stack.push_async_callback(close_origins, origins)
        fetcher = SourceFetcher(
            session, settings.limits, settings.origins, settings.data_dir / "uploads"
        )
        stack.push_async_callback(fetcher.aclose)
        service = ImageService(settings, store, layout)
        hot = HotFiles(settings.viewer.memory_cache_bytes)
        replays = Replays(settings.viewer.memory_cache_bytes, metrics)

        def gone(image_id: str) -> None:
            hot.forget(image_id)
            replays.forget(image_id)

        service.on_gone = gone
        admission = Admission(store, settings.processing.max_queue)
        service.admit = admission.admit
        budget = CacheBudget(
            store, layout, settings.storage.cache_max_bytes, metrics, service.publish
        )
        service.on_viewed = budget.viewed
        ctx = JobContext(settings, store, service, layout, pool, origins, metrics, fetcher)
        job_workers = Workers(ctx, settings.processing.workers, on_idle=memory.trim)
        service.on_queued = job_workers.wake
        ctx.on_released = job_workers.wake
        retiring: set[asyncio.Task[None]] = set()

        def retire(image_id: str, version: int) -> None:
            task = asyncio.create_task(retire_version(ctx, image_id, version))
            retiring.add(task)
            task.add_done_callback(retiring.discard)

        ctx.retire = retire
        ctx.measure = budget.measure
        stack.push_async_callback(_cancel_all, retiring)
        state = AppState(
            settings=settings,
            store=store,
            layout=layout,
            pool=pool,
            service=service,
            renditions=Renditions(settings, store, layout, pool, service, budget.measure),
            workers=job_workers,
            metrics=metrics,
            origins=origins,
            job_context=ctx,
            accounts=Accounts(store),
            catalog=Catalog(store),
            shop=Shop(store),
            fetcher=fetcher,
            budget=budget,
            admission=admission,
            hot=hot,
            replays=replays,
            auth_failures=FailedAuth(settings.limits.auth_failures, settings.limits.auth_window),
        )
        if workers:
            # Only the process that runs workers may clean up after a crash.
            removed = await asyncio.to_thread(remove_temporaries, layout.root)
            if removed:
                log.info("removed %d temporary files left by an earlier run", removed)
            resumed = await store.resume_orphans()
            if resumed:
                log.info("resuming %d jobs interrupted by a crash", len(resumed))
            job_workers.start()
            stack.push_async_callback(job_workers.stop)
            evictor = asyncio.create_task(budget.run())
            stack.push_async_callback(_cancel_all, {evictor})
            stack.push_async_callback(budget.flush)
        yield state


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    for task in list(tasks):
        task.cancel()
    for task in list(tasks):
        with contextlib.suppress(asyncio.CancelledError):
            await task
