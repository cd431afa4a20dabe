"""Building origins from settings, and pulling an ID's original into the cache through them."""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from imgproxy.cache.disk import atomic_path
from imgproxy.origins.base import NotFound, Origin, Source, TooLarge, Unavailable
from imgproxy.origins.file import FileOrigin
from imgproxy.origins.ftp import FtpOrigin
from imgproxy.origins.http import HttpOrigin
from imgproxy.origins.rest import RestOrigin
from imgproxy.origins.s3 import S3Origin
from imgproxy.origins.sources import SourceFetcher
from imgproxy.settings import OriginSettings

log = logging.getLogger(__name__)

BUFFER = 1 << 20

OriginFactory = Callable[[OriginSettings, aiohttp.ClientSession], Origin]
FACTORIES: dict[str, OriginFactory] = {
    "file": lambda settings, _session: FileOrigin(settings),
    "http": HttpOrigin,
    "rest": RestOrigin,
    # S3 talks through its own botocore client; it takes the same timeouts as the session.
    "s3": lambda settings, session: S3Origin(
        settings,
        connect_timeout=session.timeout.sock_connect or 5.0,
        read_timeout=session.timeout.sock_read or 30.0,
    ),
    "ftp": lambda settings, session: FtpOrigin(
        settings,
        connect_timeout=session.timeout.sock_connect or 5.0,
        read_timeout=session.timeout.sock_read or 30.0,
    ),
}


def build_origins(
    settings: Sequence[OriginSettings], session: aiohttp.ClientSession
) -> list[Origin]:
    """One origin object per `[[origins]]` table, in order."""
    origins: list[Origin] = []
    for item in settings:
        factory = FACTORIES.get(item.type)
        if factory is None:
            raise ValueError(f"origin {item.name!r}: type {item.type!r} is not available yet")
        origins.append(factory(item, session))
    return origins


async def close_origins(origins: Sequence[Origin]) -> None:
    """Close what origins hold open (an S3 client, an FTP pool); errors are only logged."""
    for origin in origins:
        closer = getattr(origin, "aclose", None)
        if closer is None:
            continue
        try:
            await closer()
        except Exception:
            log.exception("origin %s did not close cleanly", origin.name)


@dataclass(frozen=True)
class Pulled:
    origin: str
    location: str
    size: int


async def pull(
    origins: Sequence[Origin],
    image_id: str,
    dest: Path,
    max_bytes: int,
    retries: int = 2,
    only_origin: str | None = None,
    backoff: float = 0.5,
) -> Pulled:
    """Fetch `image_id` from the first origin that has it into `dest` (atomically).

    NotFound moves on to the next origin; Unavailable is retried `retries` times with
    exponential backoff when transient, then raised; TooLarge is raised at once.
    """
    candidates = [o for o in origins if o.accepts(image_id)]
    if only_origin is not None:
        candidates = [o for o in candidates if o.name == only_origin] or [
            o for o in origins if o.name == only_origin
        ]
    for origin in candidates:
        try:
            location, size = await _pull_retrying(
                functools.partial(origin.open, image_id),
                dest,
                max_bytes,
                retries,
                backoff,
                origin.name,
            )
        except NotFound:
            continue
        return Pulled(origin.name, location, size)
    raise NotFound(image_id)


async def pull_url(
    fetcher: SourceFetcher,
    url: str,
    dest: Path,
    max_bytes: int,
    retries: int = 2,
    backoff: float = 0.5,
) -> Pulled:
    """Fetch an API-added image from its sourceUrl into `dest`, with the same retries and limits."""
    location, size = await _pull_retrying(
        lambda: fetcher.open(url), dest, max_bytes, retries, backoff, "sourceUrl"
    )
    return Pulled("sourceUrl", location, size)


async def _pull_retrying(
    opener: Callable[[], AbstractAsyncContextManager[Source]],
    dest: Path,
    max_bytes: int,
    retries: int,
    backoff: float,
    label: str,
) -> tuple[str, int]:
    for attempt in range(retries + 1):
        try:
            async with opener() as source:
                size = await _save(source, dest, max_bytes)
            return source.location, size
        except Unavailable as exc:
            if not exc.transient or attempt == retries:
                raise
            log.warning("%s: %s; retry %d of %d", label, exc, attempt + 1, retries)
            await asyncio.sleep(backoff * 2**attempt)
    raise AssertionError("unreachable")


async def _save(source: Source, dest: Path, max_bytes: int) -> int:
    if source.size is not None and source.size > max_bytes:
        raise TooLarge(f"the original is {source.size} bytes, over the limit of {max_bytes}")
    if source.path is not None:
        return await asyncio.to_thread(_copy_local, source.path, dest, max_bytes)
    with atomic_path(dest) as tmp:
        total = 0
        buffer = bytearray()
        with tmp.open("wb") as out:
            async for chunk in source.chunks:
                total += len(chunk)
                if total > max_bytes:
                    raise TooLarge(f"the original is over the limit of {max_bytes} bytes")
                buffer += chunk
                if len(buffer) >= BUFFER:
                    out.write(buffer)
                    buffer.clear()
            out.write(buffer)
        if source.size is not None and total != source.size:
            raise Unavailable(f"{source.location}: got {total} of {source.size} bytes")
    return total


def _copy_local(path: Path, dest: Path, max_bytes: int) -> int:
    size = path.stat().st_size
    if size > max_bytes:
        raise TooLarge(f"the original is {size} bytes, over the limit of {max_bytes}")
    with atomic_path(dest) as tmp:
        shutil.copyfile(path, tmp)
    return size
