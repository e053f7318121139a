"""Choose and build a storage backend from environment variables.

``from_env`` reads the variables below; ``describe_config`` returns the effective settings
for display. An empty value counts as unset. docs/configuration.md explains each variable.

==========================  ==================================================  ==========
variable                    meaning                                             default
==========================  ==================================================  ==========
STORAGE_BACKEND             ``memory``, ``s3`` or ``gcs`` (case-insensitive)    memory
S3_BUCKET                   bucket name, required for ``s3``
S3_REGION                   region of the bucket                                SDK default
S3_PREFIX                   key prefix inside the bucket                        none
S3_ENDPOINT_URL             http(s) URL of an S3-compatible server              AWS
GCS_BUCKET                  bucket name, required for ``gcs``
GCS_PREFIX                  key prefix inside the bucket                        none
STORAGE_EMULATOR_HOST       http(s) URL of a GCS emulator                       Google
S3_MAX_READS_PER_MINUTE     read rate limit for any backend                     no limit
S3_MAX_WRITES_PER_MINUTE    write rate limit for any backend                    no limit
S3_MAX_WRITES_PER_DAY       writes per UTC day for any backend                  no limit
==========================  ==================================================  ==========
"""

from __future__ import annotations

import logging
import math
import os
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from osqueue.errors import ConfigError
from osqueue.storage.base import MAX_KEY_BYTES, StorageBackend
from osqueue.storage.memory import MemoryBackend
from osqueue.storage.throttled import ThrottledStorageBackend

logger = logging.getLogger(__name__)

BACKENDS = ("memory", "s3", "gcs")

_BUCKET_EXAMPLE = "my-queue-bucket"
# Bucket names of S3 and GCS (including legacy S3 names with capitals) use this alphabet.
# This check only catches values that are clearly not a bucket name, such as a URL or a
# path. Length is left to the server: AWS and GCS require 3 to 63 characters, but
# S3-compatible servers set their own limits, so a shorter name fails only when used.
_BUCKET_PATTERN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """The effective storage configuration, parsed and checked.

    ``bucket``, ``prefix``, ``region`` and ``endpoint_url`` apply to the chosen cloud
    backend only (``region`` to ``s3`` only). Rate limits are requests per minute and
    ``writes_per_day`` is a count per UTC day; ``None`` means no limit.
    """

    backend: str = "memory"
    bucket: str | None = None
    prefix: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    reads_per_minute: float | None = None
    writes_per_minute: float | None = None
    writes_per_day: int | None = None

    @property
    def throttled(self) -> bool:
        return any(
            limit is not None
            for limit in (self.reads_per_minute, self.writes_per_minute, self.writes_per_day)
        )


def load_settings(environ: Mapping[str, str] | None = None) -> StorageSettings:
    """Parse the storage variables of ``environ`` (default ``os.environ``).

    Raises ``ConfigError`` naming the first missing or invalid variable and a valid example.
    """

    env = os.environ if environ is None else environ
    backend = _backend_name(env)
    limits: dict[str, Any] = {
        "reads_per_minute": _rate(env, "S3_MAX_READS_PER_MINUTE", "600"),
        "writes_per_minute": _rate(env, "S3_MAX_WRITES_PER_MINUTE", "60"),
        "writes_per_day": _count(env, "S3_MAX_WRITES_PER_DAY", "50000"),
    }

    if backend == "s3":
        return StorageSettings(
            backend="s3",
            bucket=_bucket(env, "S3_BUCKET"),
            prefix=_prefix(env, "S3_PREFIX"),
            region=_region(env),
            endpoint_url=_url(env, "S3_ENDPOINT_URL", "http://127.0.0.1:8333"),
            **limits,
        )
    if backend == "gcs":
        return StorageSettings(
            backend="gcs",
            bucket=_bucket(env, "GCS_BUCKET"),
            prefix=_prefix(env, "GCS_PREFIX"),
            endpoint_url=_url(env, "STORAGE_EMULATOR_HOST", "http://127.0.0.1:4443"),
            **limits,
        )
    return StorageSettings(backend="memory", **limits)


def from_env(environ: Mapping[str, str] | None = None) -> StorageBackend:
    """Build the backend that ``environ`` (default ``os.environ``) describes.

    The S3 and GCS SDKs are imported only when that backend is chosen. When any of the
    ``S3_MAX_*`` limits is set, the backend is wrapped in a ``ThrottledStorageBackend``,
    whichever backend it is. Raises ``ConfigError`` for a missing or invalid variable.
    """

    settings = load_settings(environ)
    backend = build_backend(settings)
    logger.info("storage backend from the environment: %s", _summary(settings))
    return backend


def build_backend(settings: StorageSettings) -> StorageBackend:
    """Construct the backend, wrapped for throttling if ``settings`` sets any limit.

    A ``ConfigError`` that a backend constructor raises about one of its parameters is
    raised again under the name of the environment variable that set it.
    """

    backend: StorageBackend
    try:
        backend = _construct(settings)
    except ConfigError as error:
        variable = _VARIABLE_OF_PARAMETER[settings.backend].get(error.name)
        if variable is None:
            raise
        raise ConfigError(variable, error.problem, error.example) from error

    if not settings.throttled:
        return backend
    return ThrottledStorageBackend(
        backend,
        reads_per_minute=settings.reads_per_minute,
        writes_per_minute=settings.writes_per_minute,
        writes_per_day=settings.writes_per_day,
    )


_VARIABLE_OF_PARAMETER: dict[str, dict[str, str]] = {
    "memory": {},
    "s3": {
        "bucket": "S3_BUCKET",
        "prefix": "S3_PREFIX",
        "region": "S3_REGION",
        "endpoint_url": "S3_ENDPOINT_URL",
    },
    "gcs": {
        "bucket": "GCS_BUCKET",
        "prefix": "GCS_PREFIX",
        "endpoint_url": "STORAGE_EMULATOR_HOST",
    },
}


