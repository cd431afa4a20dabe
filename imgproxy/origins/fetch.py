"""Opening URLs safely: one shared aiohttp session whose connector refuses non-public addresses,
connect/idle/total timeouts, at most 5 redirects, and status mapping.

Every URL the proxy opens goes through `open_url`, so limits apply in one place. The address
check sits in the connector's `_resolve_host` because that is the one place every connection
(IP literal or host name, first request or redirect) passes through before a socket is
opened: aiohttp does not call the resolver for IP literals, so a resolver alone would miss
`http://127.0.0.1/`. The address actually connected to is checked again after connecting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_proto import ResponseHandler
from aiohttp.tracing import Trace

from imgproxy.origins.base import NotFound, Source, TooLarge, Unavailable
from imgproxy.origins.safety import AddressPolicy
from imgproxy.settings import LimitsSettings

MAX_REDIRECTS = 5
CHUNK = 1 << 16


class BlockedAddress(aiohttp.ClientConnectionError):
    """The host resolves only to addresses the policy refuses (loopback, private, ...)."""


class SafeConnector(aiohttp.TCPConnector):
    """A TCP connector that connects only to addresses its AddressPolicy allows."""

    def __init__(
        self,
        policy: AddressPolicy,
        resolver: AbstractResolver | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(resolver=resolver, **kwargs)
        self.policy = policy

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        results = await super()._resolve_host(host, port, traces)
        allowed = [r for r in results if self.policy.allows(host, r["host"])]
        if not allowed:
            raise BlockedAddress(f"{host} resolves to a non-public address")
        return allowed

    async def _wrap_create_connection(
        self, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        transport, protocol = await super()._wrap_create_connection(*args, **kwargs)
        peer = transport.get_extra_info("peername")
        request = kwargs.get("req")
        host = request.url.host if request is not None and request.url.host else ""
        if not peer or not self.policy.allows(str(host), str(peer[0])):
            transport.close()
            raise BlockedAddress(f"connected to a non-public address {peer and peer[0]}")
        return transport, protocol


def make_session(
    limits: LimitsSettings, resolver: AbstractResolver | None = None
) -> aiohttp.ClientSession:
    """The process-wide client session (opened and closed with the app)."""
    timeout = aiohttp.ClientTimeout(
        total=limits.fetch_timeout,
        sock_connect=limits.connect_timeout,
        sock_read=limits.read_timeout,
    )
    policy = AddressPolicy.from_settings(limits.allow_private_networks, limits.allowed_hosts)
    connector = SafeConnector(policy, resolver=resolver, limit=64, ttl_dns_cache=60)
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        auto_decompress=False,
        raise_for_status=False,
        trust_env=False,  # never route through a proxy from the environment
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
    except BlockedAddress as exc:
        raise Unavailable(f"{shown}: refused: {exc}", transient=False) from exc
    except aiohttp.InvalidURL as exc:
        raise Unavailable(f"{shown}: refused: invalid URL or address", transient=False) from exc
    except ValueError as exc:  # aiohttp's checks of a request it will not send
        raise Unavailable(f"{shown}: invalid request: {exc}", transient=False) from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise Unavailable(f"{shown}: {_describe(exc)}") from exc


def _describe(exc: BaseException) -> str:
    """A short reason: aiohttp's parse errors quote whole buffers of what the peer sent."""
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
