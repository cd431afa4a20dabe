"""The one crossing from async to sync: pyvips work runs in a bounded thread pool, never on the loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


NICENESS = 10


def lower_priority() -> None:
    """Run image work at a lower CPU priority than the event loop.

    On Linux the nice value is per thread and inherited by the threads a thread creates, so
    libvips' own worker threads, started from these, inherit it too. With both cores busy
    tiling, the loop thread still gets the CPU within a scheduler tick when a request arrives:
    cached files keep being served in milliseconds.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICENESS)
    except (OSError, AttributeError):  # not Linux, or not permitted: run at normal priority
        pass


class ProcessingPool:
    """A fixed number of threads; libvips releases the GIL, so they run truly in parallel."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="vips", initializer=lower_priority
        )
        self.busy = 0

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        self.busy += 1
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))
        finally:
            self.busy -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)
