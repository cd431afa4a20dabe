"""Keeping the disk cache under `storage.cache_max_bytes`: least recently viewed images go first.

Each image's bytes on disk are measured when a job or an on-request build finishes and kept in
its row, so the total is one SUM and eviction never walks the whole tree. Over budget,
the evictor frees space down to 90 % of it: first the originals of the least recently viewed
images (cheap to pull again; renditions can still be derived from the largest one), then
whole images. An evicted image keeps its record with its stages cleared; its next view
rebuilds it. Images being built, and images viewed in the last minute (their files may be
streaming right now), are never evicted; and a file unlinked while a response streams it
stays readable through the open descriptor anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from imgproxy.cache.disk import remove, tree_size
from imgproxy.cache.layout import CacheLayout
from imgproxy.metadata.store import MetadataStore, StoreError
from imgproxy.metrics import Metrics

log = logging.getLogger(__name__)

LOW_WATER = 0.9  # evict down to this fraction of the budget
RECENT = 60.0  # seconds: an image viewed this recently is not evicted
TICK = 5.0  # seconds between flushes of view times and budget checks
BATCH = 50  # candidates read per round


class CacheBudget:
    def __init__(
        self,
        store: MetadataStore,
        layout: CacheLayout,
        max_bytes: int,
        metrics: Metrics,
        publish: Callable[[str], Awaitable[object]],
    ) -> None:
        self.store = store
        self.publish = publish
        self.layout = layout
        self.max_bytes = max_bytes
        self.metrics = metrics
        self.total = 0
        self._viewed: dict[str, float] = {}
        self._wake = asyncio.Event()

    def viewed(self, image_id: str) -> None:
        """Note a view (flushed to the store in batches)."""
        self._viewed[image_id] = time.time()

    async def measure(self, image_id: str) -> None:
        """Record how many bytes an image occupies now; wake the evictor when over budget."""
        size = await asyncio.to_thread(tree_size, self.layout.image_dir(image_id))
        await self.store.set_cache_bytes(image_id, size)
        self.total = await self.store.cache_total()
        if self.total > self.max_bytes:
            self._wake.set()

    async def run(self) -> None:
        """The background loop: flush view times, refresh the total, evict when over budget."""
        self.total = await self.store.cache_total()
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), TICK)
            self._wake.clear()
            try:
                await self.flush()
                self.total = await self.store.cache_total()
                if self.total > self.max_bytes:
                    await self.evict()
            except StoreError as exc:
                log.error("cache budget: metadata store failed: %s", exc)

    async def flush(self) -> None:
        viewed, self._viewed = self._viewed, {}
        await self.store.touch(viewed)

    async def evict(self) -> int:
        """Free space down to the low-water mark; returns the bytes freed."""
        target = int(self.max_bytes * LOW_WATER)
        freed = 0
        recent = time.time() - RECENT
        for phase in ("original", "image"):
            seen: set[str] = set()
            while self.total - freed > target:
                # Removing an original keeps the order, so page through; a removed image
                # drops out of the candidates by itself.
                offset = len(seen) if phase == "original" else 0
                candidates = [
                    c
                    for c in await self.store.eviction_candidates(recent, BATCH, offset)
                    if c not in seen and c not in self._viewed
                ]
                if not candidates:
                    break
                for image_id in candidates:
                    seen.add(image_id)
                    freed += await self._evict_one(image_id, phase)
                    if self.total - freed <= target:
                        break
        self.total = await self.store.cache_total()
        if freed:
            log.info("cache: evicted %d bytes; %d of %d in use", freed, self.total, self.max_bytes)
        return freed

    async def _evict_one(self, image_id: str, phase: str) -> int:
        before = await self.store.cache_bytes_of(image_id)
        if phase == "original":
            await asyncio.to_thread(remove, self.layout.original(image_id))
        else:
            # Stages first: from now on a view rebuilds instead of serving missing files.
            await self.store.evicted(image_id)
            await self.publish(image_id)
            await asyncio.to_thread(remove, self.layout.image_dir(image_id))
            self.metrics.inc("imgproxy_cache_evictions_total")
        size = await asyncio.to_thread(tree_size, self.layout.image_dir(image_id))
        await self.store.set_cache_bytes(image_id, size)
        return max(before - size, 0)
