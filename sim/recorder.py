"""Recording of store operations as a history, with invocation and completion in virtual time.

``HistoryRecorder.wrap`` returns a ``StorageBackend`` that forwards each call and records
it as a ``StoreOperation``. Outcomes follow the client's view:

- a returned value is ``OK`` (or ``ABSENT`` for a read that found nothing);
- ``CASConflictError`` is ``CONFLICT``;
- ``StorageBackendError`` is ``FAILED`` (certainly not applied);
- ``IndeterminateWriteError`` and cancellation are ``INDETERMINATE`` with no completion
  time, since the operation may take effect at any later time.

Operation ids are assigned when the history is taken, in the order of
``(invocation time, client index, call number)``, so they do not depend on the order in
which trio ran tasks that invoked operations at the same virtual instant.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace

import anyio
from osqueue.errors import CASConflictError, IndeterminateWriteError, StorageBackendError
from osqueue.spec.history import OpKind, Outcome, StoreOperation
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Entry:
    order: tuple[float, int, int]
    operation: StoreOperation


class HistoryRecorder:
    """Collects the operations of many clients into one history.

    ``clock`` must be the clock the simulation runs on. The recorder asserts that it never
    goes backwards between the invocation and completion of any operation.
    """

    def __init__(self, clock: Callable[[], float] = anyio.current_time) -> None:
        self._clock = clock
        self._entries: list[_Entry] = []
        self._clients: dict[str, int] = {}

    def wrap(self, backend: StorageBackend, client: str) -> RecordingBackend:
        """Return a backend that records every call ``client`` makes to ``backend``."""

        if client in self._clients:
            raise ValueError(f"client {client!r} is already recorded; use one wrap per client")
        self._clients[client] = len(self._clients)
        return RecordingBackend(self, backend, client, self._clients[client])

    def count(self, client: str | None = None) -> int:
        """Return the number of operations recorded so far (for ``client`` if given)."""

        if client is None:
            return len(self._entries)
        return sum(1 for entry in self._entries if entry.operation.client == client)

    def history(self) -> list[StoreOperation]:
        """Return the history sorted by invocation, with op ids 0, 1, 2, ... in that order."""

        ordered = sorted(self._entries, key=lambda entry: entry.order)
        return [replace(entry.operation, op_id=index) for index, entry in enumerate(ordered)]

    def _add(self, order: tuple[float, int, int], operation: StoreOperation) -> None:
        completed = operation.completed_at
        assert completed is None or completed >= operation.invoked_at, (
            f"clock went backwards: operation invoked at {operation.invoked_at} completed at "
            f"{completed}"
        )
        self._entries.append(_Entry(order, operation))


def _token_text(version: StorageVersion) -> str:
    return str(version.value)


class RecordingBackend:
    """A ``StorageBackend`` that records each call it forwards; made by ``HistoryRecorder``."""

    def __init__(
        self, recorder: HistoryRecorder, inner: StorageBackend, client: str, index: int
    ) -> None:
        self.name = inner.name
        self.inner = inner
        self.client = client
        self._recorder = recorder
        self._index = index
        self._calls = 0

    async def read(self, key: str) -> ReadResult | None:
        invoked_at, order = self._start()
        try:
            result = await self.inner.read(key)
        except BaseException as error:
            self._finish_error(order, OpKind.READ, key, invoked_at, error)
            raise
        if result is None:
            self._finish(order, OpKind.READ, key, invoked_at, Outcome.ABSENT)
        else:
            self._finish(
                order, OpKind.READ, key, invoked_at, Outcome.OK,
                data=result.data, token=_token_text(result.version),
            )
        return result

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        invoked_at, order = self._start()
        expected_text = _token_text(expected)
        try:
            version = await self.inner.write(key, data, expected)
        except BaseException as error:
            self._finish_error(
                order, OpKind.WRITE, key, invoked_at, error, data=data, expected=expected_text
            )
            raise
        self._finish(
            order, OpKind.WRITE, key, invoked_at, Outcome.OK,
            data=data, expected=expected_text, token=_token_text(version),
        )
        return version

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        invoked_at, order = self._start()
        try:
            version = await self.inner.create_if_not_exists(key, data)
        except BaseException as error:
            self._finish_error(order, OpKind.CREATE, key, invoked_at, error, data=data)
            raise
        self._finish(
            order, OpKind.CREATE, key, invoked_at, Outcome.OK,
            data=data, token=_token_text(version),
        )
        return version

    def _start(self) -> tuple[float, tuple[float, int, int]]:
        self._calls += 1
        invoked_at = self._recorder._clock()
        return invoked_at, (invoked_at, self._index, self._calls)

    def _finish(
        self,
        order: tuple[float, int, int],
        kind: OpKind,
        key: str,
        invoked_at: float,
        outcome: Outcome,
        *,
        data: bytes | None = None,
        expected: str | None = None,
        token: str | None = None,
    ) -> None:
        completed_at = None if outcome is Outcome.INDETERMINATE else self._recorder._clock()
        operation = StoreOperation(
            op_id=-1,
            client=self.client,
            kind=kind,
            key=key,
            invoked_at=invoked_at,
            completed_at=completed_at,
            outcome=outcome,
            data=data,
            expected=expected,
            token=token,
        )
        self._recorder._add(order, operation)

    def _finish_error(
        self,
        order: tuple[float, int, int],
        kind: OpKind,
        key: str,
        invoked_at: float,
        error: BaseException,
        *,
        data: bytes | None = None,
        expected: str | None = None,
    ) -> None:
        if isinstance(error, CASConflictError):
            outcome = Outcome.CONFLICT
        elif isinstance(error, StorageBackendError):
            outcome = Outcome.FAILED
        elif isinstance(error, IndeterminateWriteError) or kind is not OpKind.READ:
            # Cancellation or any unexpected error leaves a write's outcome unknown.
            outcome = Outcome.INDETERMINATE
        else:
            # A read that did not complete changed nothing, so it is left out of the history.
            logger.debug("read of %r by %s ended with %r; not recorded", key, self.client, error)
            return
        # The read payload of a failed read is unknown, so only writes keep their bytes.
        self._finish(order, kind, key, invoked_at, outcome, data=data, expected=expected)
