"""Image ID validation (SPEC §3): checked before any origin or file is touched."""

from __future__ import annotations

import re

ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class InvalidId(ValueError):
    """The ID is not of the allowed form."""


def is_valid_id(image_id: str) -> bool:
    """True when `image_id` may name an image: 1-128 safe characters, never `..`."""
    return ID_RE.fullmatch(image_id) is not None and ".." not in image_id


def check_id(image_id: str) -> str:
    """Return `image_id` or raise InvalidId with a message fit for a client."""
    if not is_valid_id(image_id):
        raise InvalidId(
            "invalid image id: use 1-128 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..'"
        )
    return image_id
