"""Replaying hot immutable responses below aiohttp's request machinery.

A versioned tile, rendition or zoom.dzi never changes, and a plain request for one (a GET over
keep-alive HTTP/1.1 with no query, no conditional, range, CORS or body headers) always gets the
same answer. The first such answer is built by the normal handler and recorded here as bytes
(all but its Date header); later plain requests for the same path, arriving on an idle
connection, get those bytes written straight to the socket by the protocol (web/server.py),
without a Request, a task, the middlewares or the router. That is most of aiohttp's cost per
request, and what stands between it and a static file server on cached tiles.

Anything else (HEAD, If-None-Match, Range, an Origin header, HTTP/1.0, Connection: close,
pipelined behind a request in progress, a path never answered yet) takes the normal route, so
the answers are the same either way; an image's recordings go when its files go.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import HttpVersion11

from imgproxy.cache.hot import ImageLRU
from imgproxy.metrics import Metrics

# Request headers that can change an answer, or that a request with a body carries.
NOT_PLAIN = (
    "Origin",
    "If-None-Match",
    "If-Modified-Since",
    "If-Match",
    "If-Unmodified-Since",
    "If-Range",
    "Range",
    "Content-Length",
    "Transfer-Encoding",
    "Expect",
    "Upgrade",
)


class ReplayableResponse(web.Response):
    """An answer a handler vouches is the same for every plain request of its path."""

    def __init__(self, image_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_id = image_id


@dataclass(frozen=True)
class Replay:
    head: bytes  # status line and every header but Date, each ending in CRLF
    body: bytes
    route: str  # for the request counter, as the middleware counts it


def _plain(method: str, version: Any, closing: bool, query: str, headers: Any) -> bool:
    if method != "GET" or version != HttpVersion11 or closing or query:
        return False
    return not any(name in headers for name in NOT_PLAIN)


class Replays:
    def __init__(self, max_bytes: int, metrics: Metrics) -> None:
        self._entries = ImageLRU[str, Replay](max_bytes, lambda r: len(r.head) + len(r.body))
        self._metrics = metrics
        self._date = (0, b"")
        self.served = 0

    def forget(self, image_id: str) -> None:
        self._entries.forget(image_id)

    def __len__(self) -> int:
        return len(self._entries)

    async def record(self, request: web.Request, response: web.StreamResponse) -> None:
        """on_response_prepare: keep the bytes of a replayable answer to a plain request."""
        if not isinstance(response, ReplayableResponse) or response.status != 200:
            return
        if not _plain(
            request.method,
            request.version,
            not request.keep_alive,
            request.query_string,
            request.headers,
        ):
            return
        body = response.body
        if not isinstance(body, bytes) or "Connection" in response.headers:
            return
        lines = [f"HTTP/1.1 {response.status} {response.reason}\r\n"]
        lines += [f"{k}: {v}\r\n" for k, v in response.headers.items() if k != "Date"]
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        replay = Replay("".join(lines).encode("latin-1"), body, route)
        self._entries.put(response.image_id, request.raw_path, replay)

    def answer(
        self, method: str, path: str, version: Any, closing: bool, headers: Any
    ) -> bytes | None:
        """The whole response for a plain request of a recorded path, else None."""
        if "?" in path or not _plain(method, version, closing, "", headers):
            return None
        replay = self._entries.get(path)
        if replay is None:
            return None
        self.served += 1
        self._metrics.inc("imgproxy_requests_total", route=replay.route, status="200")
        return replay.head + self._date_line() + replay.body

    def _date_line(self) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, f"Date: {formatdate(now, usegmt=True)}\r\n\r\n".encode())
        return self._date[1]
