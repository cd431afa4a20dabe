"""Figure 6 and issue 4's management figures, on one fresh server with an organisation made by
`imgproxy org create`.

Figure 6: distinct 2 MPix JPEGs (500; quick: 60) added by URL in one `POST /v2/images/add`
(the loopback http origin), timed until `/v2/folder/status` counts every one complete;
images fully ready per second, beside a bare pyvips loop (migration_ref.py) building the same
outputs from the same files with the same parallelism (processing.workers processes). The
reference runs in two halves around ours (first half, ours, second half), so a load that
drifts on a shared machine weighs on both sides alike. A detail line adds the same bare loop
in 2 threads of one process (the server's model) on the first half.

Issue 4: the answer time of one `/v2/images/add` of 1,000 URLs, beside a trivial aiohttp JSON
echo of the same body (bare_static.py); after the migration, rounds alternating echo and ours.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import REQUEST_TIMEOUT
from bench.images import TestSet
from bench.plan import WORK_DIR, Plan
from bench.report import Report, Row
from bench.servers import (
    BareStaticServer,
    ImgproxyServer,
    cpu_seconds,
    run_cli,
    running,
)

MIGRATION_RATIO_TARGET = 0.85
ADD_TARGET_MS = 500.0  # "well under a second"
STATUS_POLL = 0.25
REF_DIR = WORK_DIR / "ref-migration"


@dataclass(frozen=True)
class Account:
    organisation: str
    api_key: str
    root_folder: str

    def body(self, **fields: Any) -> dict[str, Any]:
        return {"organisationId": self.organisation, "apiKey": self.api_key, **fields}


@dataclass(frozen=True)
class Migration:
    seconds: float
    cores: float
    ready: int
    errored: int
    files: int
    bytes: int


@dataclass(frozen=True)
class BareMigration:
    seconds: float
    cpu_seconds: float
    files: int
    bytes: int

    @property
    def cores(self) -> float:
        return self.cpu_seconds / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: BareMigration) -> BareMigration:
        return BareMigration(
            self.seconds + other.seconds,
            self.cpu_seconds + other.cpu_seconds,
            self.files + other.files,
            self.bytes + other.bytes,
        )


def _load1() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def _rows(plan: Plan, images: TestSet, workers: int) -> tuple[Row, Row]:
    w, h = plan.migration_size
    migration = Row(
        f"6. migration: {len(images.migration)} distinct {w}x{h} JPEGs via /v2/images/add, "
        f"{workers} workers",
        "img/s",
        reference_name=f"bare pyvips, {workers} procs",
        target=f"ratio >= {MIGRATION_RATIO_TARGET}",
        check=lambda r: r.ratio is not None and r.ratio >= MIGRATION_RATIO_TARGET,
    )
    add = Row(
        f"6. (issue 4) /v2/images/add of {plan.add_count:,} URLs: answer time, "
        f"median of {plan.add_rounds}",
        "ms",
        reference_name="aiohttp JSON echo",
        target=f"<= {ADD_TARGET_MS:.0f} ms",
        check=lambda r: r.ours is not None and r.ours <= ADD_TARGET_MS,
    )
    return migration, add


async def migration_figures(plan: Plan, images: TestSet, origin_port: int, report: Report) -> None:
    server = ImgproxyServer("migration", origin_port)
    migration, add = _rows(plan, images, server.workers)
    notes: list[str] = []
    urls = [f"http://127.0.0.1:{origin_port}/{o.path.name}" for o in images.migration]
    try:
        async with (
            running(server),
            aiohttp.ClientSession(timeout=REQUEST_TIMEOUT) as session,
        ):
            account = await _organisation(server)
            try:
                sources = [o.path for o in images.migration]
                half = len(sources) // 2
                loads = [_load1()]
                first = await _bare(plan, sources[:half], server.workers)
                loads.append(_load1())
                ours = await _migrate(plan, session, server, account, urls)
                loads.append(_load1())
                second = await _bare(plan, sources[half:], server.workers)
                loads.append(_load1())
                threads = await _bare(plan, sources[:half], server.workers, "threads")
                bare = first + second
                migration.ours = ours.ready / ours.seconds
                migration.reference = len(urls) / bare.seconds
                if ours.errored:
                    migration.error = f"{ours.errored} of {len(urls)} images ended in error"
                notes.append(
                    f"figure 6: ours {ours.ready} ready in {ours.seconds:.1f} s using "
                    f"{ours.cores:.2f} cores on average ({ours.files} files, "
                    f"{ours.bytes / 1e6:.0f} MB built, originals excluded); bare pyvips "
                    f"{len(urls)} in {first.seconds:.1f} + {second.seconds:.1f} s (halves "
                    f"before and after ours) using {bare.cores:.2f} cores ({bare.files} files, "
                    f"{bare.bytes / 1e6:.0f} MB); 1-min load average at each switch "
                    f"{' / '.join(loads)}; ours is timed from the add request until "
                    f"/v2/folder/status counts all complete (polled every {STATUS_POLL} s) and "
                    "includes each download from the loopback origin"
                )
                notes.append(
                    f"figure 6 detail: the bare loop in {server.workers} threads of one process "
                    f"(the server's model) on the first {half} images: "
                    f"{half / threads.seconds:.2f} img/s using {threads.cores:.2f} cores, "
                    f"{half / threads.seconds / migration.reference:.3f}x the processes' rate; "
                    f"ours / threads {migration.ours / (half / threads.seconds):.3f}x"
                )
            except Exception as exc:
                migration.error = f"{type(exc).__name__}: {exc}"
            try:
                ours_ms, echo_ms = await _add_rounds(plan, session, server, account, urls)
                add.ours = statistics.median(ours_ms)
                add.reference = statistics.median(echo_ms)
                notes.append(
                    f"issue 4 images/add: {plan.add_count} URLs in one body "
                    f"({_body_kb(account, urls, plan.add_count):.0f} KB), rounds alternating "
                    f"echo then ours, after figure 6 on the same server (the queued jobs of "
                    f"each round run during the next): ours {_list_ms(ours_ms)}, echo "
                    f"{_list_ms(echo_ms)}"
                )
            except Exception as exc:
                add.error = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # the server or the organisation
        for row in (migration, add):
            if row.error is None and row.ours is None:
                row.error = f"{type(exc).__name__}: {exc}"
    report.add(migration)
    report.add(add)
    for note in notes:
        report.note(note)


def _list_ms(values: list[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values) + " ms"


def _add_items(urls: list[str], count: int) -> list[dict[str, str]]:
    return [{"sourceUrl": urls[i % len(urls)]} for i in range(count)]


def _body_kb(account: Account, urls: list[str], count: int) -> float:
    body = account.body(folderId="x", images=_add_items(urls, count))
    return len(json.dumps(body)) / 1e3


async def _organisation(server: ImgproxyServer) -> Account:
    """`imgproxy org create` on the running server's storage (works at once, SPEC §5)."""
    done = await run_cli("org", "create", "bench", "-c", str(server.config))
    if done.returncode != 0:
        raise RuntimeError(f"imgproxy org create failed: {done.stderr.strip()[-500:]}")
    made = json.loads(done.stdout.strip().splitlines()[-1])
    return Account(made["organisationId"], made["apiKey"], made["rootFolderId"])


