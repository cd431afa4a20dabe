"""Warming: queue a whole origin collection with bulk priority and follow it until done.

`imgproxy warm` (a running server's workers, or its own with --process) and
`processing.mode = "eager"` (the server warms every listable origin at start-up) share this.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from imgproxy.images.ids import is_valid_id
from imgproxy.metadata.store import BULK
from imgproxy.origins.base import Origin
from imgproxy.state import AppState

log = logging.getLogger(__name__)

CHUNK = 500  # IDs per transaction: short write locks, steady progress


@dataclass
class Queued:
    batch: str
    queued: int = 0
    ready: int = 0
    invalid: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.queued + self.ready


@dataclass(frozen=True)
class Progress:
    total: int
    counts: dict[str, int]
    elapsed: float

    @property
    def ready(self) -> int:
        return self.counts.get("ready", 0)

    @property
    def errors(self) -> dict[str, int]:
        return {
            k.removeprefix("error:"): n for k, n in self.counts.items() if k.startswith("error:")
        }

    @property
    def done(self) -> int:
        return self.ready + sum(self.errors.values())

    def line(self, skipped: int) -> str:
        rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
        left = self.total - self.done
        eta = f"{left / rate:.0f}s" if rate > 0 else "?"
        errors = sum(self.errors.values())
        return (
            f"{self.done}/{self.total} done ({errors} errors, {skipped} already ready), "
            f"{rate:.1f} img/s, ETA {eta}"
        )


def listable(origin: Origin) -> bool:
    return callable(getattr(origin, "list_ids", None))


async def origin_ids(origin: Origin) -> AsyncIterator[str]:
    """The IDs an origin lists (directory walk, S3 listing, FTP listing)."""
    lister: Callable[[], AsyncIterator[str]] = getattr(origin, "list_ids")  # noqa: B009
    async for image_id in lister():
        yield image_id


async def lines_ids(lines: Iterable[str]) -> AsyncIterator[str]:
    """IDs from a list (a file or stdin, for http and rest origins): one per line, # comments."""
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            yield text


async def queue_ids(
    state: AppState, ids: AsyncIterable[str], origin: str | None, batch: str | None = None
) -> Queued:
    """Queue every valid ID with bulk priority, in chunks; ready ones are skipped (resumable)."""
    result = Queued(batch or secrets.token_hex(6))
    chunk: list[str] = []

    async def flush() -> None:
        queued, ready = await state.store.enqueue_batch(chunk, origin, result.batch, BULK)
        result.queued += queued
        result.ready += ready
        chunk.clear()
        state.workers.wake()

    seen: set[str] = set()
    async for image_id in ids:
        if not is_valid_id(image_id):
            result.invalid.append(image_id)
            continue
        if image_id in seen:
            continue
        seen.add(image_id)
        chunk.append(image_id)
        if len(chunk) >= CHUNK:
            await flush()
    if chunk:
        await flush()
    return result


async def follow(
    state: AppState, queued: Queued, report: Callable[[Progress], None], interval: float = 1.0
) -> Progress:
    """Poll the batch until every queued image is ready or in error, reporting each time."""
    started = time.monotonic()
    while True:
        counts = await state.store.batch_counts(queued.batch)
        progress = Progress(queued.queued, counts, time.monotonic() - started)
        report(progress)
        if progress.done >= progress.total:
            return progress
        await asyncio.sleep(interval)


async def warm_all(state: AppState) -> None:
    """Eager mode: queue every listable origin's collection in the background at start-up."""
    for origin in state.origins:
        if not listable(origin):
            log.info("eager: origin %s cannot list its collection; skipped", origin.name)
            continue
        try:
            queued = await queue_ids(state, origin_ids(origin), origin.name)
        except Exception:
            log.exception("eager: listing origin %s failed", origin.name)
            continue
        log.info(
            "eager: origin %s: %d queued, %d already ready",
            origin.name,
            queued.queued,
            queued.ready,
        )


async def run_warm(
    state: AppState,
    origin_name: str | None,
    id_lines: Iterable[str] | None,
    out: Callable[[str], None],
    interval: float = 1.0,
) -> int:
    """The `imgproxy warm` command: queue, follow with a progress line, print a summary.

    Returns the exit status: 0 when every image ended ready, 1 when some ended in error,
    2 when nothing could be listed.
    """
    origins = [o for o in state.origins if origin_name is None or o.name == origin_name]
    if not origins:
        out(f"no origin named {origin_name!r}")
        return 2
    sources: list[tuple[str | None, AsyncIterator[str]]] = []
    if id_lines is not None:
        sources.append((origin_name, lines_ids(id_lines)))
    else:
        for origin in origins:
            if listable(origin):
                sources.append((origin.name, origin_ids(origin)))
            else:
                out(f"origin {origin.name} cannot list its collection: pass --ids FILE (or -)")
        if not sources:
            return 2
    batch = secrets.token_hex(6)
    total = Queued(batch)
    for name, ids in sources:
        queued = await queue_ids(state, ids, name, batch)
        total.queued += queued.queued
        total.ready += queued.ready
        total.invalid += queued.invalid
    for bad in total.invalid[:10]:
        out(f"skipped invalid id {bad[:80]!r}")
    out(f"queued {total.queued} images ({total.ready} already ready) with bulk priority")

    def report(progress: Progress) -> None:
        out("\r" + progress.line(total.ready))

    final = await follow(state, total, report, interval)
    errors = final.errors
    summary = ", ".join(f"{code}: {n}" for code, n in sorted(errors.items())) or "none"
    out(
        f"\nwarm finished in {final.elapsed:.1f}s: {final.ready} ready, "
        f"{sum(errors.values())} errors ({summary}), {total.ready} skipped as already ready"
    )
    return 1 if errors else 0
