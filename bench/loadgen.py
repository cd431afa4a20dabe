"""Throughput at many keep-alive connections: `wrk` when installed, else an aiohttp generator."""

from __future__ import annotations

import asyncio
import re
import shutil
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from bench.client import percentile
from bench.plan import WORK_DIR

WARMUP_SECONDS = 1.0


@dataclass(frozen=True)
class Throughput:
    tool: str
    requests: int
    errors: int
    seconds: float
    p50: float | None = None  # latency, seconds
    p99: float | None = None

    def describe(self) -> str:
        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1e3:.1f} ms"

        return (
            f"{self.requests} requests in {self.seconds:.1f}s ({self.per_second:,.0f}/s, "
            f"{self.tool}), p50 {ms(self.p50)}, p99 {ms(self.p99)}, {self.errors} errors"
        )

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def have_wrk() -> bool:
    return shutil.which("wrk") is not None


def _lua_script(paths: Sequence[str]) -> str:
    listed = ",\n".join(f'  "{p}"' for p in paths)
    return (
        f"local paths = {{\n{listed}\n}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
    )


UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _latency(output: str, percent: str) -> float | None:
    """A line of wrk's --latency distribution (e.g. `99%  12.34ms`), in seconds."""
    found = re.search(rf"^\s*{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.MULTILINE)
    return float(found.group(1)) * UNITS[found.group(2)] if found else None


def _parse_wrk(output: str, seconds: float) -> Throughput:
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    if total is None:
        raise RuntimeError(f"cannot read wrk output:\n{output}")
    duration = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    errors = 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors += int(non2xx.group(1))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if socket_errors:
        errors += sum(int(g) for g in socket_errors.groups())
    return Throughput(
        "wrk",
        int(total.group(1)),
        errors,
        duration or seconds,
        _latency(output, "50"),
        _latency(output, "99"),
    )


async def run_wrk(
    base_url: str, paths: Sequence[str], connections: int, seconds: float
) -> Throughput:
    """One wrk thread (the server under test keeps the other core), `connections` keep-alive."""
    script = WORK_DIR / "wrk-paths.lua"
    script.write_text(_lua_script(paths))
    argv = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "5s",
        "--latency",
        "-s",
        str(script),
        base_url,
    ]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=seconds + 30
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    return _parse_wrk(done.stdout, seconds)


async def run_aiohttp(
    base_url: str, paths: Sequence[str], connections: int, seconds: float
) -> Throughput:
    """The fallback: closed-loop aiohttp clients in this process (the client may be the limit)."""
    count = 0
    errors = 0
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)

    async def client(session: aiohttp.ClientSession, offset: int) -> None:
        nonlocal count, errors
        i = offset
        while time.monotonic() < deadline:
            t = time.perf_counter()
            try:
                async with session.get(base_url + paths[i % len(paths)]) as response:
                    await response.read()
                    if response.status == 200:
                        count += 1
                        latencies.append(time.perf_counter() - t)
                    else:
                        errors += 1
            except (aiohttp.ClientError, TimeoutError):
                errors += 1
            i += 1

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(client(session, n) for n in range(connections)))
    elapsed = time.monotonic() - started
    if not latencies:
        return Throughput("aiohttp", count, errors, elapsed)
    p50, p99 = statistics.median(latencies), percentile(latencies, 99)
    return Throughput("aiohttp", count, errors, elapsed, p50, p99)


async def measure(
    base_url: str, paths: Sequence[str], connections: int, seconds: float
) -> Throughput:
    """A short warm-up, then the measured run, with wrk if installed."""
    run = run_wrk if have_wrk() else run_aiohttp
    await run(base_url, paths, connections, WARMUP_SECONDS)
    return await run(base_url, paths, connections, seconds)