async def _post(
    session: aiohttp.ClientSession, url: str, body: dict[str, Any]
) -> tuple[float, dict[str, Any]]:
    """POST a JSON body; (seconds until the whole answer was read, the parsed answer)."""
    data = json.dumps(body).encode()
    started = time.perf_counter()
    async with session.post(
        url, data=data, headers={"Content-Type": "application/json"}
    ) as response:
        text = await response.read()
        seconds = time.perf_counter() - started
        if response.status != 200:
            raise RuntimeError(f"POST {url}: {response.status} {text[:300]!r}")
    answer: dict[str, Any] = json.loads(text)
    return seconds, answer


async def _folder(
    session: aiohttp.ClientSession, server: ImgproxyServer, account: Account, name: str
) -> str:
    _, made = await _post(
        session,
        f"{server.base_url}/v2/folder/create",
        account.body(parentId=account.root_folder, name=name),
    )
    return str(made["result"]["id"])


async def _migrate(
    plan: Plan,
    session: aiohttp.ClientSession,
    server: ImgproxyServer,
    account: Account,
    urls: list[str],
) -> Migration:
    folder = await _folder(session, server, account, "migration")
    cpu_before = cpu_seconds(server.pid)
    started = time.perf_counter()
    _, added = await _post(
        session,
        f"{server.base_url}/v2/images/add",
        account.body(folderId=folder, images=_add_items(urls, len(urls))),
    )
    if len(added["result"]["images"]) != len(urls):
        raise RuntimeError(f"images/add answered {len(added['result']['images'])} images")
    deadline = time.monotonic() + plan.migration_timeout
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        _, answer = await _post(
            session, f"{server.base_url}/v2/folder/status", account.body(folderId=folder)
        )
        stats = answer["result"]
        if int(stats["numComplete"]) + len(stats["erroredIds"]) >= len(urls):
            break
        await asyncio.sleep(STATUS_POLL)
    else:
        raise TimeoutError(
            f"migration not done after {plan.migration_timeout:.0f}s: "
            f"{stats.get('numComplete')} of {len(urls)} complete"
        )
    seconds = time.perf_counter() - started
    cores = (cpu_seconds(server.pid) - cpu_before) / seconds
    files, size = await asyncio.to_thread(_built_files, server.layout.root)
    return Migration(
        seconds, cores, int(stats["numComplete"]), len(stats["erroredIds"]), files, size
    )


