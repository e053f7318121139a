"""HTTP client of the osqueue broker, async (``AsyncClient``) and blocking (``Client``).

Finding the leader
------------------
The client sends every request to the current leader. It learns the leader's URL from, in
this order: the ``leader`` field of a 503 ``NotLeader`` response, the broker record of
``queue.json`` read through a ``StorageBackend`` (the record's ``address`` is the leader's
advertised ``http://host:port`` URL), and the fixed URLs it was given (``BROKER_URL``,
several separated by commas). With the memory backend the state lives inside the broker
process, so only fixed URLs work there.

Retries
-------
A request is retried, with exponential backoff and jitter, until ``retry_timeout`` seconds
have passed since the first attempt, when the broker certainly did not apply it: the
connection was refused, or the broker responded 503 ``NotLeader``, ``StorageUnavailable``
or ``Overloaded``.
After the broker may have applied it (a time-out or a dropped connection after the request
was sent, or 504 ``CommitIndeterminate``), only these requests are sent again:

- reads (``stats``, ``jobs``, ``dead``, ``state``; ``health`` is never retried), and
  ``purge_dead``, which removes nothing more when applied twice;
- ``heartbeat``, ``complete`` and ``fail``, which carry the claim token. Applying one twice is
  impossible, because the first application makes the token stale. So a retry of an
  operation that did land is rejected with ``StaleClaimError`` or ``UnknownJobError``, and
  that error has ``retried=True``;
- ``claim``. A claim that landed but whose response was lost leaves a job that nobody
  works on. The queue returns that job after its heartbeat timeout, at the cost of one
  attempt;
- ``enqueue`` with explicit job ids (``job_id=`` or ``NewJob(id=...)``). The queue rejects a
  live duplicate id, so a retry of an enqueue that landed gets 409 ``DuplicateJobId``,
  which the client reads as success. The protection holds only while the first job is
  live: if it was already completed when the retry arrived, the retry enqueues it again.

An enqueue without explicit ids is never sent again after it may have been applied:
the client raises ``CommitIndeterminateError`` and the caller decides (look for the job, or
accept that it may run zero or one time).

Errors
------
Error responses are JSON ``{"_tag": ..., "message": ...}``; ``error_from_response`` maps the
tag to a subclass of ``BrokerError``. Every class has a stable ``tag`` equal to the wire tag.
"""

from __future__ import annotations

import logging
import os
import random
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import anyio
import anyio.from_thread
import httpx
from osqueue.errors import ConfigError, OsqueueError, StorageBackendError
from osqueue.spec.queue import NewJob
from osqueue.state import DEFAULT_KEY, StateDecodeError, decode_state
from osqueue.storage.base import StorageBackend

logger = logging.getLogger(__name__)

DEFAULT_BROKER_HOST = "127.0.0.1"
DEFAULT_BROKER_PORT = 8080
DEFAULT_TIMEOUT = 10.0
"""Seconds to wait for one HTTP response. A commit on a slow store plus the broker's own
storage retries fit well inside it."""
DEFAULT_RETRY_TIMEOUT = 30.0
"""Seconds to keep retrying a request. Longer than a failover with the default 15 s lease."""
BACKOFF_BASE = 0.05
BACKOFF_MAX = 1.0


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------


class BrokerError(OsqueueError):
    """An error response of the broker, or a failure to reach it.

    ``status`` is the HTTP status (None when there was no response). ``retried`` is True when
    the request was sent more than once and an earlier attempt may have been applied: a
    ``StaleClaimError`` or ``UnknownJobError`` on such a ``complete`` usually means the first
    attempt landed. ``body`` is the decoded error body.
    """

    tag: ClassVar[str] = "BrokerError"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Mapping[str, Any] | None = None,
        retried: bool = False,
    ) -> None:
        self.status = status
        self.body = dict(body or {})
        self.retried = retried
        super().__init__(message)


