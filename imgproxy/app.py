"""create_app(settings): the one place that wires every part together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from imgproxy.metrics import Metrics
from imgproxy.runtime import open_runtime
from imgproxy.settings import Settings
from imgproxy.state import STATE
from imgproxy.warm import warm_all
from imgproxy.web.middlewares import make_middlewares
from imgproxy.web.routes import setup_routes

log = logging.getLogger(__name__)


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    # Bodies may carry a base64 attachment (4/3 of its size) and little else.
    max_body = settings.limits.max_upload_bytes * 4 // 3 + (1 << 20)
    app = web.Application(
        middlewares=make_middlewares(settings, metrics),  # type: ignore[arg-type]
        client_max_size=max_body,
    )
    app.cleanup_ctx.append(lambda a: _lifecycle(a, settings, metrics))
    app.on_response_prepare.append(_record_replay)
    setup_routes(app)
    return app


async def _record_replay(request: web.Request, response: web.StreamResponse) -> None:
    state = request.app.get(STATE)
    if state is not None:
        await state.replays.record(request, response)


async def _lifecycle(
    app: web.Application, settings: Settings, metrics: Metrics
) -> AsyncIterator[None]:
    """Open everything before serving; stop workers, then close, on shutdown."""
    async with open_runtime(settings, metrics) as state:
        app[STATE] = state
        background: list[asyncio.Task[None]] = []
        if settings.processing.mode == "eager":
            background.append(asyncio.create_task(warm_all(state)))
        try:
            yield
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
