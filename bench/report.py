"""The results table: one line per figure (ours, reference, ratio, target, pass/fail), plus
machine facts, printed and written as markdown."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pyvips

from bench.plan import REPO_DIR, Plan

HEADERS = ("figure", "ours", "reference", "ratio", "target", "result")


@dataclass
class Row:
    """One figure. `passed` None means a baseline line with no target."""

    figure: str
    unit: str
    ours: float | None = None
    reference: float | None = None
    reference_name: str = ""
    target: str = "-"
    check: Callable[[Row], bool] | None = None
    error: str | None = None
    paired_ratio: float | None = None  # median of per-run ours/reference ratios, when runs pair up
    unavailable: str | None = None  # why the reference could not be measured (ours still is)

    @property
    def ratio(self) -> float | None:
        if self.paired_ratio is not None:
            return self.paired_ratio
        if self.ours is None or not self.reference:
            return None
        return self.ours / self.reference

    @property
    def result(self) -> str:
        if self.error is not None:
            return "ERROR"
        if self.check is None:
            return "info"
        if self.unavailable is not None and self.reference is None and self.needs_reference:
            return "no ref"
        return "pass" if self.check(self) else "FAIL"

    @property
    def needs_reference(self) -> bool:
        return self.target.startswith("ratio")

    def cells(self) -> tuple[str, ...]:
        ref = _value(self.reference, self.unit)
        if self.reference_name and self.reference is not None:
            ref = f"{ref} ({self.reference_name})"
        elif self.unavailable is not None:
            ref = f"unavailable ({self.reference_name})" if self.reference_name else "unavailable"
        ratio = "-" if self.ratio is None else f"{self.ratio:.3f}x"
        return (self.figure, _value(self.ours, self.unit), ref, ratio, self.target, self.result)


FORMATS = {  # unit -> format spec of its number
    "ms": ".1f",
    "s": ".2f",
    "MiB": ".0f",
    "MB": ".0f",
    "img/s": ".2f",
    "req/s": ",.0f",
}


def _value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "fetches":
        return f"{value:.0f} fetch{'' if value == 1 else 'es'}"
    return f"{value:{FORMATS.get(unit, 'g')}} {unit}"


@dataclass
class Report:
    plan: Plan
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    facts: list[tuple[str, str]] = field(default_factory=list)  # versions of the references
    timings: list[tuple[str, float]] = field(default_factory=list)  # seconds per figure group
    started: datetime.datetime = field(default_factory=lambda: datetime.datetime.now(datetime.UTC))
    load_before: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(text_line(row.cells()), flush=True)
        if row.error:
            print(f"    error: {row.error}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"    {text}", flush=True)

    @property
    def failed(self) -> bool:
        return any(row.result in ("FAIL", "ERROR") for row in self.rows)

    @property
    def errored(self) -> bool:
        return any(row.error is not None for row in self.rows)


WIDTHS = (58, 14, 30, 7, 16, 6)


def text_line(cells: Sequence[str]) -> str:
    return "  ".join(cell.ljust(width) for cell, width in zip(cells, WIDTHS, strict=True)).rstrip()


def print_table(report: Report) -> None:
    print()
    print(text_line(HEADERS))
    print(text_line(tuple("-" * w for w in WIDTHS)))
    for row in report.rows:
        print(text_line(row.cells()))


def _git(*args: str) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return done.stdout.strip() if done.returncode == 0 else "?"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "?"


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    except OSError:
        pass
    return 0.0


def _load(values: tuple[float, float, float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def machine_facts(report: Report) -> list[tuple[str, str]]:
    dirty = " (uncommitted changes)" if _git("status", "--porcelain", "--", "imgproxy") else ""
    return [
        ("nproc", str(len(os.sched_getaffinity(0)))),
        ("cpu", _cpu_model()),
        ("memory", f"{_mem_total_gib():.1f} GiB"),
        ("kernel", platform.release()),
        ("python", platform.python_version()),
        ("libvips", f"{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}"),
        ("pyvips", pyvips.__version__),
        ("aiohttp", aiohttp.__version__),
        ("imgproxy commit", _git("rev-parse", "--short", "HEAD") + dirty),
        *report.facts,
        (
            "load average (1/5/15 min)",
            f"{_load(report.load_before)} before, {_load(os.getloadavg())} after the run",
        ),
    ]


def markdown(report: Report, elapsed: float) -> str:
    def md_row(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    lines = [
        f"# imgproxy benchmark ({report.plan.name} run)",
        "",
        f"Date: {report.started:%Y-%m-%d %H:%M} UTC · run time {elapsed:.0f} s · "
        "`make bench` (`make bench-quick` writes bench/work/results-quick.md)",
        "",
        "Every reference is measured in the same run, side by side; ratio = ours / reference "
        "(for repeated paired runs or images, the median of the per-pair ratios). Figures are "
        "numbered as in issue 7; lines marked (issue 4) are issue 4's; 1b is the tile latency "
        "under load that accompanies figure 1. A result `no ref` means the reference could "
        "not be had (see the end).",
        "",
        md_row(HEADERS),
        md_row(("---",) * len(HEADERS)),
        *(md_row(row.cells()) for row in report.rows),
        "",
        "## Machine",
        "",
        *(f"- {name}: {value}" for name, value in machine_facts(report)),
        "",
        "## Details",
        "",
        *(f"- {note}" for note in report.notes),
        "",
        "## Run time per figure group",
        "",
        *(f"- {title}: {seconds:.0f} s" for title, seconds in report.timings),
    ]
    errors = [f"- {row.figure}: {row.error}" for row in report.rows if row.error]
    if errors:
        lines += ["", "## Errors", "", *errors]
    missing = [f"- {row.figure}: {row.unavailable}" for row in report.rows if row.unavailable]
    if missing:
        lines += ["", "## References unavailable", "", *missing]
    return "\n".join(lines) + "\n"


def write(report: Report, elapsed: float, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(report, elapsed), encoding="utf-8")
    return path