class InvalidRequestError(BrokerError):
    """400: the request is malformed or a field is invalid. Fix the request; never retried."""

    tag: ClassVar[str] = "InvalidRequest"


class BodyTooLargeError(InvalidRequestError):
    """413: the request body is larger than the broker's ``MAX_BODY_BYTES``."""

    tag: ClassVar[str] = "BodyTooLarge"


class UnauthorizedError(BrokerError):
    """401: the bearer token is missing or wrong. Set ``OSQUEUE_TOKEN`` to the broker's token."""

    tag: ClassVar[str] = "Unauthorized"


class UnknownJobError(BrokerError):
    """404: no live job has this id (never enqueued, or already done or dead)."""

    tag: ClassVar[str] = "UnknownJob"


class StaleClaimError(BrokerError):
    """409: the claim token is not the job's current one (the claim expired or was given back)."""

    tag: ClassVar[str] = "StaleClaim"


class DuplicateJobError(BrokerError):
    """409: an enqueue named a job id that a live job already has. Nothing was added."""

    tag: ClassVar[str] = "DuplicateJobId"


class NotLeaderError(BrokerError):
    """503: the broker is not the leader. ``leader`` is the leader's URL, if the broker has one."""

    tag: ClassVar[str] = "NotLeader"

    @property
    def leader(self) -> str | None:
        leader = self.body.get("leader")
        return leader if isinstance(leader, str) and leader else None


class BrokerUnavailableError(BrokerError):
    """No leader accepted the request within ``retry_timeout``.

    When ``retried`` is False the request was certainly not applied; when True an earlier
    attempt may have been."""

    tag: ClassVar[str] = "BrokerUnavailable"


class StorageUnavailableError(BrokerUnavailableError):
    """503: the leader could not commit because the object store failed. Not applied."""

    tag: ClassVar[str] = "StorageUnavailable"


class OverloadedError(BrokerUnavailableError):
    """503: the leader has too many mutations waiting. Not applied."""

    tag: ClassVar[str] = "Overloaded"


class StateTooLargeError(BrokerError):
    """507: the queue state would exceed the broker's size limit. The enqueue was not applied."""

    tag: ClassVar[str] = "StateTooLarge"


class CommitIndeterminateError(BrokerError):
    """504, or the connection broke after the request was sent: it may or may not have been
    applied. Raised for requests that are not safe to send again (see the module docstring)."""

    tag: ClassVar[str] = "CommitIndeterminate"


ERROR_CLASSES: dict[str, type[BrokerError]] = {
    cls.tag: cls
    for cls in (
        InvalidRequestError,
        BodyTooLargeError,
        UnauthorizedError,
        UnknownJobError,
        StaleClaimError,
        DuplicateJobError,
        NotLeaderError,
        BrokerUnavailableError,
        StorageUnavailableError,
        OverloadedError,
        StateTooLargeError,
        CommitIndeterminateError,
    )
}

# Classes for error responses whose body is not the JSON error object (a proxy's page, say).
_CLASS_OF_STATUS: dict[int, type[BrokerError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    404: UnknownJobError,
    409: StaleClaimError,
    413: BodyTooLargeError,
    503: BrokerUnavailableError,
    504: CommitIndeterminateError,
}


def error_from_response(response: httpx.Response) -> BrokerError:
    """Return the typed error for an error response of the broker."""

    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"message": response.text[:200]}

    tag = body.get("_tag")
    if isinstance(tag, str):
        cls = ERROR_CLASSES.get(tag, BrokerError)
    else:
        cls = _CLASS_OF_STATUS.get(response.status_code, BrokerError)
    message = body.get("message") or f"HTTP {response.status_code}"
    request = response.request
    text = (
        f"{request.method} {request.url.path} -> {response.status_code} {tag or cls.tag}: {message}"
    )
    return cls(text, status=response.status_code, body=body)


