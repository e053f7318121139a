"""Broker settings from environment variables, overridden by command-line flags.

==============================  ================================================  ===========
variable                        meaning                                           default
==============================  ================================================  ===========
BROKER_HOST                     address the HTTP server binds to                  127.0.0.1
BROKER_PORT                     TCP port of the HTTP server                       8080
BROKER_ADVERTISED_URL           URL other processes reach this broker at; it is   http://HOST:PORT
                                stored as the leader's address in queue.json
QUEUE_KEY                       object key of the queue state                     queue.json
GROUP_COMMIT_INTERVAL_MS        minimum time between two commits (0: none)        0
BROKER_HEARTBEAT_INTERVAL_MS    how often the leader renews its lease when idle,  5000
                                and how often a standby reads the state
BROKER_HEARTBEAT_TIMEOUT_MS     the lease: a standby takes over when the leader   15000
                                has not committed for longer
JOB_HEARTBEAT_TIMEOUT_MS        a claimed job whose worker sent no heartbeat for  60000
                                longer is returned to the queue
MAX_BODY_BYTES                  largest request body or WebSocket message         1048576
MAX_BATCH_SIZE                  maximum mutations in one commit                   1000
                                (each job of a batch enqueue counts)
MAX_STATE_BYTES                 largest encoded queue.json; an enqueue that       67108864
                                would exceed it gets 507 StateTooLarge
OSQUEUE_TOKEN                   bearer token required on every route but          none
                                /healthz
==============================  ================================================  ===========

An empty value counts as unset. The storage variables are read by
``osqueue.storage.from_env``.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from osqueue.engine import EngineConfig
from osqueue.errors import ConfigError
from osqueue.state import DEFAULT_KEY
from osqueue.storage.base import MAX_KEY_BYTES

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_MAX_BODY_BYTES = 1024 * 1024
DEFAULT_MAX_BATCH_SIZE = EngineConfig().max_batch_size
DEFAULT_MAX_STATE_BYTES = EngineConfig().max_state_bytes

# A bearer token goes into an HTTP header, so it must be visible ASCII without spaces
# (the token68 characters of RFC 6750 and a few more that headers carry unchanged).
_TOKEN_PATTERN = re.compile(r"[\x21-\x7e]+")


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """The effective configuration of one broker. Times are seconds.

    ``heartbeat_interval`` is the leader's lease renewal interval and the standby's poll
    interval; ``heartbeat_timeout`` is the lease length; ``job_timeout`` is the heartbeat
    timeout of claimed jobs. ``token`` is never shown by ``repr``.
    """

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    advertised_url: str = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
    queue_key: str = DEFAULT_KEY
    group_commit_interval: float = 0.0
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0
    job_timeout: float = 60.0
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    max_state_bytes: int = DEFAULT_MAX_STATE_BYTES
    token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # The engine steps down when its last commit is older than two thirds of the lease
        # (its default renew deadline), so the renewal interval must be shorter than that.
        deadline = self.heartbeat_timeout * 2 / 3
        if self.heartbeat_interval >= deadline:
            raise ConfigError(
                "BROKER_HEARTBEAT_INTERVAL_MS",
                f"{self.heartbeat_interval * 1000:g} ms must be shorter than two thirds of "
                f"BROKER_HEARTBEAT_TIMEOUT_MS ({deadline * 1000:g} ms), or the leader steps "
                "down between two renewals",
                str(int(self.heartbeat_timeout * 1000 / 3)),
            )
        if self.group_commit_interval >= self.heartbeat_interval:
            raise ConfigError(
                "GROUP_COMMIT_INTERVAL_MS",
                f"{self.group_commit_interval * 1000:g} ms must be shorter than "
                f"BROKER_HEARTBEAT_INTERVAL_MS ({self.heartbeat_interval * 1000:g} ms)",
                "10",
            )

    def engine_config(self) -> EngineConfig:
        """Return the engine configuration these settings describe."""

        return EngineConfig(
            key=self.queue_key,
            heartbeat_timeout=self.job_timeout,
            lease_seconds=self.heartbeat_timeout,
            renew_interval=self.heartbeat_interval,
            max_batch_size=self.max_batch_size,
            max_state_bytes=self.max_state_bytes,
        )


SETTING_VARIABLES: dict[str, str] = {
    "host": "BROKER_HOST",
    "port": "BROKER_PORT",
    "advertised_url": "BROKER_ADVERTISED_URL",
    "queue_key": "QUEUE_KEY",
    "group_commit_interval_ms": "GROUP_COMMIT_INTERVAL_MS",
    "heartbeat_interval_ms": "BROKER_HEARTBEAT_INTERVAL_MS",
    "heartbeat_timeout_ms": "BROKER_HEARTBEAT_TIMEOUT_MS",
    "job_timeout_ms": "JOB_HEARTBEAT_TIMEOUT_MS",
    "max_body_bytes": "MAX_BODY_BYTES",
    "max_batch_size": "MAX_BATCH_SIZE",
    "max_state_bytes": "MAX_STATE_BYTES",
}
"""The environment variable of each setting, keyed by the option (and flag) name."""


def load_settings(
    environ: Mapping[str, str] | None = None, **overrides: Any
) -> BrokerSettings:
    """Parse the broker variables of ``environ`` (default ``os.environ``).

    ``overrides`` are values from command-line flags, keyed by the ``BrokerSettings`` field
    name, or by the flag name for times in milliseconds (``heartbeat_interval_ms``). A
    value of None means the flag was not given. Raises ``ConfigError`` naming the first invalid
    variable and a valid example.
    """

    env = dict(os.environ if environ is None else environ)
    names = SETTING_VARIABLES
    for option, value in overrides.items():
        if option not in names:
            raise TypeError(f"unknown broker option {option!r}; use one of {sorted(names)}")
        if value is not None:
            env[names[option]] = str(value)

    host = _host(env)
    port = _int(env, "BROKER_PORT", DEFAULT_PORT, minimum=1, maximum=65535, example="8080")
    advertised_url = _advertised_url(env, host, port)
    return BrokerSettings(
        host=host,
        port=port,
        advertised_url=advertised_url,
        queue_key=_queue_key(env),
        group_commit_interval=_milliseconds(env, "GROUP_COMMIT_INTERVAL_MS", 0, "10",
                                            allow_zero=True),
        heartbeat_interval=_milliseconds(env, "BROKER_HEARTBEAT_INTERVAL_MS", 5000, "5000"),
        heartbeat_timeout=_milliseconds(env, "BROKER_HEARTBEAT_TIMEOUT_MS", 15000, "15000"),
        job_timeout=_milliseconds(env, "JOB_HEARTBEAT_TIMEOUT_MS", 60000, "60000"),
        max_body_bytes=_int(env, "MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES, minimum=1024,
                            maximum=1024 ** 3, example="1048576"),
        max_batch_size=_int(env, "MAX_BATCH_SIZE", DEFAULT_MAX_BATCH_SIZE, minimum=1,
                            maximum=1_000_000, example="1000"),
        max_state_bytes=_int(env, "MAX_STATE_BYTES", DEFAULT_MAX_STATE_BYTES,
                             minimum=64 * 1024, maximum=1024 ** 4, example="67108864"),
        token=_token(env),
    )


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _host(env: Mapping[str, str]) -> str:
    value = _get(env, "BROKER_HOST") or DEFAULT_HOST
    try:
        ipaddress.ip_address(value)
        return value
    except ValueError:
        pass
    if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", value):
        raise ConfigError(
            "BROKER_HOST", f"{value!r} is not an IP address or host name", "127.0.0.1")
    return value


def _int(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int, example: str
) -> int:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a whole number", example) from None
    if not minimum <= value <= maximum:
        raise ConfigError(name, f"{value} is outside {minimum}..{maximum}", example)
    return value


def _milliseconds(
    env: Mapping[str, str], name: str, default: int, example: str, *, allow_zero: bool = False
) -> float:
    """Return the variable ``name``, given in whole milliseconds, in seconds."""

    minimum = 0 if allow_zero else 1
    value = _int(env, name, default, minimum=minimum, maximum=24 * 3600 * 1000,
                 example=example)
    return value / 1000


def _advertised_url(env: Mapping[str, str], host: str, port: int) -> str:
    raw = _get(env, "BROKER_ADVERTISED_URL")
    if raw is None:
        # An IPv6 literal needs brackets inside a URL.
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"
    parts = urllib.parse.urlsplit(raw)
    example = "http://broker-1.internal:8080"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            "BROKER_ADVERTISED_URL",
            f"{raw!r} is not an http or https URL with a host (include the scheme)",
            example,
        )
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ConfigError(
            "BROKER_ADVERTISED_URL",
            f"{raw!r} must not contain user information, a query or a fragment",
            example,
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as error:
        raise ConfigError("BROKER_ADVERTISED_URL", f"{raw!r} has an invalid port: {error}",
                          example) from None
    return raw.rstrip("/")


def _queue_key(env: Mapping[str, str]) -> str:
    value = _get(env, "QUEUE_KEY") or DEFAULT_KEY
    size = len(value.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        raise ConfigError(
            "QUEUE_KEY", f"is {size} bytes of UTF-8, more than the maximum of {MAX_KEY_BYTES}",
            DEFAULT_KEY)
    return value


def _token(env: Mapping[str, str]) -> str | None:
    value = _get(env, "OSQUEUE_TOKEN")
    if value is None:
        return None
    # The message never repeats the value: it is a secret.
    if not _TOKEN_PATTERN.fullmatch(value):
        raise ConfigError(
            "OSQUEUE_TOKEN",
            "contains spaces, control or non-ASCII characters, which an Authorization "
            "header cannot carry",
            "<output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'>",
        )
    if len(value) < 16:
        raise ConfigError(
            "OSQUEUE_TOKEN", f"is {len(value)} characters long; use at least 16",
            "<output of: python -c 'import secrets; print(secrets.token_urlsafe(32))'>",
        )
    return value
