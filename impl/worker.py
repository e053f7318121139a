"""A worker that claims jobs from the broker and runs a handler per job type (anyio).

Life of one job in a worker slot
--------------------------------
1. The slot claims a job of a type it has a handler for (``poll_interval`` seconds between
   empty claims). ``on_claimed`` runs.
2. If the handler has a ``payload_type`` (any type ``msgspec.convert`` accepts: a
   ``msgspec.Struct``, a dataclass, ``dict[str, int]`` ...), the payload is converted to it.
   A payload that does not convert fails the job with the validation message.
3. The handler runs with the ``ClaimedJob`` (async handlers on the event loop, plain
   functions in a worker thread) while a heartbeat is sent every ``heartbeat_interval``
   seconds. That interval must be well below the broker's job heartbeat timeout.
4. On return the job is completed and ``on_completed`` runs. On an exception the job is
   failed with the exception's text and ``retry_delay`` (seconds, or a function of the job
   and the exception), and ``on_failed`` runs. On its last attempt a failure moves the job
   to the dead letters.
5. If a heartbeat shows the claim was lost (``StaleClaimError``/``UnknownJobError``: the job
   expired and may run elsewhere), an async handler is cancelled and nothing is reported.

Shutdown
--------
``stop()`` (the CLI calls it on SIGINT/SIGTERM) stops claiming and lets running handlers
finish for up to ``shutdown_grace`` seconds. Handlers still running then are cancelled and
their jobs given back with ``fail`` (delay 0, reason ``"worker shutdown"``), so another
worker can claim them at once. Cancelling ``run()`` gives jobs back the same way.

Giving a job back does not refund its attempt: the claim counted one, and the queue has no
operation that returns a job without a failure. So a job given back on its last attempt
(``ClaimedJob.last_attempt``) is dead-lettered, exactly as if it had expired. The worker
logs a warning when that happens. Jobs with ``max_attempts`` of 2 or more survive one
shutdown; a shutdown grace longer than the handlers' run time avoids giving back at all.
A plain-function handler runs in a thread that cannot be cancelled, so the worker waits for
it to return before it gives the job back.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import anyio
import msgspec
from osqueue.client import (
    AsyncClient,
    BrokerError,
    ClaimedJob,
    FailResult,
    InvalidRequestError,
    StaleClaimError,
    UnauthorizedError,
    UnknownJobError,
)
from osqueue.errors import OsqueueError, StorageBackendError

logger = logging.getLogger(__name__)

SHUTDOWN_REASON = "worker shutdown"
GIVE_BACK_TIMEOUT = 10.0
"""Seconds a give-back on shutdown may take before the worker abandons it (the job then
expires after the broker's heartbeat timeout)."""

Handler = Callable[[ClaimedJob], Any]
RetryDelay = float | Callable[[ClaimedJob, BaseException], float]


def default_retry_delay(job: ClaimedJob, error: BaseException) -> float:
    """Return 1 s after the first attempt, doubling per attempt, at most 60 s."""

    return float(min(60, 2 ** max(job.attempts - 1, 0)))


def default_worker_id() -> str:
    """Return ``host-pid-random``, unique per worker process."""

    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A handler and the type its payload is converted to (None: passed as decoded JSON)."""

    func: Handler
    payload_type: Any = None


class Worker:
    """Claims and runs jobs with ``concurrency`` slots until ``stop()`` or cancellation.

    ``handlers`` maps a job type to a handler (a function or ``HandlerSpec``); the key
    ``None`` is a catch-all that makes the worker claim jobs of every type. Hooks
    ``on_claimed(job)``, ``on_completed(job, result)`` and ``on_failed(job, error,
    fail_result)`` may be functions or coroutine functions; an exception in a hook is logged
    and ignored. ``fail_result`` is None when the fail request itself failed.
    """

    def __init__(
        self,
        client: AsyncClient,
        handlers: dict[str | None, Handler | HandlerSpec] | None = None,
        *,
        worker_id: str | None = None,
        concurrency: int = 1,
        poll_interval: float = 1.0,
        heartbeat_interval: float = 10.0,
        retry_delay: RetryDelay = default_retry_delay,
        shutdown_grace: float = 30.0,
        on_claimed: Callable[[ClaimedJob], Any] | None = None,
        on_completed: Callable[[ClaimedJob, Any], Any] | None = None,
        on_failed: Callable[[ClaimedJob, BaseException, FailResult | None], Any] | None = None,
    ) -> None:
        _require_positive("concurrency", concurrency, integer=True)
        _require_positive("poll_interval", poll_interval)
        _require_positive("heartbeat_interval", heartbeat_interval)
        if shutdown_grace < 0:
            raise ValueError(f"shutdown_grace must be >= 0 seconds, got {shutdown_grace!r}")

        self.client = client
        self.worker_id = worker_id or default_worker_id()
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.retry_delay = retry_delay
        self.shutdown_grace = shutdown_grace
        self.on_claimed = on_claimed
        self.on_completed = on_completed
        self.on_failed = on_failed
        self._handlers: dict[str | None, HandlerSpec] = {}
        for job_type, handler in (handlers or {}).items():
            spec = handler if isinstance(handler, HandlerSpec) else HandlerSpec(handler)
            self.add_handler(job_type, spec.func, payload_type=spec.payload_type)
        self._stopping = anyio.Event()
        self._running: dict[str, anyio.CancelScope] = {}
        self._claims: set[anyio.CancelScope] = set()
        self._fatal: OsqueueError | None = None
        self.processed = 0

    # -- configuration -------------------------------------------------------------------

    def add_handler(self, job_type: str | None, func: Handler, *, payload_type: Any = None) -> None:
        """Run ``func`` for jobs of ``job_type`` (None: every type without its own handler)."""

        if job_type is not None and (not isinstance(job_type, str) or not job_type):
            raise ValueError(f"job type must be a non-empty string or None, got {job_type!r}")
        if not callable(func):
            raise TypeError(f"handler for {job_type!r} must be callable, got {func!r}")
        self._handlers[job_type] = HandlerSpec(func, payload_type)

    def handler(
        self, job_type: str | None, *, payload_type: Any = None
    ) -> Callable[[Handler], Handler]:
        """Decorator form of ``add_handler``."""

        def register(func: Handler) -> Handler:
            self.add_handler(job_type, func, payload_type=payload_type)
            return func

        return register

    @property
    def claim_types(self) -> tuple[str, ...] | None:
        """The types this worker claims; None (every type) when a catch-all is registered."""

        if None in self._handlers:
            return None
        return tuple(sorted(job_type for job_type in self._handlers if job_type is not None))

    # -- running -------------------------------------------------------------------------

    def stop(self, *, immediate: bool = False) -> None:
        """Stop claiming; running jobs get ``shutdown_grace`` seconds to finish, or none
        with ``immediate`` (their handlers are cancelled and the jobs given back)."""

        if not self._stopping.is_set():
            logger.info(
                "worker %s stopping: %d jobs running, grace %.1f s",
                self.worker_id,
                len(self._running),
                0.0 if immediate else self.shutdown_grace,
            )
        self._stopping.set()
        for scope in list(self._claims):
            scope.cancel()
        if immediate:
            self.shutdown_grace = 0.0
            for scope in list(self._running.values()):
                scope.cancel()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def run(self) -> None:
        """Run the slots until ``stop()`` and every running job has finished or been given back.

        Raises ``UnauthorizedError``, ``InvalidRequestError`` or ``StorageBackendError`` (the
        leader cannot be looked up, for example because the bucket is missing) from a
        claim, which retrying cannot fix.
        """

        if not self._handlers:
            raise ValueError("the worker has no handlers; add one with add_handler(type, func)")
        logger.info(
            "worker %s started: types %s, concurrency %d",
            self.worker_id,
            self.claim_types or "all",
            self.concurrency,
        )
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(self._enforce_grace)
                async with anyio.create_task_group() as slots:
                    for slot in range(self.concurrency):
                        slots.start_soon(self._run_slot, slot)
                group.cancel_scope.cancel()
        finally:
            logger.info("worker %s stopped after %d jobs", self.worker_id, self.processed)
        if self._fatal is not None:
            raise self._fatal

    async def _enforce_grace(self) -> None:
        await self._stopping.wait()
        await anyio.sleep(self.shutdown_grace)
        if self._running:
            logger.warning(
                "worker %s: shutdown grace of %.1f s is over; giving back %d jobs",
                self.worker_id,
                self.shutdown_grace,
                len(self._running),
            )
        for scope in list(self._running.values()):
            scope.cancel()

    async def _run_slot(self, slot: int) -> None:
        while not self._stopping.is_set():
            job = await self._claim(slot)
            if job is None:
                with anyio.move_on_after(self.poll_interval):
                    await self._stopping.wait()
                continue
            await self._process(job)

    async def _claim(self, slot: int) -> ClaimedJob | None:
        # stop() cancels a claim that is waiting (for example retrying while no leader
        # responds), so shutdown does not wait for the client's retry timeout.
        # NOTE: a claim cancelled after the broker applied it leaves a job that no one
        # works on. The broker returns it after the job heartbeat timeout, so it costs an attempt.
        scope = anyio.CancelScope()
        self._claims.add(scope)
        try:
            with scope:
                return await self.client.claim(self.worker_id, self.claim_types)
            return None
        except (UnauthorizedError, InvalidRequestError, StorageBackendError) as error:
            # Retrying cannot fix these: stop the worker and let run() raise the error. The
            # caller reports it, so this line is INFO to keep it from showing twice.
            logger.info(
                "worker %s slot %d: claim failed (%s); stopping the worker",
                self.worker_id,
                slot,
                error,
            )
            if self._fatal is None:
                self._fatal = error
            self.stop(immediate=True)
            return None
        except BrokerError as error:
            # The broker is down or failing over; keep polling, the client already retried.
            logger.warning(
                "worker %s slot %d: claim failed (%s); polling again in %.1f s",
                self.worker_id,
                slot,
                error,
                self.poll_interval,
            )
            return None
        finally:
            self._claims.discard(scope)

    # -- one job -------------------------------------------------------------------------

    async def _process(self, job: ClaimedJob) -> None:
        logger.info(
            "worker %s claimed %s (type %s, attempt %d of %d)",
            self.worker_id,
            job.id,
            job.type,
            job.attempts,
            job.max_attempts,
        )
        await self._hook(self.on_claimed, job)
        scope = anyio.CancelScope()
        self._running[job.id] = scope
        try:
            outcome, value = await self._run_guarded(job, scope)
        except BaseException:
            # run() itself was cancelled: give the job back before leaving.
            with anyio.CancelScope(shield=True):
                await self._give_back(job)
            raise
        finally:
            self._running.pop(job.id, None)
            self.processed += 1

        if outcome == "done":
            await self._complete(job, value)
        elif outcome == "error":
            await self._fail(job, value)
        elif outcome == "shutdown":
            await self._give_back(job)
        # outcome "lost": another worker may hold the job; report nothing.

    async def _run_guarded(self, job: ClaimedJob, scope: anyio.CancelScope) -> tuple[str, Any]:
        """Run the handler under ``scope`` with heartbeats; return (outcome, value)."""

        result: list[tuple[str, Any]] = []
        with scope:
            async with anyio.create_task_group() as group:
                group.start_soon(self._heartbeat_loop, job, group.cancel_scope, result)
                try:
                    value = await self._call_handler(job)
                except Exception as error:  # noqa: BLE001 - any handler failure fails the job
                    result.append(("error", error))
                else:
                    result.append(("done", value))
                group.cancel_scope.cancel()
        if result and result[0][0] in ("done", "error"):
            return result[0]
        if scope.cancelled_caught:
            return "shutdown", None
        return result[0]

    async def _heartbeat_loop(
        self, job: ClaimedJob, handler_scope: anyio.CancelScope, result: list[tuple[str, Any]]
    ) -> None:
        while True:
            await anyio.sleep(self.heartbeat_interval)
            try:
                await self.client.heartbeat(job.id, job.claim_token)
            except (StaleClaimError, UnknownJobError) as error:
                logger.warning(
                    "worker %s lost the claim on %s (%s); cancelling its handler",
                    self.worker_id,
                    job.id,
                    error,
                )
                result.append(("lost", error))
                handler_scope.cancel()
                return
            except OsqueueError as error:
                # The next heartbeat may get through; the job expires only after the
                # broker's heartbeat timeout.
                logger.warning(
                    "worker %s: heartbeat of %s failed (%s)", self.worker_id, job.id, error
                )

    async def _call_handler(self, job: ClaimedJob) -> Any:
        spec = self._handlers.get(job.type) or self._handlers.get(None)
        if spec is None:
            raise LookupError(f"no handler for job type {job.type!r} on worker {self.worker_id}")
        if spec.payload_type is not None:
            try:
                payload = msgspec.convert(job.payload, spec.payload_type)
            except msgspec.ValidationError as error:
                raise ValueError(f"invalid payload for job type {job.type!r}: {error}") from error
            job = dataclasses.replace(job, payload=payload)

        if inspect.iscoroutinefunction(spec.func):
            return await spec.func(job)
        value = await anyio.to_thread.run_sync(spec.func, job)
        if inspect.isawaitable(value):
            return await value
        return value

    async def _complete(self, job: ClaimedJob, value: Any) -> None:
        try:
            await self.client.complete(job.id, job.claim_token)
        except (StaleClaimError, UnknownJobError) as error:
            if error.retried:
                logger.info(
                    "worker %s: complete of %s was retried and then rejected (%s); "
                    "the first attempt most likely landed",
                    self.worker_id,
                    job.id,
                    error,
                )
            else:
                logger.warning(
                    "worker %s: complete of %s rejected (%s); the claim had expired",
                    self.worker_id,
                    job.id,
                    error,
                )
            return
        except OsqueueError as error:
            logger.error(
                "worker %s: complete of %s failed (%s); the job will expire and run again",
                self.worker_id,
                job.id,
                error,
            )
            return
        logger.info("worker %s completed %s", self.worker_id, job.id)
        await self._hook(self.on_completed, job, value)

    async def _fail(self, job: ClaimedJob, error: BaseException) -> None:
        delay = self._retry_delay_for(job, error)
        message = f"{type(error).__name__}: {error}"
        logger.info(
            "worker %s: job %s failed on attempt %d of %d (%s); retry in %.1f s",
            self.worker_id,
            job.id,
            job.attempts,
            job.max_attempts,
            message,
            delay,
        )
        fail_result: FailResult | None = None
        try:
            fail_result = await self.client.fail(
                job.id, job.claim_token, message, retry_delay=delay
            )
        except OsqueueError as fail_error:
            logger.error(
                "worker %s: fail of %s was not recorded (%s); the job will expire",
                self.worker_id,
                job.id,
                fail_error,
            )
        else:
            if fail_result.status == "dead":
                logger.warning(
                    "worker %s: job %s moved to the dead letters: %s",
                    self.worker_id,
                    job.id,
                    fail_result.reason,
                )
        await self._hook(self.on_failed, job, error, fail_result)

    async def _give_back(self, job: ClaimedJob) -> None:
        if job.last_attempt:
            logger.warning(
                "worker %s gives back %s on its last attempt (%d of %d); the queue "
                "moves it to the dead letters",
                self.worker_id,
                job.id,
                job.attempts,
                job.max_attempts,
            )
        with anyio.move_on_after(GIVE_BACK_TIMEOUT) as timeout:
            try:
                result = await self.client.fail(
                    job.id, job.claim_token, SHUTDOWN_REASON, retry_delay=0.0
                )
            except OsqueueError as error:
                logger.error(
                    "worker %s could not give back %s (%s); it expires after the heartbeat timeout",
                    self.worker_id,
                    job.id,
                    error,
                )
                return
        if timeout.cancelled_caught:
            logger.error(
                "worker %s: giving back %s timed out after %.0f s",
                self.worker_id,
                job.id,
                GIVE_BACK_TIMEOUT,
            )
            return
        logger.info("worker %s gave back %s (%s)", self.worker_id, job.id, result.status)

    def _retry_delay_for(self, job: ClaimedJob, error: BaseException) -> float:
        if callable(self.retry_delay):
            try:
                return max(0.0, float(self.retry_delay(job, error)))
            except Exception:
                logger.exception("retry_delay policy failed for %s; using 1 s", job.id)
                return 1.0
        return max(0.0, float(self.retry_delay))

    async def _hook(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            value = hook(*args)
            if inspect.isawaitable(value):
                await value
        except Exception:
            logger.exception("worker %s: hook %r failed", self.worker_id, hook)


def _require_positive(name: str, value: Any, *, integer: bool = False) -> None:
    kinds: tuple[type, ...] = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or value <= 0:
        kind = "an int >= 1" if integer else "a positive number of seconds"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


async def run_worker(worker: Worker, *, handle_signals: bool = True) -> None:
    """Run ``worker``; with ``handle_signals``, SIGINT/SIGTERM call ``stop()`` and a second
    signal ends the grace period at once."""

    if not handle_signals:
        await worker.run()
        return

    import signal

    async def watch_signals() -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if worker.stopping:
                    logger.warning("second signal %d: giving back running jobs now", signum)
                    worker.stop(immediate=True)
                else:
                    logger.info("signal %d: stopping worker %s", signum, worker.worker_id)
                    worker.stop()

    async with anyio.create_task_group() as group:
        group.start_soon(watch_signals)
        await worker.run()
        group.cancel_scope.cancel()