# ----------------------------------------------------------------------------------------
# Results
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A claimed job. ``claim_token`` must go with its heartbeat, complete and fail."""

    id: str
    type: str
    payload: Any
    attempts: int
    max_attempts: int
    claim_token: str

    @property
    def last_attempt(self) -> bool:
        """True when failing or giving back this job moves it to the dead letters."""

        return self.attempts >= self.max_attempts


@dataclass(frozen=True, slots=True)
class FailResult:
    """The result of ``fail``: ``status`` ``returned`` (claimable again at ``visible_at``)
    or ``dead`` (moved to the dead letters for ``reason``)."""

    status: str
    visible_at: float | None = None
    reason: str | None = None


# ----------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClientSettings:
    """Broker location, token and time-outs of a client. See ``settings_from_env``."""

    urls: tuple[str, ...] = ()
    storage: StorageBackend | None = None
    queue_key: str = DEFAULT_KEY
    token: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    retry_timeout: float = DEFAULT_RETRY_TIMEOUT


def parse_urls(value: str, name: str = "BROKER_URL") -> tuple[str, ...]:
    """Split a comma-separated list of broker URLs and check each; raise ``ConfigError``."""

    urls = []
    for part in value.split(","):
        url = part.strip().rstrip("/")
        if not url:
            continue
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                name, f"{url!r} is not an http or https URL with a host", "http://127.0.0.1:8080"
            )
        urls.append(url)
    if not urls:
        raise ConfigError(name, "is empty", "http://127.0.0.1:8080")
    return tuple(urls)


def settings_from_env(environ: Mapping[str, str] | None = None) -> ClientSettings:
    """Build client settings from environment variables.

    ``BROKER_URL`` (one URL or several separated by commas) wins. Otherwise, when
    ``STORAGE_BACKEND`` names a cloud backend (``s3``, ``gcs``), the client finds the leader
    in ``QUEUE_KEY`` (default ``queue.json``) on that storage, with
    ``http://BROKER_HOST:BROKER_PORT`` as the first guess when either variable is set.
    Otherwise it uses ``http://BROKER_HOST:BROKER_PORT`` (default ``http://127.0.0.1:8080``).
    ``OSQUEUE_TOKEN`` is the bearer token. Raises ``ConfigError`` for invalid values.
    """

    from osqueue.storage.config import from_env, load_settings

    env = os.environ if environ is None else environ
    token = _env(env, "OSQUEUE_TOKEN")
    queue_key = _env(env, "QUEUE_KEY") or DEFAULT_KEY

    url = _env(env, "BROKER_URL")
    if url is not None:
        return ClientSettings(urls=parse_urls(url), queue_key=queue_key, token=token)

    host = _env(env, "BROKER_HOST")
    port = _env(env, "BROKER_PORT")
    guessed = parse_urls(broker_url(host, port), "BROKER_HOST/BROKER_PORT")
    if load_settings(env).backend == "memory":
        # No queue.json to find the leader in: guessing a default address would turn a
        # missing setting into a confusing "connection refused" 30 seconds later.
        if host is None and port is None:
            raise ConfigError(
                "BROKER_URL",
                "is not set, and with STORAGE_BACKEND=memory (the default) there is no "
                "queue.json to find the leader in; set BROKER_URL (or BROKER_HOST and "
                "BROKER_PORT) to the broker's address, or STORAGE_BACKEND to the broker's",
                "http://127.0.0.1:8080",
            )
        return ClientSettings(urls=guessed, queue_key=queue_key, token=token)

    urls = guessed if host is not None or port is not None else ()
    return ClientSettings(urls=urls, storage=from_env(env), queue_key=queue_key, token=token)


def broker_url(host: str | None, port: str | int | None) -> str:
    """Return ``http://host:port`` with the defaults for missing parts; check the port."""

    host = host or DEFAULT_BROKER_HOST
    raw_port = DEFAULT_BROKER_PORT if port is None else port
    try:
        number = int(raw_port)
    except ValueError:
        raise ConfigError("BROKER_PORT", f"{raw_port!r} is not a port number", "8080") from None
    if not 0 < number < 65536:
        raise ConfigError("BROKER_PORT", f"{number} is not between 1 and 65535", "8080")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{number}"


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None or not value.strip():
        return None
    return value.strip()


