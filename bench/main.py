"""Orchestration: install missing references, generate (or reuse) the originals, run the
figures within the time budget, print the table and write the markdown results."""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pyvips

from bench import (
    fig_cold,
    fig_herd,
    fig_migration,
    fig_pipeline,
    fig_throughput,
    images,
    install,
    report,
)
from bench.plan import FULL, QUICK, WORK_DIR, Plan
from bench.servers import StaticOrigin

Figure = Callable[[Plan, images.TestSet, StaticOrigin, report.Report], Awaitable[None]]
PortFigure = Callable[[Plan, images.TestSet, int, report.Report], Awaitable[None]]


def _on_port(figure: PortFigure) -> Figure:
    def run(
        plan: Plan, test: images.TestSet, origin: StaticOrigin, result: report.Report
    ) -> Awaitable[None]:
        return figure(plan, test, origin.port, result)

    return run


@dataclass(frozen=True)
class Group:
    name: str
    title: str
    figures: tuple[str, ...]  # issue 7's figure numbers it measures
    run: Figure


# In run order: the cheap and the new figures first, the long 250 MPix pipeline last.
GROUPS = (
    Group(
        "cold",
        "figures 2, 3, 5: cold views vs thumbor and a bare thumbnail",
        ("2", "3", "5"),
        _on_port(fig_cold.cold_first_view),
    ),
    Group(
        "serving",
        "figures 4, 8: cached serving vs nginx, server memory",
        ("4", "8"),
        _on_port(fig_throughput.tile_throughput),
    ),
    Group("herd", "figure 7: thundering herd", ("7",), fig_herd.herd),
    Group(
        "migration",
        "figure 6 (and issue 4): migration vs bare pyvips, images/add answer time",
        ("6",),
        _on_port(fig_migration.migration_figures),
    ),
    Group(
        "pipeline",
        "figure 1: whole 250 MPix pipeline vs bare dzsave, tile p99 under that load",
        ("1",),
        _on_port(fig_pipeline.pipeline_figures),
    ),
)
RESERVE = 15.0  # seconds kept for stopping servers and writing the report
BUSY_LOAD = 1.0  # a 1-minute load average from which the run is flagged as noisy


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller images, fewer samples")
    parser.add_argument(
        "--only",
        default="",
        help="comma list of figure numbers (1-8) or group names ("
        + ", ".join(g.name for g in GROUPS)
        + "); default all. A partial run writes bench/work/results-only.md",
    )
    return parser.parse_args(argv)


def select(only: str) -> tuple[list[Group], list[str]]:
    """The groups asked for (in run order), and the words that name none."""
    words = [w.strip() for w in only.split(",") if w.strip()]
    if not words:
        return list(GROUPS), []
    unknown = [w for w in words if not any(w == g.name or w in g.figures for g in GROUPS)]
    chosen = [g for g in GROUPS if any(w == g.name or w in g.figures for w in words)]
    return chosen, unknown


async def run(plan: Plan, groups: list[Group]) -> report.Report:
    started = time.monotonic()
    result = report.Report(plan)
    busy = os.getloadavg()[0]
    if busy >= BUSY_LOAD:
        result.note(
            f"the machine was busy at the start (load average {busy:.2f} on "
            f"{len(os.sched_getaffinity(0))} cores): absolute figures are noisy, ratios less so"
        )
    if any(g.name in ("serving",) for g in groups):
        for note in await asyncio.to_thread(install.ensure_apt_tools):
            result.note(f"references: {note}")
    for name, argv in (("nginx (reference)", ["nginx", "-v"]), ("wrk", ["wrk", "--version"])):
        version = await asyncio.to_thread(install.tool_version, argv)
        if version:
            result.facts.append((name, version))
    print(f"imgproxy bench ({plan.name}): preparing originals under bench/work/", flush=True)
    test = await asyncio.to_thread(images.ensure_all, plan)
    origin = StaticOrigin()
    await origin.start()
    try:
        for group in groups:
            remaining = plan.budget - (time.monotonic() - started) - RESERVE
            print(f"\n{group.title} ({remaining:.0f}s of budget left)", flush=True)
            began = time.monotonic()
            try:
                await asyncio.wait_for(group.run(plan, test, origin, result), remaining)
            except TimeoutError:
                result.add(report.Row(group.title, "", error=f"over the {plan.budget:.0f}s budget"))
            except Exception as exc:  # a figure's own rows carry their errors; this is the rest
                result.add(report.Row(group.title, "", error=f"{type(exc).__name__}: {exc}"))
            result.timings.append((group.title, time.monotonic() - began))
    finally:
        await origin.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    groups, unknown = select(args.only)
    if unknown:
        names = ", ".join(g.name for g in GROUPS)
        print(f"unknown figure(s) or group(s): {', '.join(unknown)} (use 1-8 or {names})")
        return 2
    pyvips.cache_set_max(0)  # nothing decoded here is reused; keep this process small
    started = time.monotonic()
    result = asyncio.run(run(plan, groups))
    elapsed = time.monotonic() - started
    report.print_table(result)
    partial = len(groups) < len(GROUPS)
    path: Path = WORK_DIR / "results-only.md" if partial else plan.results_path
    report.write(result, elapsed, path)
    print(f"\n{plan.name} run took {elapsed:.0f}s; results written to {path}")
    return 1 if result.errored else 0
