"""create_app(settings): the one place that wires every part together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from imgproxy.cache.disk import remove_temporaries, tree_size
from imgproxy.cache.layout import CacheLayout
from imgproxy.images.renditions import Renditions
from imgproxy.images.service import ImageService
from imgproxy.jobs.runner import JobContext
from imgproxy.jobs.workers import Workers
from imgproxy.metadata.store import MetadataStore
from imgproxy.metrics import Metrics
from imgproxy.origins.fetch import make_session
from imgproxy.origins.registry import build_origins
from imgproxy.processing.pipeline import configure_vips
from imgproxy.processing.pool import ProcessingPool
from imgproxy.settings import Settings
from imgproxy.state import STATE, AppState
from imgproxy.web.middlewares import make_middlewares
from imgproxy.web.routes import setup_routes

log = logging.getLogger(__name__)

CACHE_SIZE_REFRESH = 30.0


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    app = web.Application(middlewares=make_middlewares(settings, metrics))  # type: ignore[arg-type]
    app.cleanup_ctx.append(lambda a: _lifecycle(a, settings, metrics))
    setup_routes(app)
    return app


async def _lifecycle(
    app: web.Application, settings: Settings, metrics: Metrics
) -> AsyncIterator[None]:
    """Open everything before serving; stop workers, then close, on shutdown."""
    configure_vips()
    data = settings.data_dir
    layout = CacheLayout(data / "cache")
    layout.root.mkdir(parents=True, exist_ok=True)
    removed = await asyncio.to_thread(remove_temporaries, layout.root)
    if removed:
        log.info("removed %d temporary files left by an earlier run", removed)
    store = MetadataStore(data / "imgproxy.sqlite3")
    await store.open()
    session = make_session(settings.limits)
    pool = ProcessingPool(settings.processing.workers + 1)
    service = ImageService(settings, store, layout)
    origins = build_origins(settings.origins, session)
    ctx = JobContext(settings, store, service, layout, pool, origins, metrics)
    workers = Workers(ctx, settings.processing.workers)
    service.on_queued = workers.wake
    state = AppState(
        settings=settings,
        store=store,
        layout=layout,
        pool=pool,
        service=service,
        renditions=Renditions(settings, store, layout, pool, service),
        workers=workers,
        metrics=metrics,
    )
    app[STATE] = state
    resumed = await store.resume_orphans()
    if resumed:
        log.info("resuming %d jobs interrupted by a crash", len(resumed))
    workers.start()
    sizer = asyncio.create_task(_measure_cache(state))
    try:
        yield
    finally:
        sizer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sizer
        await workers.stop()
        await session.close()
        await asyncio.to_thread(pool.shutdown)
        await store.close()


async def _measure_cache(state: AppState) -> None:
    """Keep `cache_bytes` current without walking the tree on every health check."""
    while True:
        state.cache_bytes = await asyncio.to_thread(tree_size, state.layout.root)
        await asyncio.sleep(CACHE_SIZE_REFRESH)
