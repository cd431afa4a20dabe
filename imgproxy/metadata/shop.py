"""Store owners (products, collections) and their ordered images, for the store image API.

Positions are kept 1..n without gaps; every change that moves positions runs in one
IMMEDIATE transaction, so concurrent creates on one owner cannot produce duplicates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import aiosqlite
import orjson

from imgproxy.metadata.store import HOOK, MetadataStore

OWNER_KINDS = ("products", "standard_collections", "super_collections")


class OwnerGone(Exception):
    """The owner was deleted while an image was being added to it."""


class HandleTaken(Exception):
    """Another owner of this kind has that handle."""


@dataclass(frozen=True)
class Owner:
    id: int
    org_id: str
    kind: str
    handle: str
    title: str


@dataclass(frozen=True)
class StoreImage:
    id: int
    owner_id: int
    position: int
    alt: str
    filename: str
    extension: str
    digest: str
    proxy_id: str
    variation_ids: list[int]
    created_at: float


_IMAGE_COLUMNS = (
    "id, owner_id, position, alt, filename, extension, digest, proxy_id, variation_ids, created_at"
)


def _image(row: Any) -> StoreImage:
    return StoreImage(
        id=row[0],
        owner_id=row[1],
        position=row[2],
        alt=row[3],
        filename=row[4],
        extension=row[5],
        digest=row[6],
        proxy_id=row[7],
        variation_ids=orjson.loads(row[8]),
        created_at=row[9],
    )


class Shop:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    # -- owners ----------------------------------------------------------------------------

    async def create_owner(self, org_id: str, kind: str, handle: str, title: str) -> Owner:
        async with self.store.transaction() as db:
            cur = await db.execute(
                "INSERT OR IGNORE INTO owners (org_id, kind, handle, title, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (org_id, kind, handle, title, time.time()),
            )
            if cur.rowcount == 0:
                raise HandleTaken(handle)
            owner_id = cur.lastrowid
        assert owner_id is not None
        return Owner(owner_id, org_id, kind, handle, title)

    async def find_owner(self, org_id: str, kind: str, ref: str) -> Owner | None:
        """An owner by numeric id, else by handle (a handle may be all digits too)."""
        columns = "SELECT id, org_id, kind, handle, title FROM owners"
        if ref.isascii() and ref.isdigit() and len(ref) < 19:
            row = await self.store.fetchone(
                f"{columns} WHERE id = ? AND org_id = ? AND kind = ?", (int(ref), org_id, kind)
            )
            if row:
                return Owner(*row)
        row = await self.store.fetchone(
            f"{columns} WHERE handle = ? AND org_id = ? AND kind = ?", (ref, org_id, kind)
        )
        return Owner(*row) if row else None

    async def list_owners(self, org_id: str, kind: str) -> list[Owner]:
        rows = await self.store.fetchall(
            "SELECT id, org_id, kind, handle, title FROM owners WHERE org_id = ? AND kind = ? "
            "ORDER BY id",
            (org_id, kind),
        )
        return [Owner(*row) for row in rows]

    async def delete_owner(self, owner: Owner) -> list[str]:
        """Delete an owner and its images; returns the proxy IDs to remove from the cache."""
        async with self.store.transaction() as db:
            async with db.execute(
                "SELECT proxy_id FROM store_images WHERE owner_id = ?", (owner.id,)
            ) as cur:
                proxy_ids = [row[0] for row in await cur.fetchall()]
            await db.execute("DELETE FROM store_images WHERE owner_id = ?", (owner.id,))
            await db.execute("DELETE FROM owners WHERE id = ?", (owner.id,))
            await self._delete_proxy_images(db, proxy_ids)
        return proxy_ids

    # -- images ----------------------------------------------------------------------------

    async def list_images(
        self, owner: Owner, limit: int, page: int, since_id: int | None
    ) -> list[StoreImage]:
        rows = await self.store.fetchall(
            f"SELECT {_IMAGE_COLUMNS} FROM store_images WHERE owner_id = ? AND id > ? "
            "ORDER BY position LIMIT ? OFFSET ?",
            (owner.id, since_id or 0, limit, (page - 1) * limit),
        )
        return [_image(row) for row in rows]

    async def count_images(self, owner: Owner, since_id: int | None) -> int:
        row = await self.store.fetchone(
            "SELECT COUNT(*) FROM store_images WHERE owner_id = ? AND id > ?",
            (owner.id, since_id or 0),
        )
        return int(row[0])

    async def get_image(self, owner: Owner, image_id: int) -> StoreImage | None:
        row = await self.store.fetchone(
            f"SELECT {_IMAGE_COLUMNS} FROM store_images WHERE owner_id = ? AND id = ?",
            (owner.id, image_id),
        )
        return _image(row) if row else None

    async def add_image(
        self,
        owner: Owner,
        position: int | None,
        alt: str,
        filename: str,
        extension: str,
        digest: str,
        proxy_id: str,
        variation_ids: list[int],
        created_at: float,
    ) -> StoreImage:
        """Insert at `position` (default and past-the-end: last), shifting later images down;
        the proxy image is created (and queued) in the same transaction."""
        async with self.store.transaction() as db:
            async with db.execute("SELECT 1 FROM owners WHERE id = ?", (owner.id,)) as cur:
                if await cur.fetchone() is None:
                    raise OwnerGone(owner.handle)
            count = await _count(db, owner.id)
            target = count + 1 if position is None else max(1, min(position, count + 1))
            await db.execute(
                "UPDATE store_images SET position = position + 1 "
                "WHERE owner_id = ? AND position >= ?",
                (owner.id, target),
            )
            cur = await db.execute(
                "INSERT INTO store_images (owner_id, position, alt, filename, extension, digest, "
                "proxy_id, variation_ids, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    owner.id,
                    target,
                    alt,
                    filename,
                    extension,
                    digest,
                    proxy_id,
                    orjson.dumps(variation_ids).decode(),
                    created_at,
                ),
            )
            new_id = cur.lastrowid
            await self.store.create_in(
                db,
                proxy_id,
                HOOK,
                "store",
                org_id=owner.org_id,
                name=filename,
                source_url=f"upload:{proxy_id}",
            )
        assert new_id is not None
        return StoreImage(
            new_id, owner.id, target, alt, filename, extension, digest, proxy_id,
            variation_ids, created_at,
        )  # fmt: skip

    async def update_image(
        self, owner: Owner, image: StoreImage, alt: str | None, position: int | None
    ) -> StoreImage | None:
        """Change alt and/or move the image; None when it vanished meanwhile."""
        async with self.store.transaction() as db:
            async with db.execute(
                "SELECT position FROM store_images WHERE id = ? AND owner_id = ?",
                (image.id, owner.id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            current = int(row[0])
            if position is not None:
                target = max(1, min(position, await _count(db, owner.id)))
                if target > current:
                    await db.execute(
                        "UPDATE store_images SET position = position - 1 "
                        "WHERE owner_id = ? AND position > ? AND position <= ?",
                        (owner.id, current, target),
                    )
                elif target < current:
                    await db.execute(
                        "UPDATE store_images SET position = position + 1 "
                        "WHERE owner_id = ? AND position >= ? AND position < ?",
                        (owner.id, target, current),
                    )
                await db.execute(
                    "UPDATE store_images SET position = ? WHERE id = ?", (target, image.id)
                )
            if alt is not None:
                await db.execute("UPDATE store_images SET alt = ? WHERE id = ?", (alt, image.id))
        return await self.get_image(owner, image.id)

    async def delete_image(self, owner: Owner, image: StoreImage) -> bool:
        """Delete an image and close the gap; False when it was already gone."""
        async with self.store.transaction() as db:
            async with db.execute(
                "DELETE FROM store_images WHERE id = ? AND owner_id = ? RETURNING position",
                (image.id, owner.id),
            ) as cur:
                row = await cur.fetchone()
            if row is None:
                return False
            await db.execute(
                "UPDATE store_images SET position = position - 1 "
                "WHERE owner_id = ? AND position > ?",
                (owner.id, row[0]),
            )
            await self._delete_proxy_images(db, [image.proxy_id])
        return True

    async def _delete_proxy_images(self, db: aiosqlite.Connection, proxy_ids: list[str]) -> None:
        for proxy_id in proxy_ids:
            for table, column in (("jobs", "image_id"), ("versions", "image_id"), ("images", "id")):
                await db.execute(f"DELETE FROM {table} WHERE {column} = ?", (proxy_id,))


async def _count(db: aiosqlite.Connection, owner_id: int) -> int:
    async with db.execute(
        "SELECT COUNT(*) FROM store_images WHERE owner_id = ?", (owner_id,)
    ) as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0
