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
from aiohttp.http import RawRequestMessage
from aiohttp.web_protocol import RequestHandler

from imgproxy.settings import Settings
from imgproxy.state import STATE
from imgproxy.web.replay import Replays

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


ReplaysOf = Callable[[], Replays | None]
REPLAY_BUFFER_LIMIT = 256 * 1024  # bytes of answers a connection may have unsent


class _ReplayingParser:
    """aiohttp's request parser, with the requests it parses first offered to the handler's
    replays (web/replay.py): those answered there never become aiohttp requests."""

    def __init__(self, parser: Any, handler: GuardedHandler) -> None:
        self._parser = parser
        self._handler = handler

    def __getattr__(self, name: str) -> Any:
        return getattr(self._parser, name)

    def feed_data(self, data: bytes) -> Any:
        messages, upgraded, tail = self._parser.feed_data(data)
        if messages and not upgraded:
            messages = self._handler.replay(messages)
        return messages, upgraded, tail


class GuardedHandler(RequestHandler):
    """A request handler that enforces the header timeout and the connection limit, and answers
    plain requests for hot immutable files from recorded bytes."""

    def __init__(
        self,
        manager: web.Server,
        count: ConnectionCount,
        header_timeout: float,
        replays: ReplaysOf = lambda: None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._count = count
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None
        self._counted = False
        self._replays = replays
        self._replayed = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if getattr(self, "_parser", None) is not None and hasattr(
            self, "_next_keepalive_close_time"
        ):
            self._parser = _ReplayingParser(self._parser, self)  # type: ignore[assignment]
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
        idle = self._idle()
        before = self._request_count + self._replayed
        super().data_received(data)
        if self._request_count + self._replayed > before:
            self._stop_header_timer()
        elif idle and self._header_timer is None:
            self._start_header_timer()

    def _idle(self) -> bool:
        """No request queued or in progress: the handler's loop waits for the next one."""
        return not self._messages and self._waiter is not None and not self._waiter.done()

    def replay(self, messages: list[Any]) -> list[Any]:
        """Answer the leading messages that have a recorded answer while the connection is idle
        (answers stay in request order); return the rest for aiohttp to handle."""
        replays = self._replays()
        transport = self.transport
        if replays is None or transport is None or not self._idle():
            return messages
        # aiohttp's parser stops at this many queued messages and keeps the rest of the bytes
        # until the protocol, having drained its queue, feeds it again: a burst that reached
        # the bound goes the normal way, or its tail would wait for data that never comes.
        bound = getattr(self, "_max_msg_queue_size", 0)
        if bound and len(messages) >= bound:
            return messages
        for done, (message, _payload) in enumerate(messages):
            answer = None
            # A client that pipelines requests without reading the answers would have them
            # pile up here: past a bound, the rest go the normal way, whose writes wait for
            # the client (and whose queue pauses reading).
            if transport.get_write_buffer_size() > REPLAY_BUFFER_LIMIT:
                return messages[done:]
            if isinstance(message, RawRequestMessage):
                answer = replays.answer(
                    message.method,
                    message.path,
                    message.version,
                    message.should_close,
                    message.headers,
                )
            if answer is None:
                return messages[done:]
            transport.write(answer)
            self._replayed += 1
            consumed = getattr(self._parser, "message_consumed", None)
            if consumed is not None:
                consumed()  # the parser counts queued messages for its back-pressure
            # An answered request counts as activity for the keep-alive timeout.
            self._next_keepalive_close_time = self._loop.time() + self._keepalive_timeout
        return []

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
        self,
        *args: Any,
        count: ConnectionCount,
        header_timeout: float,
        replays: ReplaysOf,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.count = count
        self.header_timeout = header_timeout
        self.replays = replays

    def __call__(self) -> RequestHandler:
        return GuardedHandler(
            self,
            self.count,
            self.header_timeout,
            self.replays,
            loop=self._loop,
            **self._kwargs,
        )


class GuardedRunner(web.AppRunner):
    """An AppRunner whose server is a GuardedServer."""

    def __init__(self, app: web.Application, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            app, keepalive_timeout=settings.server.keepalive_timeout, access_log=None, **kwargs
        )
        self.count = ConnectionCount(settings.server.max_connections)
        self.header_timeout = settings.server.header_timeout

    def _replays(self) -> Replays | None:
        state = self.app.get(STATE)
        return state.replays if state is not None else None

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        guarded = GuardedServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            count=self.count,
            header_timeout=self.header_timeout,
            replays=self._replays,
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
