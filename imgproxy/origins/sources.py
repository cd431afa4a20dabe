"""Source URLs of images added through the APIs: http(s), s3://bucket/key, ftp://user:pass@host/path.

Each scheme reuses the matching origin implementation with an ad-hoc origin whose template is
the bare `{id}` (the whole key or path), cached per bucket or per FTP account so that
clients and connection pools are shared. User-supplied hosts go through the same address
policy as every other fetch: http(s) in the connector, FTP by resolving the host here and
connecting to the checked address.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp

from imgproxy.origins.base import NotFound, Source, Unavailable
from imgproxy.origins.fetch import open_url, redact
from imgproxy.origins.ftp import FtpOrigin
from imgproxy.origins.s3 import S3Origin
from imgproxy.origins.safety import AddressPolicy
from imgproxy.settings import LimitsSettings, OriginSettings

SCHEMES = ("http", "https", "s3", "ftp")


def check_source_url(url: str) -> str | None:
    """Why `url` cannot be a sourceUrl, or None when it can."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return "is not a valid URL"
    if parts.scheme not in SCHEMES:
        return f"scheme must be one of {', '.join(SCHEMES)}"
    if not parts.netloc or not parts.hostname:
        return "has no host (or bucket)"
    if parts.scheme in ("s3", "ftp") and len(parts.path) <= 1:
        return "has no key or path"
    return None


class SourceFetcher:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        limits: LimitsSettings,
        origins: Sequence[OriginSettings] = (),
        uploads: Path | None = None,
    ) -> None:
        self.session = session
        self.uploads = uploads
        self.limits = limits
        self.policy = AddressPolicy.from_settings(
            limits.allow_private_networks, limits.allowed_hosts
        )
        self.s3_settings = {o.bucket: o for o in origins if o.type == "s3"}
        self._s3: dict[str, S3Origin] = {}
        self._ftp: dict[tuple[str, int, str, str], FtpOrigin] = {}

    def open(self, url: str) -> AbstractAsyncContextManager[Source]:
        scheme = urlsplit(url).scheme
        if scheme in ("http", "https"):
            return open_url(self.session, url)
        if scheme == "s3":
            return self._open_s3(url)
        if scheme == "ftp":
            return self._open_ftp(url)
        if scheme == "upload" and self.uploads is not None:
            return self._open_upload(url.removeprefix("upload:"))
        raise Unavailable(f"{redact(url)}: unsupported scheme", transient=False)

    @asynccontextmanager
    async def _open_upload(self, name: str) -> AsyncIterator[Source]:
        """Bytes kept at creation (store API images): their content is fixed by their digest."""
        assert self.uploads is not None
        path = self.uploads / name
        if "/" in name or not await asyncio.to_thread(path.is_file):
            raise NotFound(name)

        async def no_chunks() -> AsyncIterator[bytes]:
            return
            yield b""

        size = (await asyncio.to_thread(path.stat)).st_size
        yield Source(location=f"upload:{name}", size=size, chunks=no_chunks(), path=path)

    def _open_s3(self, url: str) -> AbstractAsyncContextManager[Source]:
        parts = urlsplit(url)
        bucket = parts.netloc
        origin = self._s3.get(bucket)
        if origin is None:
            # The endpoint and credentials of a configured s3 origin for this bucket, else
            # the standard AWS chain.
            base = self.s3_settings.get(bucket) or OriginSettings(
                name=f"s3:{bucket}", type="s3", bucket=bucket
            )
            origin = S3Origin(
                replace(base, key="{id}", extensions=(), id_pattern=None),
                connect_timeout=self.limits.connect_timeout,
                read_timeout=self.limits.read_timeout,
            )
            self._s3[bucket] = origin
        return origin.open(unquote(parts.path.lstrip("/")))

    @asynccontextmanager
    async def _open_ftp(self, url: str) -> AsyncIterator[Source]:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port or 21
        address = await self._checked_address(host, port, url)
        user = unquote(parts.username or "anonymous")
        password = unquote(parts.password or "")
        key = (address, port, user, password)
        origin = self._ftp.get(key)
        if origin is None:
            settings = OriginSettings(
                name=f"ftp:{host}",
                type="ftp",
                host=address,
                port=port,
                user=user,
                password=password,
            )
            origin = FtpOrigin(
                settings,
                connect_timeout=self.limits.connect_timeout,
                read_timeout=self.limits.read_timeout,
            )
            self._ftp[key] = origin
        async with origin.open(unquote(parts.path.lstrip("/"))) as source:
            yield source

    async def _checked_address(self, host: str, port: int, url: str) -> str:
        """Resolve `host` and return an address the policy allows (we connect to that one)."""
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise Unavailable(f"{redact(url)}: cannot resolve {host}") from exc
        for *_, sockaddr in infos:
            address = str(sockaddr[0])
            if self.policy.allows(host, address):
                return address
        raise Unavailable(
            f"{redact(url)}: refused: {host} resolves to a non-public address", transient=False
        )

    async def aclose(self) -> None:
        for s3 in self._s3.values():
            await s3.aclose()
        for ftp in self._ftp.values():
            await ftp.aclose()
        self._s3.clear()
        self._ftp.clear()
