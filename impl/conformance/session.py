"""State shared by the checks of one conformance run: the backend, its event loop, the keys.

The checks run in the caller's thread (Hypothesis drives them) and send every backend
call to one event loop running in a blocking portal. A backend that binds resources to
its event loop therefore uses a single loop for the whole run.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from anyio.from_thread import BlockingPortal
from osqueue.errors import CASConflictError, ConflictReason, StorageBackendError
from osqueue.spec.cas import TokenPolicy
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion

logger = logging.getLogger(__name__)

T = TypeVar("T")


class RetriesExhaustedError(Exception):
    """A request kept failing with a "may retry" error (409 or a retryable error)."""


@dataclass
class Session:
    """One run's backend, portal, token policy and the keys it may have written.

    ``touched`` keeps every key a write or create was sent to, in first-use order, so that
    clean-up can delete them, including keys a faulty backend created on a rejected write.
    """

    portal: BlockingPortal
    backend: StorageBackend
    policy: TokenPolicy
    request_attempts: int = 5
    """Attempts per sequential request that gets a 409 or a retryable error."""
    retry_delay: float = 0.05
    """Seconds before the first retry; doubles on each further attempt."""
    touched: dict[str, None] = field(default_factory=dict)

    def call(self, function: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``function(*args)`` on the run's event loop and return its result."""

        return self.portal.call(function, *args)

    def touch(self, key: str) -> None:
        self.touched.setdefault(key, None)

    def read(self, key: str) -> ReadResult | None:
        return self.call(self._retrying, "read", key, lambda: self.backend.read(key))

    def write(
        self, key: str, data: bytes, expected: StorageVersion
    ) -> StorageVersion | CASConflictError:
        """Send a conditional write; return the new token or the conflict it raised."""

        self.touch(key)
        return self.call(
            self._retrying_write, key, lambda: self.backend.write(key, data, expected)
        )

    def create(self, key: str, data: bytes) -> StorageVersion | CASConflictError:
        """Send a create-if-not-exists; return the new token or the conflict it raised."""

        self.touch(key)
        return self.call(
            self._retrying_write, key, lambda: self.backend.create_if_not_exists(key, data)
        )

    async def _retrying_write(
        self, key: str, send: Callable[[], Awaitable[StorageVersion]]
    ) -> StorageVersion | CASConflictError:
        async def attempt() -> StorageVersion | CASConflictError:
            try:
                return await send()
            except CASConflictError as error:
                if error.retry_same_request:
                    raise
                return error

        return await self._retrying("write", key, attempt)

    async def _retrying(
        self, operation: str, key: str, send: Callable[[], Awaitable[T]]
    ) -> T:
        """Send a request, resending it after a 409 or a retryable ``StorageBackendError``.

        Both errors mean the request was not applied, so resending it cannot apply it
        twice. Any other error propagates.
        """

        delay = self.retry_delay
        for attempt in range(1, self.request_attempts + 1):
            try:
                return await send()
            except CASConflictError as error:
                if error.reason is not ConflictReason.CONCURRENT_REQUEST:
                    raise
                last: Exception = error
            except StorageBackendError as error:
                if not error.retryable:
                    raise
                last = error
            logger.info(
                "retrying %s of %r after attempt %d of %d failed: %s",
                operation, key, attempt, self.request_attempts, last,
            )
            if attempt < self.request_attempts:
                await anyio.sleep(delay)
                delay *= 2
        raise RetriesExhaustedError(
            f"{operation} of {key!r} still failed after {self.request_attempts} attempts: "
            f"{last}"
        )
