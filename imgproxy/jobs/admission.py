"""Admission to the job queue: beyond `processing.max_queue` jobs, new work is refused (503)
instead of piling up. The depth is read from the store at most twice a second."""

from __future__ import annotations

import time

from imgproxy.metadata.store import MetadataStore

REFRESH = 0.5


class QueueFull(Exception):
    def __init__(self, depth: int, limit: int) -> None:
        super().__init__(f"the job queue is full ({depth} of {limit} jobs); try again later")


class Admission:
    def __init__(self, store: MetadataStore, limit: int) -> None:
        self.store = store
        self.limit = limit
        self._depth = 0
        self._read_at = float("-inf")

    async def admit(self, adding: int = 1) -> None:
        """Raise QueueFull unless `adding` more jobs fit."""
        now = time.monotonic()
        if now - self._read_at > REFRESH:
            self._depth = await self.store.queue_depth()
            self._read_at = now
        if self._depth + adding > self.limit:
            raise QueueFull(self._depth, self.limit)
        self._depth += adding
