"""`s3` origin: objects in an S3 (or S3-compatible) bucket, streamed through one aiobotocore client.

The client is created on first use and closed by `aclose()` (with the app). Credentials come
from the settings or, when those are empty, from botocore's standard environment/profile chain;
they are never put in messages, logs or `repr`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import aiohttp

# aiobotocore and botocore ship no type information; the client is typed as Any below.
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from aiobotocore.session import get_session  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

from imgproxy.origins.base import NotFound, PatternMixin, Source, Unavailable
from imgproxy.settings import OriginSettings

log = logging.getLogger(__name__)

CHUNK = 1 << 20
MAX_MESSAGE = 300

# Error codes meaning "no such object": move on to the next candidate key / origin.
MISSING_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
# Error codes worth retrying besides any 5xx status.
TRANSIENT_CODES = frozenset(
    {
        "RequestTimeout",
        "RequestTimeoutException",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ServiceUnavailable",
        "InternalError",
    }
)
# Local configuration problems: retrying cannot help.
CONFIG_ERRORS = (NoCredentialsError, PartialCredentialsError, ProfileNotFound)
# What a request or a body read can raise besides ClientError (aiobotocore maps most
# aiohttp errors to BotoCoreError subclasses; the rest are caught in case one slips by).
NETWORK_ERRORS = (BotoCoreError, aiohttp.ClientError, asyncio.TimeoutError, OSError)


class S3Origin(PatternMixin):
    """Opens `s3://{bucket}/{key template}` objects and lists the bucket for `imgproxy warm`."""

    def __init__(
        self,
        settings: OriginSettings,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        page_size: int | None = None,
    ) -> None:
        self._init_pattern(settings)
        self.bucket = settings.bucket
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.page_size = page_size
        # botocore's types are untyped (Any): an aiobotocore S3 client once created.
        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        endpoint = self.settings.endpoint_url or "aws"
        return f"S3Origin(name={self.name!r}, bucket={self.bucket!r}, endpoint={endpoint!r})"

    async def _get_client(self) -> Any:
        """The origin's one client, created on first use (concurrent first uses share it)."""
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._create_client()
        return self._client

    async def _create_client(self) -> Any:
        settings = self.settings
        config = AioConfig(
            connect_timeout=self.connect_timeout,
            read_timeout=self.read_timeout,
            retries={"max_attempts": 2},
            # S3-compatible stores (MinIO, Ceph, ...) generally need path-style addressing;
            # botocore would pick virtual-host style for a custom endpoint with a host name.
            s3={"addressing_style": "path"} if settings.endpoint_url else None,
        )
        stack = AsyncExitStack()
        try:
            client = await stack.enter_async_context(
                get_session().create_client(
                    "s3",
                    region_name=settings.region or None,
                    endpoint_url=settings.endpoint_url or None,
                    # None lets botocore use the environment / profile / instance chain.
                    aws_access_key_id=settings.access_key_id or None,
                    aws_secret_access_key=settings.secret_access_key or None,
                    config=config,
                )
            )
        except (BotoCoreError, ValueError) as exc:
            await stack.aclose()
            raise self._unavailable(exc, f"s3://{self.bucket}", transient=False) from exc
        self._stack = stack
        return client

    async def aclose(self) -> None:
        """Close the client (and its connection pool) if it was ever opened."""
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    @asynccontextmanager
    async def open(self, image_id: str) -> AsyncIterator[Source]:
        """The first candidate key that exists, streamed; the response is released on exit."""
        client = await self._get_client()
        for key in self.candidates(self.settings.key, image_id):
            response = await self._get_object(client, key)
            if response is not None:
                break
        else:
            raise NotFound(image_id)
        location = f"s3://{self.bucket}/{key}"
        body = response["Body"]
        chunks = self._read(body, location)
        try:
            yield Source(location=location, size=response.get("ContentLength"), chunks=chunks)
        finally:
            await chunks.aclose()
            body.close()

    async def _get_object(self, client: Any, key: str) -> dict[str, Any] | None:
        """GetObject's response, or None when there is no such key."""
        location = f"s3://{self.bucket}/{key}"
        try:
            response: dict[str, Any] = await client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in MISSING_CODES:
                return None
            raise self._unavailable(exc, location) from exc
        except NETWORK_ERRORS as exc:
            raise self._unavailable(exc, location) from exc
        return response

    async def _read(self, body: Any, location: str) -> AsyncGenerator[bytes, None]:
        """The object's bytes, up to CHUNK at a time, as they arrive."""
        while True:
            try:
                data: bytes = await body.read(CHUNK)
            except NETWORK_ERRORS as exc:
                raise self._unavailable(exc, location) from exc
            if not data:
                return
            yield data

    async def list_ids(self) -> AsyncIterator[str]:
        """Every ID the bucket holds under the key template, listed page by page."""
        client = await self._get_client()
        template = self.settings.key
        prefix = template.partition("{id}")[0]
        pagination = {"PageSize": self.page_size} if self.page_size else {}
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig=pagination
        )
        iterator = pages.__aiter__()
        while True:
            # Only the listing call is guarded: exceptions thrown in at `yield` pass untouched.
            try:
                page = await anext(iterator)
            except StopAsyncIteration:
                return
            except (ClientError, *NETWORK_ERRORS) as exc:
                raise self._unavailable(exc, f"s3://{self.bucket}/{prefix}") from exc
            for item in page.get("Contents", ()):
                image_id = self.id_from_name(template, item["Key"])
                if image_id is not None:
                    yield image_id

    def _unavailable(
        self, exc: BaseException, location: str, transient: bool | None = None
    ) -> Unavailable:
        """An Unavailable saying what failed (credentials scrubbed), with the cause logged."""
        if isinstance(exc, ClientError):
            code = _error_code(exc)
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            detail = exc.response.get("Error", {}).get("Message") or ""
            cause = f"{code} (HTTP {status}){': ' + detail if detail else ''}"
            if transient is None:
                transient = status >= 500 or status == 429 or code in TRANSIENT_CODES
        else:
            cause = f"{type(exc).__name__}: {exc}"
            if transient is None:
                transient = not isinstance(exc, CONFIG_ERRORS)
        message = self._scrub(f"{location}: {cause}")[:MAX_MESSAGE]
        log.warning("s3 origin %s: %s", self.name, message)
        return Unavailable(message, transient=transient)

    def _scrub(self, text: str) -> str:
        """`text` with the configured credentials blanked out, wherever they might appear."""
        for secret in (self.settings.secret_access_key, self.settings.access_key_id):
            if secret:
                text = text.replace(secret, "***")
        return text


def _error_code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")