# ----------------------------------------------------------------------------------------
# The async client
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    """One API request and whether it may be sent again after it may have been applied."""

    method: str
    path: str
    body: Any = None
    params: Mapping[str, Any] | None = None
    idempotent: bool = True
    duplicate_means_done: bool = False


class AsyncClient:
    """Async client of the broker API (anyio: runs under asyncio and trio).

    Give ``url`` (one URL, a comma-separated list or a sequence) and/or ``storage`` (a
    ``StorageBackend`` that stores ``queue_key``) to find the leader; see the module docstring
    for how the client picks the leader and which requests it retries. ``transport`` is an
    httpx transport for tests (``httpx.ASGITransport(app)``). ``clock`` (monotonic seconds)
    and ``rng`` (backoff jitter) are injectable.

    Every operation raises ``BrokerUnavailableError`` when no leader accepted it within
    ``retry_timeout``, and ``StorageBackendError`` when reading ``queue_key`` failed in a way
    that retrying cannot fix (a missing bucket, denied access). Use it as
    ``async with AsyncClient(...) as client`` or call ``aclose()``.
    """

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        storage: StorageBackend | None = None,
        queue_key: str = DEFAULT_KEY,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        if isinstance(url, str):
            urls = parse_urls(url, "url")
        else:
            urls = tuple(parse_urls(item, "url")[0] for item in (url or ()))
        if not urls and storage is None:
            raise ConfigError(
                "BROKER_URL",
                "no broker URL and no storage to find the leader in; set BROKER_URL, or "
                "STORAGE_BACKEND with its bucket variables",
                "http://127.0.0.1:8080",
            )
        if retry_timeout < 0:
            raise ValueError(f"retry_timeout must be >= 0 seconds, got {retry_timeout!r}")

        self._urls = urls
        self._storage = storage
        self._queue_key = queue_key
        self._retry_timeout = retry_timeout
        self._clock = clock
        # Jitter only spreads retries of many clients apart; runs need not be reproducible,
        # so an unseeded generator is the default.
        self._rng = rng or random.Random()
        self._leader: str | None = None
        self._next_fixed = 0
        self._unreachable_count = 0
        self._last_discovery_error: str | None = None
        self._discovery_warned = False
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(
            headers=headers, timeout=timeout, transport=transport, follow_redirects=False
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> AsyncClient:
        """Build a client from ``settings_from_env(environ)``; ``options`` override."""

        return cls.from_settings(settings_from_env(environ), **options)

    @classmethod
    def from_settings(cls, settings: ClientSettings, **options: Any) -> Self:
        arguments: dict[str, Any] = {
            "url": settings.urls or None,
            "storage": settings.storage,
            "queue_key": settings.queue_key,
            "token": settings.token,
            "timeout": settings.timeout,
            "retry_timeout": settings.retry_timeout,
        }
        arguments.update(options)
        return cls(**arguments)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def leader_url(self) -> str | None:
        """The URL the client currently sends requests to, or None before the first one."""

        return self._leader

    # -- queue operations ----------------------------------------------------------------

    async def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        max_attempts: int | None = None,
        job_id: str | None = None,
    ) -> str:
        """Enqueue one job and return its id.

        With ``job_id`` the enqueue is retried after an unknown outcome, and a 409
        ``DuplicateJobId`` on such a retry counts as success. Without it, an unknown outcome
        raises ``CommitIndeterminateError``.
        """

        body = _job_body(job_type, payload, max_attempts, job_id)
        result = await self._send(
            _Call(
                "POST",
                "/v1/jobs",
                body,
                idempotent=job_id is not None,
                duplicate_means_done=job_id is not None,
            )
        )
        if result is _DUPLICATE:
            return job_id  # type: ignore[return-value]
        return str(result["jobId"])

    async def enqueue_many(self, jobs: Sequence[NewJob]) -> list[str]:
        """Enqueue ``jobs`` in order in one commit (all or none) and return their ids.

        Retried after an unknown outcome only when every job has an explicit id.
        """

        if not jobs:
            raise ValueError("enqueue_many needs at least one job, for example [NewJob('email')]")
        bodies = [_job_body(job.type, job.payload, job.max_attempts, job.id) for job in jobs]
        explicit = all(job.id is not None for job in jobs)
        result = await self._send(
            _Call(
                "POST",
                "/v1/jobs",
                {"jobs": bodies},
                idempotent=explicit,
                duplicate_means_done=explicit,
            )
        )
        if result is _DUPLICATE:
            return [str(job.id) for job in jobs]
        return [str(job_id) for job_id in result["jobIds"]]

    async def claim(self, worker_id: str, types: Sequence[str] | None = None) -> ClaimedJob | None:
        """Claim the first eligible job for ``worker_id``, or return None when there is none."""

        body: dict[str, Any] = {"workerId": worker_id}
        if types is not None:
            body["types"] = list(types)
        result = await self._send(_Call("POST", "/v1/jobs/claim", body))
        job = result.get("job")
        if job is None:
            return None
        return ClaimedJob(
            id=job["id"],
            type=job["type"],
            payload=job.get("payload"),
            attempts=int(job["attempts"]),
            max_attempts=int(job["maxAttempts"]),
            claim_token=job["claimToken"],
        )

    async def heartbeat(self, job_id: str, claim_token: str) -> None:
        """Renew the claim on ``job_id``; raises ``StaleClaimError`` when it was lost."""

        await self._send(_Call("POST", _job_path(job_id, "heartbeat"), {"claimToken": claim_token}))

    async def complete(self, job_id: str, claim_token: str) -> None:
        """Mark ``job_id`` done. Only the holder of the current claim token may."""

        await self._send(_Call("POST", _job_path(job_id, "complete"), {"claimToken": claim_token}))

    async def fail(
        self, job_id: str, claim_token: str, error: str = "", *, retry_delay: float = 0.0
    ) -> FailResult:
        """Give ``job_id`` back, claimable again after ``retry_delay`` seconds, or, on its
        last attempt, move it to the dead letters."""

        if retry_delay < 0:
            raise ValueError(f"retry_delay must be >= 0 seconds, got {retry_delay!r}")
        body = {
            "claimToken": claim_token,
            "error": error,
            "retryDelayMs": round(retry_delay * 1000),
        }
        result = await self._send(_Call("POST", _job_path(job_id, "fail"), body))
        return FailResult(
            status=result["status"], visible_at=result.get("visibleAt"), reason=result.get("reason")
        )

    # -- reads ---------------------------------------------------------------------------

    async def stats(self) -> dict[str, Any]:
        return await self._send(_Call("GET", "/v1/stats"))

    async def jobs(
        self, status: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Return up to ``limit`` jobs (broker default 100) in queue order: all live jobs, or
        those with ``status`` ``unclaimed``, ``in_progress`` or ``dead``.

        A standby serves reads too, from the last state it read, which is up to one broker
        heartbeat interval old. The client sends reads to the leader once it has found it.
        """

        params: dict[str, Any] = {}
        if status is not None:
            params["status"] = status
        if limit is not None:
            params["limit"] = limit
        result = await self._send(_Call("GET", "/v1/jobs", params=params))
        return list(result["jobs"])

    async def dead(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the newest ``limit`` dead letters (broker default 100), oldest first."""

        params = {"limit": limit} if limit is not None else None
        result = await self._send(_Call("GET", "/v1/dead", params=params))
        return list(result["dead"])

    async def purge_dead(
        self, job_ids: Sequence[str] | None = None, *, died_before: float | None = None
    ) -> int:
        """Remove dead letters for good and return how many were removed.

        It removes those of ``job_ids`` (every one when None) that died before
        ``died_before`` (Unix seconds, any time when None). It is retried after an unknown
        outcome, because a second purge removes nothing more.
        """

        body: dict[str, Any] = {}
        if job_ids is not None:
            if isinstance(job_ids, str) or not job_ids:
                raise ValueError(
                    f"job_ids must be None (every dead letter) or a non-empty list of ids, "
                    f"got {job_ids!r}; for example ['job-7']"
                )
            body["jobIds"] = list(job_ids)
        if died_before is not None:
            body["diedBefore"] = died_before
        result = await self._send(_Call("DELETE", "/v1/dead", body))
        return int(result["purged"])

    async def state(self) -> dict[str, Any]:
        """Return the decoded ``queue.json`` as the leader last committed it."""

        return await self._send(_Call("GET", "/state"))

    async def health(self, url: str | None = None) -> dict[str, Any]:
        """Return ``GET /healthz`` of ``url`` (default: the leader), without retries."""

        target = url or await self._current_leader()
        response = await self._http.get(f"{target}/healthz")
        if response.is_error:
            raise error_from_response(response)
        return response.json()

    # -- request loop --------------------------------------------------------------------

    async def _send(self, call: _Call) -> Any:
        """Send ``call`` to the leader, following leader changes, and return the JSON body.

        See the module docstring for what is retried.
        """

        deadline = self._clock() + self._retry_timeout
        attempt = 0
        maybe_applied = False
        last_error: BaseException | None = None

        while True:
            attempt += 1
            try:
                url = await self._current_leader()
                response = await self._http.request(
                    call.method, url + call.path, json=call.body, params=call.params
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as error:
                # Nothing was sent: safe to try another broker for any request.
                last_error = error
                self._log_unreachable(error)
                self._forget_leader()
            except httpx.TransportError as error:
                # The request may have reached the broker and been applied.
                if not call.idempotent:
                    raise CommitIndeterminateError(
                        f"{call.method} {call.path}: the connection to {self._leader} failed "
                        f"after the request was sent ({error!r}); it may have been applied",
                        retried=maybe_applied,
                    ) from error
                maybe_applied = True
                last_error = error
                logger.info(
                    "%s %s to %s failed after sending (%r); retrying",
                    call.method,
                    call.path,
                    self._leader,
                    error,
                )
                self._forget_leader()
            except (BrokerUnavailableError, StateDecodeError) as error:
                # Discovery found no leader yet, or read a state being replaced.
                last_error = error
            else:
                if response.is_success:
                    self._log_reachable(url)
                    return response.json()
                error = error_from_response(response)
                error.retried = maybe_applied
                if (
                    call.duplicate_means_done
                    and maybe_applied
                    and isinstance(error, DuplicateJobError)
                ):
                    logger.info(
                        "%s %s: the earlier attempt had landed (%s)", call.method, call.path, error
                    )
                    return _DUPLICATE
                if not self._retryable(call, error):
                    raise error
                if isinstance(error, CommitIndeterminateError):
                    maybe_applied = True
                last_error = error

            if self._clock() >= deadline:
                message = (
                    f"{call.method} {call.path}: no leader accepted the request within "
                    f"{self._retry_timeout:g} s ({attempt} attempts); last error: {last_error}"
                )
                if self._last_discovery_error and self._last_discovery_error not in message:
                    message += (
                        f"; reading {self._queue_key} to find the leader failed too: "
                        f"{self._last_discovery_error}"
                    )
                raise BrokerUnavailableError(message, retried=maybe_applied) from last_error
            delay = min(BACKOFF_MAX, BACKOFF_BASE * 2 ** min(attempt - 1, 10))
            delay *= 0.5 + self._rng.random() / 2
            logger.debug(
                "retrying %s %s in %.3f s (attempt %d)", call.method, call.path, delay, attempt
            )
            await anyio.sleep(delay)

    def _log_unreachable(self, error: BaseException) -> None:
        """Log the first failed connection of an outage at INFO and its repeats at DEBUG.

        During a failover every retry fails to connect, a few times a second; one line per
        outage plus a count when it ends is enough.
        """

        self._unreachable_count += 1
        level = logging.INFO if self._unreachable_count == 1 else logging.DEBUG
        logger.log(
            level,
            "broker %s unreachable (%s); finding the leader again (repeats logged at DEBUG)",
            self._leader,
            error,
        )

    def _log_reachable(self, url: str) -> None:
        if self._last_discovery_error is not None and not self._discovery_warned:
            self._discovery_warned = True
            logger.warning(
                "reached broker %s at a fixed URL, but reading %s to find the leader failed "
                "(%s); check the storage settings",
                url,
                self._queue_key,
                self._last_discovery_error,
            )
        if self._unreachable_count:
            logger.info(
                "reached broker %s after %d failed connection attempts",
                url,
                self._unreachable_count,
            )
            self._unreachable_count = 0

    def _retryable(self, call: _Call, error: BrokerError) -> bool:
        """Decide whether to send ``call`` again after ``error``, updating the leader guess."""

        if isinstance(error, NotLeaderError):
            logger.info("%s is not the leader (leader hint %s)", self._leader, error.leader)
            self._forget_leader(hint=error.leader)
            return True
        if isinstance(error, StorageUnavailableError | BrokerUnavailableError):
            logger.info("%s %s: %s; retrying", call.method, call.path, error)
            return True
        if isinstance(error, CommitIndeterminateError):
            if call.idempotent:
                logger.info("%s %s: outcome unknown; retrying (safe)", call.method, call.path)
            return call.idempotent
        return False

    async def _current_leader(self) -> str:
        if self._leader is None:
            self._leader = await self._discover()
            logger.info("sending requests to broker %s", self._leader)
        return self._leader

    def _forget_leader(self, hint: str | None = None) -> None:
        self._leader = hint.rstrip("/") if hint else None

    async def _discover(self) -> str:
        """Return the leader's URL from storage, else the next fixed URL in turn."""

        if self._storage is not None:
            try:
                found = await self._leader_from_storage()
                self._last_discovery_error = None
                self._discovery_warned = False
            except StorageBackendError as error:
                if not error.retryable:
                    # A missing bucket or denied access does not heal by retrying.
                    raise
                if not self._urls:
                    raise BrokerUnavailableError(
                        f"reading {self._queue_key} to find the leader failed: {error}"
                    ) from error
                # INFO, because either the final error names this failure or a fixed URL
                # answers and _log_reachable warns once. Repeats go to DEBUG.
                message = str(error)
                level = logging.DEBUG if message == self._last_discovery_error else logging.INFO
                self._last_discovery_error = message
                logger.log(
                    level,
                    "reading %s to find the leader failed (%s); trying %s",
                    self._queue_key,
                    error,
                    self._urls,
                )
                found = None
            if found is not None:
                return found
        if self._urls:
            url = self._urls[self._next_fixed % len(self._urls)]
            self._next_fixed += 1
            return url
        raise BrokerUnavailableError(
            f"{self._queue_key} names no leader yet; start a broker on this storage"
        )

    async def _leader_from_storage(self) -> str | None:
        assert self._storage is not None
        read = await self._storage.read(self._queue_key)
        if read is None:
            return None
        address = decode_state(read.data).broker.address
        if not address:
            return None
        if "://" not in address:
            address = f"http://{address}"
        return address.rstrip("/")


_DUPLICATE = object()
"""Marker result: a retried enqueue was rejected as a duplicate, so it had landed before."""


def _job_body(
    job_type: str, payload: Any, max_attempts: int | None, job_id: str | None
) -> dict[str, Any]:
    # NewJob checks the fields with the queue's own rules, so bad input fails before sending.
    job = NewJob(job_type, payload, max_attempts if max_attempts is not None else 3, job_id)
    body: dict[str, Any] = {"type": job.type, "payload": job.payload}
    if max_attempts is not None:
        body["maxAttempts"] = job.max_attempts
    if job.id is not None:
        body["id"] = job.id
    return body


def _job_path(job_id: str, action: str) -> str:
    if not isinstance(job_id, str) or not job_id:
        raise ValueError(f"job id must be a non-empty string, got {job_id!r}")
    return f"/v1/jobs/{urllib.parse.quote(job_id, safe='')}/{action}"


# ----------------------------------------------------------------------------------------
# The blocking client
# ----------------------------------------------------------------------------------------


class Client(AbstractContextManager["Client"]):
    """Blocking client with the methods of ``AsyncClient``.

    It runs an ``AsyncClient`` on an event loop in a background thread (an anyio blocking
    portal), so it works from any thread that is not itself running that loop. Use it as
    ``with Client(...) as client`` or call ``close()``. Arguments are those of
    ``AsyncClient``.
    """

    def __init__(self, url: str | Sequence[str] | None = None, **options: Any) -> None:
        self._portal_cm = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_cm.__enter__()
        try:
            self._async = self._portal.call(lambda: AsyncClient(url, **options))
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Client:
        return cls.from_settings(settings_from_env(environ), **options)

    @classmethod
    def from_settings(cls, settings: ClientSettings, **options: Any) -> Client:
        arguments: dict[str, Any] = {
            "storage": settings.storage,
            "queue_key": settings.queue_key,
            "token": settings.token,
            "timeout": settings.timeout,
            "retry_timeout": settings.retry_timeout,
        }
        arguments.update(options)
        url = arguments.pop("url", settings.urls or None)
        return cls(url, **arguments)

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._portal_cm is None:
            return
        try:
            self._portal.call(self._async.aclose)
        finally:
            self._portal_cm.__exit__(None, None, None)
            self._portal_cm = None

    @property
    def leader_url(self) -> str | None:
        return self._async.leader_url

    def _call(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self._portal_cm is None:
            raise RuntimeError("the client is closed; create a new Client")
        return self._portal.call(lambda: method(*args, **kwargs))

    def enqueue(
        self,
        job_type: str,
        payload: Any = None,
        *,
        max_attempts: int | None = None,
        job_id: str | None = None,
    ) -> str:
        return self._call(
            self._async.enqueue, job_type, payload, max_attempts=max_attempts, job_id=job_id
        )

    def enqueue_many(self, jobs: Sequence[NewJob]) -> list[str]:
        return self._call(self._async.enqueue_many, jobs)

    def claim(self, worker_id: str, types: Sequence[str] | None = None) -> ClaimedJob | None:
        return self._call(self._async.claim, worker_id, types)

    def heartbeat(self, job_id: str, claim_token: str) -> None:
        self._call(self._async.heartbeat, job_id, claim_token)

    def complete(self, job_id: str, claim_token: str) -> None:
        self._call(self._async.complete, job_id, claim_token)

    def fail(
        self, job_id: str, claim_token: str, error: str = "", *, retry_delay: float = 0.0
    ) -> FailResult:
        return self._call(self._async.fail, job_id, claim_token, error, retry_delay=retry_delay)

    def stats(self) -> dict[str, Any]:
        return self._call(self._async.stats)

    def jobs(self, status: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        return self._call(self._async.jobs, status, limit)

    def dead(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self._call(self._async.dead, limit)

    def purge_dead(
        self, job_ids: Sequence[str] | None = None, *, died_before: float | None = None
    ) -> int:
        return self._call(self._async.purge_dead, job_ids, died_before=died_before)

    def state(self) -> dict[str, Any]:
        return self._call(self._async.state)

    def health(self, url: str | None = None) -> dict[str, Any]:
        return self._call(self._async.health, url)
