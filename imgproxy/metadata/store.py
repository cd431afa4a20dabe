"""The metadata store: images, versions and the durable job queue in SQLite (WAL), via aiosqlite.

One writer connection (writes are serialised by a lock so that multi-statement transactions
never interleave) and one reader connection; WAL lets them run side by side.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import aiosqlite

# Job priorities: lower runs first.
VIEWER = 0
HOOK = 1
BULK = 2

ACTIVE_STATUSES = ("queued", "downloading", "processing", "tiling", "storing")
STAGES = ("placeholder", "display", "zoom")


# (table, column, type and default) added since the table first shipped.
ADDED_COLUMNS = (("jobs", "rerun", "INTEGER NOT NULL DEFAULT 0"),)

# aiosqlite raises ValueError once its connection thread is gone.
DB_ERRORS = (sqlite3.Error, ValueError)


class StoreError(Exception):
    """The metadata store failed (surfaced to clients as statusUpdateError / 503)."""


@dataclass(frozen=True)
class ImageRecord:
    """An image with the stage flags and size of the version viewers are served."""

    id: str
    status: str
    error: str | None
    detail: str | None
    version: int
    building: int | None
    origin: str | None
    created_by: str
    created_at: float
    updated_at: float
    width: int | None
    height: int | None
    has_alpha: bool
    placeholder: bool
    display: bool
    zoom: bool
    org_id: str | None = None
    folder_id: str | None = None
    name: str | None = None
    source_url: str | None = None

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES


@dataclass(frozen=True)
class VersionRecord:
    image_id: str
    version: int
    width: int | None
    height: int | None
    has_alpha: bool
    placeholder: bool
    display: bool
    zoom: bool


@dataclass(frozen=True)
class Job:
    image_id: str
    version: int
    priority: int
    attempts: int


_IMAGE_SELECT = """
SELECT i.id, i.status, i.error, i.detail, i.version, i.building, i.origin, i.created_by,
       i.created_at, i.updated_at, v.width, v.height, COALESCE(v.has_alpha, 0),
       COALESCE(v.placeholder, 0), COALESCE(v.display, 0), COALESCE(v.zoom, 0),
       i.org_id, i.folder_id, i.name, i.source_url
