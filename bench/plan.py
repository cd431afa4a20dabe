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
MIGRATION_PREFIX = "m-"  # files fetched by URL through /v2/images/add (no origin answers them)


@dataclass(frozen=True)
class Plan:
    quick: bool
    cold_count: int  # figures 2, 3, 5: distinct cold images (also thumbor's)
    cold_size: tuple[int, int]
    burst_count: int  # figure 5 detail: that many cold views at once on a fresh server
    burst_timeout: float  # bound on waiting for all of them to become ready
    big_size: tuple[int, int]  # figure 1 and the tile p99 under load
    pipeline_runs: int  # figure 1: fresh server per run, ours and bare dzsave alternating
    loaded_runs: int  # tile p99 under load: fresh server per run
    tiles_size: tuple[int, int]  # the small pre-warmed image whose tiles are sampled under load
    tile_connections: int  # tile p99 under load: concurrent connections
    tile_gap: float  # tile p99 under load: pause per connection between requests (0: closed)
    tile_idle_requests: int  # tile p99 under load: reference sample count per run
    tile_busy_max_requests: int  # tile p99 under load: upper bound per run while the big runs
    serve_images: int  # figure 4: cold-set images made ready whose tiles and renditions rotate
    load_connections: int  # figure 4
    load_seconds: float  # figure 4: per load-generator run (tiles, ours and nginx)
    side_load_seconds: float  # figure 4: the secondary runs (renditions, bare aiohttp)
    migration_count: int  # figure 6: distinct originals through /v2/images/add
    migration_size: tuple[int, int]
    migration_timeout: float  # bound on each side of figure 6
    add_count: int  # issue 4: URLs in one /v2/images/add (answer time)
    add_rounds: int  # issue 4: that many adds (and echoes), the figure is the median
    herd_count: int  # figure 7: concurrent cold requests for one ID
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
    cold_count=12,
    cold_size=(6000, 4000),
    burst_count=6,
    burst_timeout=40.0,
    big_size=(19360, 12912),
    pipeline_runs=4,
    loaded_runs=2,
    tiles_size=(3000, 2000),
    tile_connections=8,
    tile_gap=0.0,
    tile_idle_requests=3000,
    tile_busy_max_requests=50000,
    serve_images=2,
    load_connections=64,
    load_seconds=15.0,
    side_load_seconds=6.0,
    migration_count=500,
    migration_size=(1732, 1155),
    migration_timeout=300.0,
    add_count=1000,
    add_rounds=3,
    herd_count=1000,
    ready_timeout=120.0,
    big_timeout=300.0,
    budget=600.0,
)

QUICK = Plan(
    quick=True,
    cold_count=4,
    cold_size=(6000, 4000),
    burst_count=3,
    burst_timeout=20.0,
    big_size=(9600, 6400),
    pipeline_runs=1,
    loaded_runs=1,
    tiles_size=(3000, 2000),
    tile_connections=8,
    tile_gap=0.0,
    tile_idle_requests=1500,
    tile_busy_max_requests=20000,
    serve_images=2,
    load_connections=64,
    load_seconds=3.0,
    side_load_seconds=2.0,
    migration_count=60,
    migration_size=(1732, 1155),
    migration_timeout=60.0,
    add_count=1000,
    add_rounds=1,
    herd_count=200,
    ready_timeout=60.0,
    big_timeout=90.0,
    budget=120.0,
)
