"""The metadata store and its durable queue, on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from imgproxy.metadata.store import BULK, HOOK, VIEWER, MetadataStore


async def open_store(tmp_path: Path) -> MetadataStore:
    store = MetadataStore(tmp_path / "meta.sqlite3")
    await store.open()
    return store


async def test_jobs_claimed_by_priority_then_age(tmp_path: Path) -> None:
    """A waiting viewer beats a hook, which beats bulk work; equal priorities go oldest first."""
    store = await open_store(tmp_path)
    try:
        for image_id, priority in [("b1", BULK), ("h1", HOOK), ("b2", BULK), ("v1", VIEWER)]:
            assert await store.create_image(image_id, priority)
        order = []
        while (job := await store.claim_job()) is not None:
            order.append(job.image_id)
        assert order == ["v1", "h1", "b1", "b2"]
    finally:
        await store.close()


async def test_viewer_raises_priority_of_queued_job(tmp_path: Path) -> None:
    """Bumping a bulk job to viewer priority moves it to the front; it never goes back down."""
    store = await open_store(tmp_path)
    try:
        await store.create_image("first", BULK)
        await store.create_image("second", BULK)
        await store.bump_priority("second", VIEWER)
        await store.bump_priority("second", BULK)
        job = await store.claim_job()
        assert job is not None and job.image_id == "second"
    finally:
        await store.close()


async def test_create_is_idempotent(tmp_path: Path) -> None:
    """Creating an existing image is refused and queues nothing more."""
    store = await open_store(tmp_path)
    try:
        assert await store.create_image("x", BULK)
        assert not await store.create_image("x", VIEWER)
        assert await store.queue_depth() == 1
    finally:
        await store.close()


async def test_orphaned_jobs_are_resumed(tmp_path: Path) -> None:
    """A running job whose process died is queued again at start-up, and its image too."""
    store = await open_store(tmp_path)
    try:
        await store.create_image("x", HOOK)
        job = await store.claim_job()
        assert job is not None
        await store.set_status("x", "processing")
        async with store.transaction() as db:  # as if claimed by a process that is gone
            await db.execute("UPDATE jobs SET owner = 999999999")
        assert await store.claim_job() is None
        assert await store.resume_orphans() == ["x"]
        record = await store.get_image("x")
        assert record is not None and record.status == "queued"
        again = await store.claim_job()
        assert again is not None and again.image_id == "x" and again.attempts == 2
    finally:
        await store.close()


async def test_queue_survives_reopen(tmp_path: Path) -> None:
    """Queued jobs are on disk: a new store on the same file sees them."""
    store = await open_store(tmp_path)
    await store.create_image("durable", BULK)
    await store.close()
    store = await open_store(tmp_path)
    try:
        job = await store.claim_job()
        assert job is not None and job.image_id == "durable"
    finally:
        await store.close()


async def test_version_switch(tmp_path: Path) -> None:
    """A new version is built beside the old one; viewers switch only when display is marked."""
    store = await open_store(tmp_path)
    try:
        await store.create_image("v", HOOK)
        await store.set_stage("v", 1, "display", switch=True)
        await store.set_status("v", "ready")
        await store.finish_job("v")
        target = await store.requeue("v", HOOK, new_version=True)
        assert target == 2
        await store.set_stage("v", 2, "placeholder")
        record = await store.get_image("v")
        assert record is not None and record.version == 1 and record.display
        await store.set_stage("v", 2, "display", switch=True)
        record = await store.get_image("v")
        assert record is not None and record.version == 2
    finally:
        await store.close()