FROM images i LEFT JOIN versions v ON v.image_id = i.id AND v.version = i.version
"""


IMAGE_SELECT = _IMAGE_SELECT


def image_from_row(row: Any) -> ImageRecord:
    return _image(row)


def _image(row: Any) -> ImageRecord:
    return ImageRecord(
        id=row[0],
        status=row[1],
        error=row[2],
        detail=row[3],
        version=row[4],
        building=row[5],
        origin=row[6],
        created_by=row[7],
        created_at=row[8],
        updated_at=row[9],
        width=row[10],
        height=row[11],
        has_alpha=bool(row[12]),
        placeholder=bool(row[13]),
        display=bool(row[14]),
        zoom=bool(row[15]),
        org_id=row[16],
        folder_id=row[17],
        name=row[18],
        source_url=row[19],
    )


class MetadataStore:
    """Async access to the SQLite database; open with `await store.open()`, close with `close()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()
        self._seq = 0

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        schema = resources.files("imgproxy.metadata").joinpath("schema.sql").read_text()
        try:
            self._writer = await aiosqlite.connect(self.path, isolation_level=None)
            # FULL: a 200 from an API means the row survives even a power cut, not only kill -9.
            await self._writer.executescript(
                "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA busy_timeout=10000;"
                + schema
            )
            await self._add_missing_columns()
            self._reader = await aiosqlite.connect(self.path, isolation_level=None)
            await self._reader.execute("PRAGMA busy_timeout=10000")
            async with self._writer.execute("SELECT COALESCE(MAX(seq), 0) FROM jobs") as cur:
                row = await cur.fetchone()
            self._seq = int(row[0]) if row else 0
        except DB_ERRORS as exc:
            raise StoreError(f"cannot open the metadata store {self.path}: {exc}") from exc

    async def _add_missing_columns(self) -> None:
        """Columns added after a table first shipped (CREATE IF NOT EXISTS keeps old tables)."""
        for table, column, ddl in ADDED_COLUMNS:
            async with self.writer.execute(f"PRAGMA table_info({table})") as cur:
                names = {row[1] for row in await cur.fetchall()}
            if column not in names:
                await self.writer.execute(f"ALTER TABLE {table} ADD COLUMN {column} {ddl}")

    async def close(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    @property
    def writer(self) -> aiosqlite.Connection:
        if self._writer is None:
            raise StoreError("the metadata store is closed")
        return self._writer

    @property
    def reader(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreError("the metadata store is closed")
        return self._reader

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE ... COMMIT under the write lock; ROLLBACK on any error."""
        async with self._lock:
            db = self.writer
            try:
                await db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    await db.execute("ROLLBACK")
                    raise
                await db.execute("COMMIT")
            except DB_ERRORS as exc:
                raise StoreError(str(exc)) from exc

    async def fetchone(self, sql: str, params: Iterable[Any] = ()) -> Any:
        rows = await self.fetchall(sql, params)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, params: Iterable[Any] = ()) -> list[Any]:
        try:
            # One hop on the reader's thread: the statement runs to its end before any other
            # read starts. A cursor left open between hops would hold its snapshot, and every
            # read sharing the connection would miss what was committed since.
            return list(await self.reader.execute_fetchall(sql, tuple(params)))
        except DB_ERRORS as exc:
            raise StoreError(str(exc)) from exc

    async def ping(self) -> None:
        """Raise StoreError unless the database answers."""
        await self.fetchone("SELECT 1")

    # -- images ----------------------------------------------------------------------------

    async def get_image(self, image_id: str) -> ImageRecord | None:
        row = await self.fetchone(_IMAGE_SELECT + " WHERE i.id = ?", (image_id,))
        return _image(row) if row else None

    async def get_version(self, image_id: str, version: int) -> VersionRecord | None:
        row = await self.fetchone(
            "SELECT image_id, version, width, height, has_alpha, placeholder, display, zoom "
            "FROM versions WHERE image_id = ? AND version = ?",
            (image_id, version),
        )
        if row is None:
            return None
        return VersionRecord(
            row[0], row[1], row[2], row[3], bool(row[4]), bool(row[5]), bool(row[6]), bool(row[7])
        )

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def create_image(
        self, image_id: str, priority: int, created_by: str = "view", org_id: str | None = None
    ) -> bool:
        """Insert a new image (version 1) with its job; False when the ID exists already."""
        async with self.transaction() as db:
            return await self.create_in(db, image_id, priority, created_by, org_id=org_id)

    async def create_in(
        self,
        db: aiosqlite.Connection,
        image_id: str,
        priority: int,
        created_by: str,
        org_id: str | None = None,
        folder_id: str | None = None,
        name: str | None = None,
        source_url: str | None = None,
    ) -> bool:
        """Insert an image, its version 1 and its job inside the caller's transaction."""
        now = time.time()
        cur = await db.execute(
            "INSERT OR IGNORE INTO images (id, status, version, building, created_by, org_id, "
            "folder_id, name, source_url, created_at, updated_at) "
            "VALUES (?, 'queued', 1, 1, ?, ?, ?, ?, ?, ?, ?)",
            (image_id, created_by, org_id, folder_id, name, source_url, now, now),
        )
        if cur.rowcount == 0:
            return False
        await db.execute(
            "INSERT OR REPLACE INTO versions (image_id, version) VALUES (?, 1)", (image_id,)
        )
        await self.enqueue_in(db, image_id, 1, priority)
        return True

    async def enqueue_batch(
        self, image_ids: list[str], origin: str | None, batch: str, priority: int = BULK
    ) -> tuple[int, int]:
        """Queue many images in one transaction (warming); returns (queued, already ready).

        New IDs are created; ones in a retryable or any error state are pulled again; ones
        already queued or building just join the batch; ready ones are skipped.
        """
        now = time.time()
        queued = ready = 0
        async with self.transaction() as db:
            for image_id in image_ids:
                cur = await db.execute(
                    "INSERT OR IGNORE INTO images (id, status, version, building, created_by, "
                    "origin, batch, created_at, updated_at) "
                    "VALUES (?, 'queued', 1, 1, 'warm', ?, ?, ?, ?)",
                    (image_id, origin, batch, now, now),
                )
                if cur.rowcount:
                    await db.execute(
                        "INSERT OR REPLACE INTO versions (image_id, version) VALUES (?, 1)",
                        (image_id,),
                    )
                    await self.enqueue_in(db, image_id, 1, priority)
                    queued += 1
                    continue
                async with db.execute(
                    "SELECT status, version, building FROM images WHERE id = ?", (image_id,)
                ) as c:
                    row = await c.fetchone()
                if row is None:
                    continue
                status, version, building = row
                if status == "ready":
                    ready += 1
                    continue
                await db.execute(
                    "UPDATE images SET batch = ?, updated_at = ? WHERE id = ?",
                    (batch, now, image_id),
                )
                if status == "error":
                    target = building or version
                    await db.execute(
                        "UPDATE images SET status = 'queued', error = NULL, detail = NULL, "
                        "building = ? WHERE id = ?",
                        (target, image_id),
                    )
                    await self.enqueue_in(db, image_id, target, priority)
                queued += 1
        return queued, ready

    async def batch_counts(self, batch: str) -> dict[str, int]:
        """How many images of a warm batch are in each status ('error:<code>' for errors)."""
        rows = await self.fetchall(
            "SELECT CASE status WHEN 'error' THEN 'error:' || COALESCE(error, 'unknown') "
            "ELSE status END, COUNT(*) FROM images WHERE batch = ? GROUP BY 1",
            (batch,),
        )
        return {str(k): int(n) for k, n in rows}

    async def enqueue_in(
        self, db: aiosqlite.Connection, image_id: str, version: int, priority: int
    ) -> None:
        # Re-announcing an image never lowers its priority, and never resets a running job.
        await db.execute(
            "INSERT INTO jobs (image_id, version, priority, seq) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (image_id) DO UPDATE SET priority = MIN(priority, excluded.priority)",
            (image_id, version, priority, self._next_seq()),
        )

    async def requeue(self, image_id: str, priority: int, new_version: bool = False) -> int:
        """Queue a new pull of a known image; returns the version it will build."""
        now = time.time()
        async with self.transaction() as db:
            async with db.execute(
                "SELECT version, building FROM images WHERE id = ?", (image_id,)
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                raise StoreError(f"image {image_id} vanished")
            served, building = int(row[0]), row[1]
            if building is not None:
                target = int(building)
            elif new_version:
                target = served + 1
            else:
                target = served
            await db.execute(
                "INSERT OR IGNORE INTO versions (image_id, version) VALUES (?, ?)",
                (image_id, target),
            )
            await db.execute(
                "UPDATE images SET status = 'queued', error = NULL, detail = NULL, building = ?, "
                "updated_at = ? WHERE id = ?",
                (target, now, image_id),
            )
            await self.enqueue_in(db, image_id, target, priority)
        return target

    async def update_and_claim(self, image_id: str, priority: int) -> Job | None:
        """For the update hook, in one transaction: queue a new version and claim its job for the
        caller. When a worker is running the image's job, flag it to pull again once done (the
        running build may have fetched the old content) and return None."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT i.version, i.building, j.state FROM images i "
                "LEFT JOIN jobs j ON j.image_id = i.id WHERE i.id = ?",
                (image_id,),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            served, building, state = int(row[0]), row[1], row[2]
            if state == "running":
                await db.execute(
                    "UPDATE jobs SET rerun = 1, priority = MIN(priority, ?) WHERE image_id = ?",
                    (priority, image_id),
                )
                return None
            target = int(building) if building is not None else served + 1
            await self._prepare_version(db, image_id, target)
            await self.enqueue_in(db, image_id, target, priority)
            async with db.execute(
                "UPDATE jobs SET state = 'running', owner = ?, attempts = attempts + 1 "
                "WHERE image_id = ? RETURNING image_id, version, priority, attempts",
                (os.getpid(), image_id),
            ) as cur:
                job = await cur.fetchone()
        return Job(job[0], job[1], job[2], job[3]) if job else None

    async def _prepare_version(self, db: aiosqlite.Connection, image_id: str, target: int) -> None:
        """Make `target` the version being built, from scratch (nothing fetched yet)."""
        await db.execute(
            "INSERT OR IGNORE INTO versions (image_id, version) VALUES (?, ?)", (image_id, target)
        )
        await db.execute(
            "UPDATE versions SET width = NULL, height = NULL, placeholder = 0, display = 0, "
            "zoom = 0 WHERE image_id = ? AND version = ? AND display = 0",
            (image_id, target),
        )
        await db.execute(
            "UPDATE images SET status = 'queued', error = NULL, detail = NULL, building = ?, "
            "updated_at = ? WHERE id = ?",
            (target, time.time(), image_id),
        )

    async def bump_priority(self, image_id: str, priority: int) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET priority = MIN(priority, ?) WHERE image_id = ?",
                (priority, image_id),
            )

    async def set_status(
        self,
        image_id: str,
        status: str,
        error: str | None = None,
        detail: str | None = None,
        origin: str | None = None,
    ) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE images SET status = ?, error = ?, detail = ?, "
                "origin = COALESCE(?, origin), updated_at = ? WHERE id = ?",
                (status, error, detail, origin, time.time(), image_id),
            )
            if status in ("ready", "error"):
                await db.execute("UPDATE images SET building = NULL WHERE id = ?", (image_id,))

    async def set_size(
        self, image_id: str, version: int, width: int, height: int, has_alpha: bool
    ) -> None:
        async with self.transaction() as db:
            await db.execute(
                "UPDATE versions SET width = ?, height = ?, has_alpha = ? "
                "WHERE image_id = ? AND version = ?",
                (width, height, int(has_alpha), image_id, version),
            )

    async def set_stage(
        self, image_id: str, version: int, stage: str, switch: bool = False
    ) -> None:
        """Mark a stage built; `switch` makes `version` the one viewers are served, atomically."""
        if stage not in STAGES:
            raise ValueError(stage)
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE versions SET {stage} = 1 WHERE image_id = ? AND version = ?",
                (image_id, version),
            )
            if switch:
                await db.execute(
                    "UPDATE images SET version = ?, updated_at = ? WHERE id = ?",
                    (version, time.time(), image_id),
                )

    async def clear_stages(self, image_id: str, version: int) -> None:
        """Forget built stages of a version (its files were lost or are being rebuilt)."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE versions SET placeholder = 0, display = 0, zoom = 0 "
                "WHERE image_id = ? AND version = ?",
                (image_id, version),
            )

    async def delete_image(self, image_id: str) -> None:
        async with self.transaction() as db:
            for table, column in (("jobs", "image_id"), ("versions", "image_id"), ("images", "id")):
                await db.execute(f"DELETE FROM {table} WHERE {column} = ?", (image_id,))

    async def delete_version(self, image_id: str, version: int) -> None:
        async with self.transaction() as db:
            await db.execute(
                "DELETE FROM versions WHERE image_id = ? AND version = ?", (image_id, version)
            )

    async def touch(self, viewed: dict[str, float]) -> None:
        """Record last-view times (batched by the caller)."""
        if not viewed:
            return
        async with self.transaction() as db:
            await db.executemany(
                "UPDATE images SET viewed_at = ? WHERE id = ?",
                [(t, image_id) for image_id, t in viewed.items()],
            )

    async def set_cache_bytes(self, image_id: str, size: int) -> None:
        async with self.transaction() as db:
            await db.execute("UPDATE images SET cache_bytes = ? WHERE id = ?", (size, image_id))

    async def cache_total(self) -> int:
        row = await self.fetchone("SELECT COALESCE(SUM(cache_bytes), 0) FROM images")
        return int(row[0])

    async def cache_bytes_of(self, image_id: str) -> int:
        row = await self.fetchone("SELECT cache_bytes FROM images WHERE id = ?", (image_id,))
        return int(row[0]) if row else 0

    async def eviction_candidates(self, before: float, limit: int, offset: int = 0) -> list[str]:
        """Settled images holding cache bytes, least recently viewed first, not viewed since
        `before`, with no job pending."""
        rows = await self.fetchall(
            "SELECT id FROM images WHERE status IN ('ready', 'error') AND cache_bytes > 0 "
            "AND COALESCE(viewed_at, updated_at) < ? "
            "AND id NOT IN (SELECT image_id FROM jobs) "
            "ORDER BY COALESCE(viewed_at, updated_at) LIMIT ? OFFSET ?",
            (before, limit, offset),
        )
        return [row[0] for row in rows]

    async def evicted(self, image_id: str) -> None:
        """Forget every built stage of an image whose files are being removed."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE versions SET placeholder = 0, display = 0, zoom = 0 WHERE image_id = ?",
                (image_id,),
            )

    async def count_images(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) FROM images")
        return int(row[0])

    # -- jobs ------------------------------------------------------------------------------

    async def claim_job(self, max_priority: int = BULK, image_id: str | None = None) -> Job | None:
        """Take the most urgent queued job (of at most `max_priority`, or for one image) for this
        process; atomic across processes."""
        where = "state = 'queued' AND priority <= ?"
        params: tuple[Any, ...] = (os.getpid(), max_priority)
        if image_id is not None:
            where += " AND image_id = ?"
            params += (image_id,)
        async with (
            self.transaction() as db,
            db.execute(
                "UPDATE jobs SET state = 'running', owner = ?, attempts = attempts + 1 "
                f"WHERE image_id = (SELECT image_id FROM jobs WHERE {where} "
                "ORDER BY priority, seq LIMIT 1) "
                "RETURNING image_id, version, priority, attempts",
                params,
            ) as cur,
        ):
            row = await cur.fetchone()
        return Job(row[0], row[1], row[2], row[3]) if row else None

    async def finish_job(self, image_id: str) -> None:
        """Remove a finished job, or, when an update arrived while it ran, queue the new version."""
        async with self.transaction() as db:
            async with db.execute(
                "SELECT j.rerun, i.version FROM jobs j JOIN images i ON i.id = j.image_id "
                "WHERE j.image_id = ?",
                (image_id,),
            ) as cur:
                row = await cur.fetchone()
            if row is None or not row[0]:
                await db.execute("DELETE FROM jobs WHERE image_id = ?", (image_id,))
                return
            target = int(row[1]) + 1
            await self._prepare_version(db, image_id, target)
            await db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, rerun = 0, version = ?, seq = ? "
                "WHERE image_id = ?",
                (target, self._next_seq(), image_id),
            )

    async def release_job(self, image_id: str) -> None:
        """Put a running job back in the queue, behind the others of its priority."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE jobs SET state = 'queued', owner = NULL, seq = ? WHERE image_id = ?",
                (self._next_seq(), image_id),
            )

    async def others_waiting(self, image_id: str, priority: int) -> bool:
        """Is another job of this priority or a more urgent one queued?"""
        row = await self.fetchone(
            "SELECT 1 FROM jobs WHERE state = 'queued' AND priority <= ? AND image_id != ? LIMIT 1",
            (priority, image_id),
        )
        return row is not None

    async def queue_depth(self) -> int:
        row = await self.fetchone("SELECT COUNT(*) FROM jobs")
        return int(row[0])

    async def resume_orphans(self) -> list[str]:
        """Requeue jobs whose owning process is gone (a crash or kill -9); returns their image IDs."""
        rows = await self.fetchall("SELECT image_id, owner FROM jobs WHERE state = 'running'")
        orphans = [image_id for image_id, owner in rows if not _alive(owner)]
        if orphans:
            async with self.transaction() as db:
                await db.executemany(
                    "UPDATE jobs SET state = 'queued', owner = NULL WHERE image_id = ?",
                    [(i,) for i in orphans],
                )
                await db.executemany(
                    "UPDATE images SET status = 'queued' WHERE id = ? AND status IN "
                    "('downloading', 'processing', 'tiling', 'storing')",
                    [(i,) for i in orphans],
                )
        return orphans


def _alive(pid: int | None) -> bool:
    if not pid or pid == os.getpid():
        # Our own pid on a running job at start-up means a previous process with the same pid.
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