def _built_files(root: Path) -> tuple[int, int]:
    """Files under the cache, pulled originals excluded."""
    count = size = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if name == "original":
                continue
            count += 1
            size += (Path(dirpath) / name).stat().st_size
    return count, size


async def _bare(
    plan: Plan, sources: list[Path], workers: int, mode: str = "procs"
) -> BareMigration:
    await asyncio.to_thread(shutil.rmtree, REF_DIR, True)
    REF_DIR.mkdir(parents=True)
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bench.migration_ref", str(REF_DIR), str(workers), mode],
            input="\n".join(str(p) for p in sources),
            capture_output=True,
            text=True,
            timeout=plan.migration_timeout,
        )
    finally:
        await asyncio.to_thread(shutil.rmtree, REF_DIR, True)
    if done.returncode != 0:
        raise RuntimeError(f"bare migration failed: {done.stderr.strip()[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return BareMigration(
        float(result["seconds"]),
        float(result["cpu_seconds"]),
        int(result["files"]),
        int(result["bytes"]),
    )


async def _add_rounds(
    plan: Plan,
    session: aiohttp.ClientSession,
    server: ImgproxyServer,
    account: Account,
    urls: list[str],
) -> tuple[list[float], list[float]]:
    folder = await _folder(session, server, account, "add")
    body = account.body(folderId=folder, images=_add_items(urls, plan.add_count))
    echo = BareStaticServer("echo", server.layout.root)
    ours: list[float] = []
    echoed: list[float] = []
    try:
        await echo.start()
        for _ in range(plan.add_rounds):
            seconds, answer = await _post(session, f"{echo.base_url}/echo", body)
            echoed.append(seconds * 1e3)
            seconds, answer = await _post(session, f"{server.base_url}/v2/images/add", body)
            if len(answer["result"]["images"]) != plan.add_count:
                raise RuntimeError(f"images/add answered {len(answer['result']['images'])}")
            ours.append(seconds * 1e3)
    finally:
        await echo.stop()
    return ours, echoed
