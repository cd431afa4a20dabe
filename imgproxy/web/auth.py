"""Rate limiting of failed authentications: a client (by address) that fails too often within
`limits.auth_window` seconds gets 429 + Retry-After on authenticated routes until it waits."""

from __future__ import annotations

from cachetools import TTLCache

from imgproxy.web.errors import ApiError


class FailedAuth:
    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        # Each failure refreshes the entry's expiry: a client must stay quiet for a window.
        self._failures: TTLCache[str, int] = TTLCache(maxsize=100_000, ttl=window)

    def check(self, client: str) -> None:
        if self._failures.get(client, 0) >= self.limit:
            raise ApiError(
                429,
                "too many failed authentications; try again later",
                {"Retry-After": str(int(self.window))},
            )

    def failed(self, client: str) -> None:
        self._failures[client] = self._failures.get(client, 0) + 1
