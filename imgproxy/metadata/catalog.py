"""Images created through the APIs: batches added by URL, status by ID, folder statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from imgproxy.metadata.accounts import short_id
from imgproxy.metadata.store import BULK, IMAGE_SELECT, ImageRecord, MetadataStore, image_from_row

ID_LENGTH = 10


@dataclass(frozen=True)
class FolderStats:
    total: int
    complete: int
    processing: list[str]
    errored: list[str]


class Catalog:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def add_by_url(
        self, org_id: str, folder_id: str, items: Sequence[tuple[str, str]], priority: int = BULK
    ) -> list[str]:
        """Create one image per (name, sourceUrl) in ONE transaction: all are queued, or none."""
        ids: list[str] = []
        async with self.store.transaction() as db:
            for name, url in items:
                while True:
                    image_id = short_id(ID_LENGTH)
                    if await self.store.create_in(
                        db,
                        image_id,
                        priority,
                        "api",
                        org_id=org_id,
                        folder_id=folder_id,
                        name=name,
                        source_url=url,
                    ):
                        break
                ids.append(image_id)
        return ids

    async def images_of(self, org_id: str, image_ids: Sequence[str]) -> list[ImageRecord]:
        """The organisation's images among `image_ids`, in the order asked (others left out)."""
        if not image_ids:
            return []
        marks = ",".join("?" * len(image_ids))
        rows = await self.store.fetchall(
            IMAGE_SELECT + f" WHERE i.id IN ({marks}) AND i.org_id = ?", (*image_ids, org_id)
        )
        found = {row[0]: image_from_row(row) for row in rows}
        return [found[i] for i in dict.fromkeys(image_ids) if i in found]

    async def folder_stats(self, org_id: str, folder_id: str) -> FolderStats:
        rows = await self.store.fetchall(
            "SELECT id, status FROM images WHERE org_id = ? AND folder_id = ? ORDER BY created_at",
            (org_id, folder_id),
        )
        return FolderStats(
            total=len(rows),
            complete=sum(1 for _, status in rows if status == "ready"),
            processing=[i for i, status in rows if status not in ("ready", "error")],
            errored=[i for i, status in rows if status == "error"],
        )