def _construct(settings: StorageSettings) -> StorageBackend:
    if settings.backend == "s3":
        from osqueue.storage.s3 import S3Backend

        return S3Backend(
            settings.bucket,
            prefix=settings.prefix,
            region=settings.region,
            endpoint_url=settings.endpoint_url,
        )
    if settings.backend == "gcs":
        from osqueue.storage.gcs import GCSBackend

        return GCSBackend(
            settings.bucket,
            prefix=settings.prefix,
            endpoint_url=settings.endpoint_url,
        )
    return MemoryBackend()


def describe_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the effective settings of ``environ`` as a flat dict for display.

    Raises ``ConfigError`` like ``from_env``. See ``describe_settings`` for the contents.
    """

    return describe_settings(load_settings(environ))


def describe_settings(settings: StorageSettings) -> dict[str, Any]:
    """Return ``settings`` as a flat dict for display.

    Only settings that apply to the chosen backend appear, and user information in an
    endpoint URL (``http://user:password@host``) is replaced by ``***``.
    """

    described: dict[str, Any] = {"backend": settings.backend}
    if settings.backend != "memory":
        described["bucket"] = settings.bucket
        described["prefix"] = settings.prefix
        if settings.backend == "s3":
            described["region"] = settings.region
        described["endpoint_url"] = (
            None if settings.endpoint_url is None else redact_url(settings.endpoint_url)
        )
    described["reads_per_minute"] = settings.reads_per_minute
    described["writes_per_minute"] = settings.writes_per_minute
    described["writes_per_day"] = settings.writes_per_day
    return described


def redact_url(url: str) -> str:
    """Return ``url`` with any user name and password replaced by ``***``.

    A value without a scheme (``user:pw@host:port``) is redacted too, because it is what
    an invalid-URL message would otherwise print.
    """

    return _USERINFO.sub(lambda match: f"{match.group(1) or ''}***@", url, count=1)


def redact_text(text: str) -> str:
    """Return ``text`` with the user information of each ``scheme://user:pw@`` URL redacted.

    Meant for SDK error messages, which quote the request URL.
    """

    return _EMBEDDED_USERINFO.sub(r"\1***@", text)


_EMBEDDED_USERINFO = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s\"']*@")
# An optional scheme, then user information: everything up to the first '@' before any '/'.
_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)?[^/@]*@")


def _summary(settings: StorageSettings) -> str:
    described = describe_settings(settings)
    return " ".join(f"{name}={value}" for name, value in described.items() if value is not None)


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _backend_name(env: Mapping[str, str]) -> str:
    raw = _get(env, "STORAGE_BACKEND")
    if raw is None:
        return "memory"
    name = raw.lower()
    if name not in BACKENDS:
        raise ConfigError(
            "STORAGE_BACKEND",
            f"unknown backend {raw!r}, choose one of {', '.join(BACKENDS)}",
            "s3",
        )
    return name


def _bucket(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name)
    if value is None:
        backend = name.split("_", 1)[0].lower()
        raise ConfigError(name, f"missing, but STORAGE_BACKEND={backend} needs it", _BUCKET_EXAMPLE)
    if not _BUCKET_PATTERN.fullmatch(value):
        raise ConfigError(
            name,
            f"{value!r} is not a bucket name: use only letters, digits, '.', '-' and '_', "
            "start and end with a letter or digit, and leave out any scheme or path",
            _BUCKET_EXAMPLE,
        )
    return value


def _prefix(env: Mapping[str, str], name: str) -> str:
    value = _get(env, name) or ""
    size = len(value.encode("utf-8"))
    if size >= MAX_KEY_BYTES:
        raise ConfigError(
            name,
            f"is {size} bytes of UTF-8, which leaves no room for object names within the "
            f"{MAX_KEY_BYTES}-byte key limit",
            "queues/prod/",
        )
    return value


def _region(env: Mapping[str, str]) -> str | None:
    value = _get(env, "S3_REGION")
    if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        raise ConfigError(
            "S3_REGION",
            f"{value!r} is not a region name, which has only letters, digits and '-'",
            "eu-west-1",
        )
    return value


def _url(env: Mapping[str, str], name: str, example: str) -> str | None:
    value = _get(env, name)
    if value is None:
        return None
    return validate_endpoint_url(name, value, example)


def validate_endpoint_url(name: str, value: str, example: str) -> str:
    """Return ``value`` if it is an http or https URL with a host and a valid port.

    Raises ``ConfigError`` under ``name`` (a variable or an option such as
    ``--endpoint-url``); the message shows the URL with its credentials redacted.
    """

    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            name,
            f"{redact_url(value)!r} is not an http or https URL with a host (include the scheme)",
            example,
        )
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range or not a number
    except ValueError as error:
        raise ConfigError(
            name, f"{redact_url(value)!r} has an invalid port: {error}", example
        ) from None
    return value


def _rate(env: Mapping[str, str], name: str, example: str) -> float | None:
    raw = _get(env, name)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            name, f"{raw!r} is not a number of requests per minute", example
        ) from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            name,
            f"{raw!r} is not a positive number of requests per minute (unset it for no limit)",
            example,
        )
    return value


def _count(env: Mapping[str, str], name: str, example: str) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            name, f"{raw!r} is not a whole number of writes per UTC day", example
        ) from None
    if value <= 0:
        raise ConfigError(
            name,
            f"{raw!r} is not a positive number of writes per UTC day (unset it for no limit)",
            example,
        )
    return value
