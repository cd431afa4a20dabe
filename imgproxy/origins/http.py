"""`http` origin: a URL template on a web server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from urllib.parse import quote

import aiohttp

from imgproxy.origins.base import NotFound, PatternMixin, Source
from imgproxy.origins.fetch import open_url
from imgproxy.settings import OriginSettings


class HttpOrigin(PatternMixin):
    def __init__(self, settings: OriginSettings, session: aiohttp.ClientSession) -> None:
        self._init_pattern(settings)
        self.session = session

    @asynccontextmanager
    async def open(self, image_id: str) -> AsyncIterator[Source]:
        # IDs are validated to URL-safe characters; quote anyway so a template cannot be bent.
        for url in self.candidates(self.settings.url, quote(image_id, safe="")):
            stack = AsyncExitStack()
            try:
                source = await stack.enter_async_context(
                    open_url(self.session, url, self.settings.headers)
                )
            except NotFound:
                await stack.aclose()
                continue
            async with stack:
                yield source
            return
        raise NotFound(image_id)
