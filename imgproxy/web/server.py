"""Serving with bounds aiohttp does not have: a connection limit and a request-header timeout.

aiohttp's keep-alive timer is cancelled by any incoming byte, so a client that sends its
headers one byte at a time (slowloris) would hold a connection forever; and it accepts
connections without limit. GuardedHandler closes a connection whose request headers are not
complete within `server.header_timeout`, and answers 503 + Retry-After (then closes) once
`server.max_connections` are open. Idle keep-alive connections close after
`server.keepalive_timeout`.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from imgproxy.settings import Settings

BUSY_BODY = b'{"error":"too many connections; try again shortly"}'
BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(BUSY_BODY)).encode() + b"\r\n\r\n" + BUSY_BODY
)


class ConnectionCount:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0


class GuardedHandler(RequestHandler):
    """A request handler that enforces the header timeout and the connection limit."""

    def __init__(
        self, manager: web.Server, count: ConnectionCount, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, **kwargs)
        self._count = count
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self._count.open >= self._count.limit:
            self._count.refused += 1
            assert isinstance(transport, asyncio.Transport)
            transport.write(BUSY)
            transport.close()
            return
        self._count.open += 1
        self._counted = True
        self._start_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._stop_header_timer()
        if self._counted:
            self._count.open -= 1
            self._counted = False
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # Idle between requests: these bytes start a new request, whose headers are now timed.
        idle = not self._messages and self._waiter is not None and not self._waiter.done()
        before = self._request_count
        super().data_received(data)
        if self._request_count > before:
            self._stop_header_timer()
        elif idle and self._header_timer is None:
            self._start_header_timer()

    def _start_header_timer(self) -> None:
        self._header_timer = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        self.force_close()
        if self.transport is not None:
            self.transport.close()


class GuardedServer(web.Server):
    def __init__(
        self, *args: Any, count: ConnectionCount, header_timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.count = count
        self.header_timeout = header_timeout

    def __call__(self) -> RequestHandler:
        return GuardedHandler(
            self, self.count, self.header_timeout, loop=self._loop, **self._kwargs
        )


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            app, keepalive_timeout=settings.server.keepalive_timeout, access_log=None, **kwargs
        )
        self.count = ConnectionCount(settings.server.max_connections)
        self.header_timeout = settings.server.header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        guarded = GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            count=self.count,
            header_timeout=self.header_timeout,
            **server._kwargs,
        )
        return guarded


async def serve(
    app: web.Application, settings: Settings, on_started: Callable[[], None] = lambda: None
) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    runner = GuardedRunner(app, settings, shutdown_timeout=5.0)
    await runner.setup()
    try:
        site = web.TCPSite(
            runner,
            settings.server.host,
            settings.server.port,
            backlog=min(settings.server.max_connections, 4096),
        )
        await site.start()
        on_started()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
