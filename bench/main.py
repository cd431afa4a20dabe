"""Orchestration: generate (or reuse) the originals, run the figures within the time budget,
print the table and write the markdown results."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable

import pyvips

from bench import fig_cold, fig_pipeline, fig_throughput, images, report
from bench.plan import FULL, QUICK, Plan
from bench.servers import StaticOrigin

Figure = Callable[[Plan, images.TestSet, int, report.Report], Awaitable[None]]
GROUPS: dict[str, tuple[str, Figure]] = {
    "1": ("figure 1: cold first view", fig_cold.cold_first_view),
    "2": ("figures 2-3: whole pipeline, cached tiles under load", fig_pipeline.pipeline_figures),
    "4": ("figure 4: cached tile throughput", fig_throughput.tile_throughput),
}
RESERVE = 15.0  # seconds kept for stopping servers and writing the report
BUSY_LOAD = 1.0  # a 1-minute load average from which the run is flagged as noisy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller images, fewer samples")
    parser.add_argument(
        "--only",
        default=",".join(GROUPS),
        help="comma list of figure groups: 1 (cold view), 2 (figures 2 and 3), 4; default all",
    )
    return parser.parse_args(argv)


async def run(plan: Plan, groups: list[str]) -> report.Report:
    started = time.monotonic()
    result = report.Report(plan)
    print(f"imgproxy bench ({plan.name}): preparing originals under bench/work/", flush=True)
    busy = os.getloadavg()[0]
    if busy >= BUSY_LOAD:
        result.note(
            f"the machine was busy at the start (load average {busy:.2f} on "
            f"{len(os.sched_getaffinity(0))} cores): absolute figures are noisy, ratios less so"
        )
    test = await asyncio.to_thread(images.ensure_all, plan)
    origin = StaticOrigin()
    await origin.start()
    try:
        for key in groups:
            title, figure = GROUPS[key]
            remaining = plan.budget - (time.monotonic() - started) - RESERVE
            print(f"\n{title} ({remaining:.0f}s of budget left)", flush=True)
            try:
                await asyncio.wait_for(figure(plan, test, origin.port, result), remaining)
            except TimeoutError:
                result.add(report.Row(title, "", error=f"over the {plan.budget:.0f}s budget"))
            except Exception as exc:  # a figure's own rows carry their errors; this is the rest
                result.add(report.Row(title, "", error=f"{type(exc).__name__}: {exc}"))
    finally:
        await origin.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        print(f"unknown figure group(s): {', '.join(unknown)} (use {', '.join(GROUPS)})")
        return 2
    pyvips.cache_set_max(0)  # nothing decoded here is reused; keep this process small
    started = time.monotonic()
    result = asyncio.run(run(plan, groups))
    elapsed = time.monotonic() - started
    report.print_table(result)
    path = report.write(result, elapsed)
    print(f"\n{plan.name} run took {elapsed:.0f}s; results written to {path}")
    return 1 if result.errored else 0
