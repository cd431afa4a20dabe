"""Workers: `processing.workers` tasks taking jobs from the durable queue, most urgent first,
plus one express worker that only takes jobs a viewer is waiting for: a cold view gets its
placeholder promptly even while every regular worker is busy with a long bulk job."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from imgproxy.jobs.runner import JobContext, run_job
from imgproxy.metadata.store import BULK, VIEWER, StoreError

log = logging.getLogger(__name__)

IDLE_POLL = 1.0  # also picks up jobs queued by another process (`imgproxy warm`)


class Workers:
    def __init__(
        self, ctx: JobContext, count: int, on_idle: Callable[[], None] = lambda: None
    ) -> None:
        self.ctx = ctx
        self.count = count
        self.on_idle = on_idle  # blocking (malloc_trim): runs in a thread when all are idle
        self.busy = 0
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._loop(BULK), name=f"worker-{i}") for i in range(self.count)
        ]
        self._tasks.append(asyncio.create_task(self._loop(VIEWER), name="worker-express"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _loop(self, max_priority: int) -> None:
        while True:
            self._wake.clear()  # before claiming, so a job queued meanwhile wakes us
            try:
                job = await self.ctx.store.claim_job(max_priority)
            except StoreError as exc:
                log.error("cannot read the job queue: %s", exc)
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL)
                continue
            self.busy += 1
            try:
                await run_job(self.ctx, job)
            except Exception:
                # run_job records failures itself; this is the store failing underneath it.
                log.exception("worker: job %s failed outside its own error handling", job.image_id)
            except asyncio.CancelledError:
                # Shutting down mid-job: hand it back so the next start resumes it.
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self.ctx.store.release_job(job.image_id))
                raise
            finally:
                self.busy -= 1
            if self.busy == 0:
                await asyncio.to_thread(self.on_idle)
