"""`rest` origin: a JSON document per ID (e.g. an API's asset record) pointing at the image URL.

The document is fetched from the `url` template with the configured `headers`; the image URL
is taken at the RFC 6901 `pointer` and fetched through the same safe fetcher. The headers
(typically an API token) go to the image URL only when it is on the document's own origin,
so a token never leaks to a CDN or a third party the document names.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import orjson

from imgproxy.origins.base import NotFound, PatternMixin, Source, TooLarge, Unavailable
from imgproxy.origins.fetch import open_url, redact
from imgproxy.settings import OriginSettings

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1 << 20


class PointerError(LookupError):
    """The JSON pointer does not lead to a value."""


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer ('' is the whole document)."""
    if pointer == "":
        return document
    if not pointer.startswith("/"):
        raise PointerError(f"pointer {pointer!r} does not start with '/'")
    value = document
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict):
            if token not in value:
                raise PointerError(f"no member {token!r}")
            value = value[token]
        elif isinstance(value, list):
            if not (token.isdigit() and (token == "0" or not token.startswith("0"))):
                raise PointerError(f"{token!r} is not an array index")
            index = int(token)
            if index >= len(value):
                raise PointerError(f"index {index} is past the end")
            value = value[index]
        else:
            raise PointerError(f"cannot descend into a {type(value).__name__} at {token!r}")
    return value


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


class RestOrigin(PatternMixin):
    def __init__(self, settings: OriginSettings, session: aiohttp.ClientSession) -> None:
        self._init_pattern(settings)
        self.session = session

    async def _image_url(self, doc_url: str, image_id: str) -> str:
        async with open_url(
            self.session, doc_url, self.settings.headers, max_bytes=MAX_DOCUMENT_BYTES
        ) as source:
            body = bytearray()
            async for chunk in source.chunks:
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise TooLarge(f"{redact(doc_url)}: document over {MAX_DOCUMENT_BYTES} bytes")
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise Unavailable(f"{redact(doc_url)}: not a JSON document", transient=False) from exc
        try:
            value = resolve_pointer(document, self.settings.pointer)
        except PointerError as exc:
            log.warning(
                "origin %s: document for %s has nothing at %s (%s)",
                self.name,
                image_id,
                self.settings.pointer,
                exc,
            )
            raise NotFound(image_id) from exc
        if not isinstance(value, str) or not value:
            log.warning(
                "origin %s: document for %s has no URL at %s",
                self.name,
                image_id,
                self.settings.pointer,
            )
            raise NotFound(image_id)
        url = urljoin(doc_url, value)
        if urlsplit(url).scheme not in ("http", "https"):
            log.warning("origin %s: document for %s names a non-http URL", self.name, image_id)
            raise NotFound(image_id)
        return url

    @asynccontextmanager
    async def open(self, image_id: str) -> AsyncIterator[Source]:
        for doc_url in self.candidates(self.settings.url, quote(image_id, safe="")):
            try:
                url = await self._image_url(doc_url, image_id)
            except NotFound:
                continue
            headers = self.settings.headers if _same_origin(doc_url, url) else {}
            stack = AsyncExitStack()
            source = await stack.enter_async_context(open_url(self.session, url, headers))
            async with stack:
                yield source
            return
        raise NotFound(image_id)
