"""What one run measures: sizes, sample counts and time bounds for the full and quick modes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
WORK_DIR = BENCH_DIR / "work"
ORIGINALS_DIR = WORK_DIR / "originals"
RUNS_DIR = WORK_DIR / "runs"
LOGS_DIR = WORK_DIR / "logs"
VENV_BIN = REPO_DIR / ".venv" / "bin"

FILE_PREFIX = "f-"  # IDs the file origin answers
HTTP_PREFIX = "h-"  # IDs the loopback http origin answers


@dataclass(frozen=True)
class Plan:
    quick: bool
    cold_count: int  # figure 1: distinct cold images
    cold_size: tuple[int, int]
    burst_count: int  # figure 1 detail: that many cold views at once on a fresh server
    burst_timeout: float  # bound on waiting for all of them to become ready
    big_size: tuple[int, int]  # figures 2 and 3
    pipeline_runs: int  # figure 2: fresh server per run, ours and bare dzsave alternating
    loaded_runs: int  # figure 3: fresh server per run, tiles sampled while the big image runs
    tiles_size: tuple[int, int]  # the small pre-warmed image whose tiles are hammered
    tile_connections: int  # figure 3: concurrent connections
    tile_gap: float  # figure 3: pause per connection between requests (0: closed loop)
    tile_idle_requests: int  # figure 3: reference sample count per run
    tile_busy_max_requests: int  # figure 3: upper bound per run while the big image processes
    load_connections: int  # figure 4
    load_seconds: float  # figure 4: per load-generator run
    ready_timeout: float  # bound on waiting for one image to become ready
    big_timeout: float  # bound on the big image's whole pipeline
    budget: float  # the whole run must finish within this many seconds

    @property
    def name(self) -> str:
        return "quick" if self.quick else "full"

    @property
    def results_path(self) -> Path:
        # The committed results hold the full run; a quick run never overwrites them.
        return WORK_DIR / "results-quick.md" if self.quick else BENCH_DIR / "results.md"


FULL = Plan(
    quick=False,
    cold_count=15,
    cold_size=(6000, 4000),
    burst_count=6,
    burst_timeout=40.0,
    big_size=(19360, 12912),
    pipeline_runs=5,
    loaded_runs=3,
    tiles_size=(3000, 2000),
    tile_connections=8,
    tile_gap=0.0,
    tile_idle_requests=3000,
    tile_busy_max_requests=50000,
    load_connections=64,
    load_seconds=8.0,
    ready_timeout=120.0,
    big_timeout=300.0,
    budget=600.0,
)

QUICK = Plan(
    quick=True,
    cold_count=10,
    cold_size=(6000, 4000),
    burst_count=4,
    burst_timeout=20.0,
    big_size=(9600, 6400),
    pipeline_runs=1,
    loaded_runs=1,
    tiles_size=(3000, 2000),
    tile_connections=8,
    tile_gap=0.0,
    tile_idle_requests=1500,
    tile_busy_max_requests=20000,
    load_connections=64,
    load_seconds=3.0,
    ready_timeout=60.0,
    big_timeout=90.0,
    budget=120.0,
)
