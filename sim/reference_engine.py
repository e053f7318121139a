"""Reproductions of two known flaws of the TypeScript engine, as negative controls.

The simulator must find both within its default budget; the tests prove that it does.
Neither changes ``osqueue.engine``: one wraps the storage backend, the other overrides
two private methods of ``GroupCommitEngine`` (``_check_fence`` and ``_check_deadline``).

``reapply`` (``ReapplyingBackend``)
    A write whose outcome is unknown is reported to the engine as a stale-version conflict.
    The engine then reads the state back and applies the batch again on top of it. When
    the lost write had landed, the batch is applied twice: one claim marks two jobs in
    progress, one enqueue adds its jobs twice.
``reregister`` (``ReregisteringEngine``)
    When a read after a CAS conflict shows another broker's record, the engine writes
    itself back as leader (with the next epoch) instead of stepping down, so two brokers
    both believe they lead and both acknowledge commits. Like that engine, it never steps
    down when its renew deadline passes.
"""

from __future__ import annotations

import logging
from typing import Any

from osqueue.election import holds_lease
from osqueue.engine import GroupCommitEngine
from osqueue.errors import CASConflictError, ConflictReason, IndeterminateWriteError
from osqueue.state import QueueState
from osqueue.storage.base import ReadResult, StorageBackend, StorageVersion

logger = logging.getLogger(__name__)

# The overrides below depend on two private methods. Without them a reference engine
# would silently behave correctly, so the import fails instead.
for _hook in ("_check_fence", "_check_deadline"):
    if not hasattr(GroupCommitEngine, _hook):  # pragma: no cover
        raise ImportError(
            f"osqueue.engine.GroupCommitEngine has no {_hook} method any more; update "
            "osqueue.sim.reference_engine.ReregisteringEngine to the engine's fencing hooks")


class ReapplyingBackend:
    """A ``StorageBackend`` that turns ``IndeterminateWriteError`` into a conflict.

    This is the ``reapply`` flaw: the engine above it believes a write with an unknown
    outcome certainly did not land. ``reapplied`` counts the conversions.
    """

    def __init__(self, inner: StorageBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.reapplied = 0

    async def read(self, key: str) -> ReadResult | None:
        return await self.inner.read(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        try:
            return await self.inner.write(key, data, expected)
        except IndeterminateWriteError as error:
            self.reapplied += 1
            logger.info("reference engine treats an unknown write outcome as a conflict: %s",
                        error)
            raise CASConflictError(
                key, ConflictReason.STALE_VERSION,
                "unknown outcome treated as a conflict (reference flaw)") from error

    async def create_if_not_exists(self, key: str, data: bytes) -> StorageVersion:
        return await self.inner.create_if_not_exists(key, data)


class ReregisteringEngine(GroupCommitEngine):
    """A ``GroupCommitEngine`` with the ``reregister`` flaw (see the module docstring).

    ``reregistrations`` counts how often it wrote itself back as leader.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reregistrations = 0

    def _check_fence(self, state: QueueState, uncertain: set[int]) -> None:
        if not holds_lease(state, self.address, self._epoch):
            new_epoch = state.broker.epoch + 1
            logger.warning(
                "reference engine %r re-registers as leader of epoch %d over %r (epoch %d)",
                self.address, new_epoch, state.broker.address, state.broker.epoch)
            self.reregistrations += 1
            self._epoch = new_epoch

    def _check_deadline(self) -> None:
        # The flawed engine renews its lease but never steps down on its own, so a broker
        # resuming from a pause longer than the lease reaches the conflict and re-registers.
        return


__all__ = ["ReapplyingBackend", "ReregisteringEngine"]
