"""The image service: start pulls, remember and publish state, let requests wait for stages.

The store is the truth; this keeps a small LRU of records so that hot requests rarely
touch SQLite, and fans every change out to the requests and event streams waiting on it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from cachetools import LRUCache, TTLCache

from imgproxy.cache.layout import CacheLayout
from imgproxy.images.negotiation import rendition_formats, rendition_widths
from imgproxy.images.singleflight import SingleFlight
from imgproxy.metadata.store import VIEWER, ImageRecord, MetadataStore
from imgproxy.settings import Settings

# Errors after which a new view tries the origin again (SPEC §3).
RETRYABLE_ERRORS = ("uploadError", "unknown", "statusUpdateError")
BUMP_TTL = 30.0  # seconds a raise of an image's priority is remembered
POLL_INTERVAL = 1.0  # catch changes made by another process (`imgproxy warm --process`)

Subscriber = asyncio.Queue[ImageRecord | None]


async def _admit_all(_count: int) -> None:
    return None


def _needs_pull(record: ImageRecord) -> bool:
    """A transient failure (SPEC §3: a later view tries again), or files evicted from the cache."""
    if record.status == "error":
        return record.error in RETRYABLE_ERRORS
    return record.status == "ready" and not record.placeholder


class ImageService:
    def __init__(self, settings: Settings, store: MetadataStore, layout: CacheLayout) -> None:
        self.settings = settings
        self.store = store
        self.layout = layout
        self._records: LRUCache[str, ImageRecord] = LRUCache(maxsize=50_000)
        self._subscribers: dict[str, set[Subscriber]] = {}
        self._starting: SingleFlight[str, ImageRecord | None] = SingleFlight()
        # Queued images a viewer already raised to viewer priority: a herd of views of one
        # queued image writes to the queue once, not once per request.
        self._raised: TTLCache[str, bool] = TTLCache(maxsize=10_000, ttl=BUMP_TTL)
        self.on_queued: Callable[[], None] = lambda: None  # the workers' wake-up, set by the app
        self.on_viewed: Callable[[str], None] = lambda image_id: None  # the cache's LRU clock
        self.admit: Callable[[int], Awaitable[None]] = _admit_all  # queue bound, set by the app
        self.on_gone: Callable[[str], None] = lambda image_id: None  # files deleted or evicted

    async def get(self, image_id: str) -> ImageRecord | None:
        record = self._records.get(image_id)
        if record is None:
            record = await self.store.get_image(image_id)
            if record is not None:
                self._records[image_id] = record
        return record

    async def view(
        self, image_id: str, priority: int = VIEWER, retry_failed: bool = True
    ) -> ImageRecord | None:
        """The image's record, starting its pull when cold (or when the last pull failed
        transiently); a viewer waiting raises the priority of an image already queued.
        None: no origin has it (found out already). `retry_failed=False` (info.json, events):
        report a failure as it is instead of pulling again on every poll."""
        self.on_viewed(image_id)
        record = await self.get(image_id)
        if record is None or (_needs_pull(record) and (retry_failed or record.status != "error")):
            return await self._starting.run(image_id, lambda: self._start(image_id, priority))
        if (
            record.status == "queued"
            and not record.placeholder
            and priority == VIEWER
            and image_id not in self._raised
        ):
            self._raised[image_id] = True
            await self.store.bump_priority(image_id, priority)
        return record

    async def get_reviving(self, image_id: str) -> ImageRecord | None:
        """A known image's record, starting a rebuild when its files were evicted (versioned and
        zoom routes: they never start the pull of an unknown ID)."""
        record = await self.get(image_id)
        if record is not None and record.status == "ready" and _needs_pull(record):
            return await self.view(image_id)
        return record

    async def _start(self, image_id: str, priority: int) -> ImageRecord | None:
        """Create a cold image, or requeue one whose last pull failed transiently.

        Runs once per ID at a time (many concurrent first views share it), and re-reads the
        store so that a pull started meanwhile is not started again.
        """
        record = await self.store.get_image(image_id)
        if record is None:
            await self.admit(1)
            await self.store.create_image(image_id, priority)
        elif _needs_pull(record):
            await self.admit(1)
            await self.store.requeue(image_id, priority)
        else:
            return await self.publish(image_id)
        if priority == VIEWER:
            self._raised[image_id] = True
        self.on_queued()
        return await self.publish(image_id)

    async def publish(self, image_id: str) -> ImageRecord | None:
        """Reload an image from the store and tell everyone waiting on it (None: it is gone)."""
        record = await self.store.get_image(image_id)
        if record is None or record.status != "queued":
            self._raised.pop(image_id, None)  # its job runs or is gone: a later requeue is new
        if record is None:
            self._records.pop(image_id, None)
        else:
            self._records[image_id] = record
        if record is None or not record.placeholder:
            self.on_gone(image_id)
        for queue in self._subscribers.get(image_id, ()):
            queue.put_nowait(record)
        return record

    def forget(self, image_id: str) -> None:
        self._records.pop(image_id, None)
        self.on_gone(image_id)

    @asynccontextmanager
    async def subscribe(self, image_id: str) -> AsyncIterator[Subscriber]:
        """A queue receiving the record after every change of this image (None when deleted)."""
        queue: Subscriber = asyncio.Queue()
        self._subscribers.setdefault(image_id, set()).add(queue)
        try:
            yield queue
        finally:
            subscribers = self._subscribers.get(image_id)
            if subscribers is not None:
                subscribers.discard(queue)
                if not subscribers:
                    del self._subscribers[image_id]

    async def wait_for(
        self,
        image_id: str,
        done: Callable[[ImageRecord], bool],
        timeout: float,
    ) -> ImageRecord | None:
        """Wait until `done(record)`, the image ends in error, or it vanishes (None).

        Returns the last record seen when `timeout` passes first.
        """
        deadline = time.monotonic() + timeout
        async with self.subscribe(image_id) as queue:
            record = await self.get(image_id)
            while True:
                if record is None or done(record) or record.status in ("error", "ready"):
                    return record
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return record
                try:
                    record = await asyncio.wait_for(
                        queue.get(), timeout=min(remaining, POLL_INTERVAL)
                    )
                except TimeoutError:
                    record = await self.store.get_image(image_id)

    # -- what a record offers ---------------------------------------------------------------

    def widths(self, record: ImageRecord) -> list[int]:
        if record.width is None:
            return []
        return rendition_widths(record.width, self.settings.processing.widths)

    def formats(self, record: ImageRecord) -> list[str]:
        return rendition_formats(self.settings.processing.formats, record.has_alpha)

    def info(self, record: ImageRecord) -> dict[str, Any]:
        """The info.json object (SPEC §3), with absolute URLs from server.public_url."""
        base = f"{self.settings.public_base()}/images/{record.id}"
        info: dict[str, Any] = {"id": record.id, "status": record.status}
        if record.status == "error":
            info["error"] = record.error
            if record.detail:
                info["reason"] = record.detail
        info.update(
            {
                "version": record.version,
                "width": record.width,
                "height": record.height,
                "stages": {
                    "placeholder": record.placeholder,
                    "display": record.display,
                    "zoom": record.zoom,
                },
                "placeholder": f"{base}/placeholder.jpg",
                "renditions": {
                    "widths": self.widths(record),
                    "formats": self.formats(record),
                    "url": f"{base}/v{record.version}/{{width}}.{{format}}",
                },
                "zoom": {"dzi": f"{base}/v{record.version}/zoom.dzi"},
            }
        )
        return info
