"""Figure 7: thundering herd. Many concurrent cold `GET /images/{id}` of one ID (1,000; quick:
200), each on its own connection opened at once, on a fresh server: the loopback origin must
see exactly one request for the file, and every request must get its answer (the
placeholder). The time until all have answered is set beside the same herd once the image is
ready (the same bytes, `placeholder.jpg`, from the cache): what the cold coordination costs
over the connection storm itself. A single cold view of another image of the same size, just
before on the same server, is in the details.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from bench.client import BROWSER_ACCEPT, REQUEST_TIMEOUT, Timed, timed_get, wait_ready
from bench.images import Original, TestSet
from bench.plan import Plan
from bench.report import Report, Row
from bench.servers import ImgproxyServer, StaticOrigin, running

HERD_TIMEOUT = aiohttp.ClientTimeout(total=60)


@dataclass(frozen=True)
class Herd:
    started: float  # time.perf_counter() before the first request
    seconds: float  # until the last answer
    results: list[Timed | BaseException]

    @property
    def answers(self) -> list[Timed]:
        return [r for r in self.results if isinstance(r, Timed)]

    def outcomes(self) -> Counter[str]:
        done = Counter(f"{r.status} {r.headers.get('X-Image-Stage', '-')}" for r in self.answers)
        failed = Counter(type(r).__name__ for r in self.results if isinstance(r, BaseException))
        return done + failed

    def not_ok(self) -> int:
        return len(self.results) - sum(1 for r in self.answers if r.status == 200)

    def spread(self) -> str:
        times = sorted(r.seconds for r in self.answers)
        if not times:
            return "no answers"
        return (
            f"per request fastest {times[0] * 1e3:.0f} ms, median "
            f"{times[len(times) // 2] * 1e3:.0f} ms, slowest {times[-1] * 1e3:.0f} ms"
        )


def _rows(plan: Plan, original: Original) -> tuple[Row, Row]:
    size = f"{original.width}x{original.height}"
    fetches = Row(
        f"7. herd: {plan.herd_count:,} concurrent cold GETs of one {size} ID, origin fetches",
        "fetches",
        target="1 fetch, all 200",
        check=lambda r: r.ours == 1 and r.error is None,
    )
    answered = Row(
        f"7. herd: time until all {plan.herd_count:,} have an answer",
        "ms",
        reference_name="same herd, warm",
    )
    return fetches, answered


async def herd(plan: Plan, images: TestSet, origin: StaticOrigin, report: Report) -> None:
    alone, target = images.cold[-1], images.cold[-2]
    fetches, answered = _rows(plan, target)
    note = ""
    try:
        note = await _measure(plan, origin, alone, target, fetches, answered)
    except Exception as exc:
        for row in (fetches, answered):
            if row.ours is None:
                row.error = f"{type(exc).__name__}: {exc}"
    report.add(fetches)
    report.add(answered)
    if note:
        report.note(note)


async def _herd(url: str, count: int) -> Herd:
    """`count` GETs of `url` at once, each on its own new connection."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=HERD_TIMEOUT) as session:
        started = time.perf_counter()
        results: Sequence[Timed | BaseException] = await asyncio.gather(
            *(timed_get(session, url, {"Accept": BROWSER_ACCEPT}) for _ in range(count)),
            return_exceptions=True,
        )
        return Herd(started, time.perf_counter() - started, list(results))


async def _measure(
    plan: Plan,
    origin: StaticOrigin,
    alone: Original,
    target: Original,
    fetches: Row,
    answered: Row,
) -> str:
    async with (
        running(ImgproxyServer("herd", origin.port)) as server,
        aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
    ):
        single = await timed_get(
            session, f"{server.base_url}/images/{alone.image_id}", {"Accept": BROWSER_ACCEPT}
        )
        if single.status != 200:
            raise RuntimeError(f"cold GET {alone.image_id}: {single.status}")
        await wait_ready(session, server.base_url, alone.image_id, plan.ready_timeout)

        path = f"/{target.path.name}"
        before = origin.requests[path]
        cold = await _herd(f"{server.base_url}/images/{target.image_id}", plan.herd_count)
        # The origin is asked once per pull; let the job settle before counting.
        await wait_ready(session, server.base_url, target.image_id, plan.ready_timeout)
        count = origin.requests[path] - before
        asked = [t for t in origin.request_times.get(path, []) if t >= cold.started]
        asked_after = f"{(asked[0] - cold.started) * 1e3:.0f} ms" if asked else "-"
        warm = await _herd(
            f"{server.base_url}/images/{target.image_id}/placeholder.jpg", plan.herd_count
        )

    fetches.ours = count
    answered.ours = cold.seconds * 1e3
    answered.reference = warm.seconds * 1e3
    if cold.not_ok():
        fetches.error = (
            f"{cold.not_ok()} of {plan.herd_count} requests not answered 200: "
            f"{dict(cold.outcomes())}"
        )
    if warm.not_ok():
        answered.error = f"warm herd: {warm.not_ok()} not answered 200: {dict(warm.outcomes())}"
    return (
        f"figure 7: {plan.herd_count} concurrent cold GET /images/{target.image_id} on a fresh "
        f"server, each on its own connection opened at once: answers {dict(cold.outcomes())}, "
        f"{cold.spread()} (connection set-up included); origin requests for the file: {count}, "
        f"the first {asked_after} after the herd started; the same herd on "
        f"placeholder.jpg once ready: {warm.spread()}; one cold view of {alone.image_id} "
        f"alone on the same server just before: {single.seconds * 1e3:.0f} ms"
    )
