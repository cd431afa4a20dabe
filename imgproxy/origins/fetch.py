"""Opening URLs: one shared aiohttp session, connect/idle timeouts, bounded redirects, status mapping.

Every URL the proxy opens goes through `open_url`, so limits apply in one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from imgproxy.origins.base import NotFound, Source, TooLarge, Unavailable
from imgproxy.settings import LimitsSettings

MAX_REDIRECTS = 5
CHUNK = 1 << 16


def make_session(limits: LimitsSettings) -> aiohttp.ClientSession:
    """The process-wide client session (opened and closed with the app)."""
    timeout = aiohttp.ClientTimeout(
        total=None, sock_connect=limits.connect_timeout, sock_read=limits.read_timeout
    )
    connector = aiohttp.TCPConnector(limit=64, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        timeout=timeout, connector=connector, auto_decompress=False, raise_for_status=False
    )


def redact(url: str) -> str:
    """A URL fit for logs and errors: no user info, no query string (it may hold tokens)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


@asynccontextmanager
async def open_url(
    session: aiohttp.ClientSession,
    url: str,
    headers: Mapping[str, str] | None = None,
    max_bytes: int | None = None,
) -> AsyncIterator[Source]:
    """GET `url` and yield its body as a Source; 404/410 -> NotFound, other failures -> Unavailable."""
    shown = redact(url)
    try:
        async with session.get(
            url, headers=dict(headers or {}), max_redirects=MAX_REDIRECTS, allow_redirects=True
        ) as response:
            if response.status in (404, 410):
                raise NotFound(shown)
            if response.status != 200:
                transient = response.status >= 500 or response.status in (408, 429)
                raise Unavailable(f"{shown} answered {response.status}", transient=transient)
            size = response.content_length
            if max_bytes is not None and size is not None and size > max_bytes:
                raise TooLarge(f"{shown} is {size} bytes, over the limit of {max_bytes}")

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for data in response.content.iter_chunked(CHUNK):
                        yield data
                except (TimeoutError, aiohttp.ClientError) as exc:
                    raise Unavailable(f"{shown}: transfer failed: {_describe(exc)}") from exc

            yield Source(location=shown, size=size, chunks=chunks())
    except aiohttp.TooManyRedirects as exc:
        raise Unavailable(f"{shown}: more than {MAX_REDIRECTS} redirects", transient=False) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise Unavailable(f"{shown}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
