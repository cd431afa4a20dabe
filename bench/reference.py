"""Bare pyvips references, measured on the same files in the same run.

`python -m bench.reference SRC OUT` runs the bare dzsave in its own process and prints
`{"seconds": ..., "cpu_seconds": ..., "vm_hwm_kib": ...}` (its own CPU time and peak RSS).
"""

from __future__ import annotations

import asyncio
import json
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyvips


def thumbnail_seconds(path: Path, width: int = 32) -> float:
    """The cold-view reference: a bare shrink-on-load thumbnail, encoded to a JPEG buffer."""
    started = time.perf_counter()
    image = pyvips.Image.thumbnail(str(path), width)
    image.jpegsave_buffer()
    return time.perf_counter() - started


def one_rendition_seconds(path: Path, width: int) -> float:
    """What thumbor's figure needs at least: one shrink-on-load thumbnail, encoded to JPEG."""
    started = time.perf_counter()
    image = pyvips.Image.thumbnail(str(path), width, height=10_000_000, size="down")
    image.jpegsave_buffer(Q=82, keep="none", optimize_coding=True)
    return time.perf_counter() - started


def all_renditions_seconds(path: Path, widths: list[int], formats: list[str]) -> float:
    """What the display stage builds: every width and format from one decode, to buffers."""
    started = time.perf_counter()
    base = pyvips.Image.thumbnail(str(path), max(widths), height=10_000_000, size="down")
    base = base.copy_memory()
    for width in sorted(widths, reverse=True):
        image = base if width == base.width else base.resize(width / base.width, kernel="lanczos3")
        for fmt in formats:
            if fmt == "webp":
                image.webpsave_buffer(Q=82, keep="none", effort=2)
            else:
                image.jpegsave_buffer(Q=82, keep="none", optimize_coding=True)
    return time.perf_counter() - started


@dataclass(frozen=True)
class DzReference:
    seconds: float
    cpu_seconds: float
    vm_hwm_kib: int
    tiles: int

    @property
    def cores(self) -> float:
        """Average CPU cores used while tiling."""
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0


def count_tiles(root: Path, disk_ext: str = "jpeg") -> int:
    """Tile files under `root` (dzsave writes JPEG tiles as .jpeg)."""
    return sum(1 for p in root.rglob(f"*.{disk_ext}") if p.is_file())


async def dzsave_reference(src: Path, out_dir: Path, timeout: float) -> DzReference:
    """The bare `dzsave` of `src` in a subprocess; its pyramid is counted, then removed."""
    await asyncio.to_thread(_fresh_dir, out_dir)
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bench.reference", str(src), str(out_dir / "ref")],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise RuntimeError(f"reference dzsave failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    tiles = await asyncio.to_thread(count_tiles, out_dir)
    await asyncio.to_thread(shutil.rmtree, out_dir, True)
    return DzReference(
        float(result["seconds"]), float(result["cpu_seconds"]), int(result["vm_hwm_kib"]), tiles
    )


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _own_vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str]) -> None:
    src, base = argv
    cpu = _cpu()
    started = time.perf_counter()
    image = pyvips.Image.new_from_file(src, access="sequential")
    image.dzsave(base, tile_size=254, overlap=1, Q=82)
    seconds = time.perf_counter() - started
    result = {"seconds": seconds, "cpu_seconds": _cpu() - cpu, "vm_hwm_kib": _own_vm_hwm_kib()}
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
