"""Organisations, their API keys and folders.

A key is `{organisationId}.{secret}`; only sha256(secret) is stored. Checking a key reads the
organisation named in it and compares hashes with hmac.compare_digest; an unknown
organisation is compared against a dummy hash, so both failures take the same time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import string
import time
from dataclasses import dataclass

import aiosqlite

from imgproxy.metadata.store import MetadataStore

ALPHABET = string.ascii_lowercase + string.digits
FOLDER_TYPES = ("folder", "album", "space")
_DUMMY_HASH = hashlib.sha256(b"no such organisation").hexdigest()


def short_id(length: int) -> str:
    """A random URL-safe ID (lower-case letters and digits)."""
    return "".join(secrets.choice(ALPHABET) for _ in range(length))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Organisation:
    id: str
    name: str
    root_folder: str
    created_at: float


@dataclass(frozen=True)
class Folder:
    id: str
    org_id: str
    parent_id: str | None
    name: str
    type: str


@dataclass(frozen=True)
class NewOrganisation:
    organisation: Organisation
    api_key: str


class Accounts:
    def __init__(self, store: MetadataStore) -> None:
        self.store = store

    async def create_organisation(self, name: str) -> NewOrganisation:
        """A new organisation with its root folder and a fresh key (returned once, stored hashed)."""
        now = time.time()
        secret = secrets.token_urlsafe(32)
        async with self.store.transaction() as db:
            while True:
                org_id = short_id(10)
                async with db.execute("SELECT 1 FROM orgs WHERE id = ?", (org_id,)) as cur:
                    if await cur.fetchone() is None:
                        break
            root = await self._new_folder_id(db)
            await db.execute(
                "INSERT INTO orgs (id, name, key_hash, root_folder, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (org_id, name, _hash(secret), root, now),
            )
            await db.execute(
                "INSERT INTO folders (id, org_id, parent_id, name, type, created_at) "
                "VALUES (?, ?, NULL, ?, 'folder', ?)",
                (root, org_id, name, now),
            )
        return NewOrganisation(Organisation(org_id, name, root, now), f"{org_id}.{secret}")

    async def rotate_key(self, org_id: str) -> str | None:
        """Replace an organisation's key; the old one stops working at once. None: no such org."""
        secret = secrets.token_urlsafe(32)
        async with self.store.transaction() as db:
            cur = await db.execute(
                "UPDATE orgs SET key_hash = ? WHERE id = ?", (_hash(secret), org_id)
            )
            if cur.rowcount == 0:
                return None
        return f"{org_id}.{secret}"

    async def list_organisations(self) -> list[Organisation]:
        rows = await self.store.fetchall(
            "SELECT id, name, root_folder, created_at FROM orgs ORDER BY created_at"
        )
        return [Organisation(*row) for row in rows]

    async def authenticate(self, api_key: str | None, org_id: str | None = None) -> str | None:
        """The organisation a key belongs to (and, if given, must equal `org_id`), else None."""
        key_org, _, secret = (api_key or "").partition(".")
        row = await self.store.fetchone("SELECT key_hash FROM orgs WHERE id = ?", (key_org,))
        stored = row[0] if row else _DUMMY_HASH
        matches = hmac.compare_digest(_hash(secret), stored)
        if not matches or row is None or not secret:
            return None
        if org_id is not None and not hmac.compare_digest(org_id, key_org):
            return None
        return key_org

    async def _new_folder_id(self, db: aiosqlite.Connection) -> str:
        while True:
            folder_id = short_id(6)
            async with db.execute("SELECT 1 FROM folders WHERE id = ?", (folder_id,)) as cur:
                if await cur.fetchone() is None:
                    return folder_id

    async def create_folder(
        self, org_id: str, parent_id: str, name: str, folder_type: str
    ) -> str | None:
        """A new folder under `parent_id` (which must be the organisation's); None if it is not."""
        async with self.store.transaction() as db:
            async with db.execute(
                "SELECT 1 FROM folders WHERE id = ? AND org_id = ?", (parent_id, org_id)
            ) as cur:
                if await cur.fetchone() is None:
                    return None
            folder_id = await self._new_folder_id(db)
            await db.execute(
                "INSERT INTO folders (id, org_id, parent_id, name, type, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (folder_id, org_id, parent_id, name, folder_type, time.time()),
            )
        return folder_id

    async def get_folder(self, org_id: str, folder_id: str) -> Folder | None:
        row = await self.store.fetchone(
            "SELECT id, org_id, parent_id, name, type FROM folders WHERE id = ? AND org_id = ?",
            (folder_id, org_id),
        )
        return Folder(*row) if row else None
