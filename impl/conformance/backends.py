"""Turn the CLI's ``--backend`` value into a backend factory ``factory(prefix) -> backend``.

``memory``, ``s3`` and ``gcs`` name the built-in backends; ``package.module:function``
names a third-party factory, called with the run's prefix. The S3 and GCS backends are
imported only when asked for, so their SDKs are needed only then.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from osqueue.errors import ConfigError
from osqueue.spec.cas import TokenPolicy
from osqueue.storage.config import validate_endpoint_url

BUILT_IN = ("memory", "s3", "gcs")
ENDPOINT_EXAMPLES = {"s3": "http://127.0.0.1:8333", "gcs": "http://127.0.0.1:4443"}


@dataclass(frozen=True)
class BackendOptions:
    """The CLI options that configure a backend."""

    backend: str
    endpoint_url: str | None = None
    bucket: str | None = None
    region: str | None = None
    project: str | None = None
    token_policy: TokenPolicy | None = None
    lying: bool = False


def resolve_factory(options: BackendOptions) -> Callable[[str], Any]:
    """Return a factory for ``options.backend``; raise ``ConfigError`` naming a bad value.

    The ``ConfigError`` names the CLI option (``--endpoint-url``, ``--lying``, ...). Its
    example is the whole option as typed, such as ``--backend memory --lying``.
    """

    name = options.backend.strip()
    if options.lying and name != "memory":
        raise ConfigError(
            "--lying",
            f"only works with --backend memory, not {name!r}; drop --lying or use the "
            "memory backend",
            "--backend memory --lying",
        )
    if options.endpoint_url is not None:
        _validate_endpoint(name, options.endpoint_url)
    if name == "memory":
        return _memory_factory(options)
    if name == "s3":
        return _s3_factory(options)
    if name == "gcs":
        return _gcs_factory(options)
    if ":" in name:
        return load_module_factory(name)
    raise ConfigError(
        "--backend",
        f"unknown backend {name!r}; use one of {', '.join(BUILT_IN)} or module:factory",
        "--backend memory",
    )


def _memory_factory(options: BackendOptions) -> Callable[[str], Any]:
    from osqueue.storage.memory import MemoryBackend

    policy = options.token_policy or TokenPolicy.UNIQUE

    def make(prefix: str) -> MemoryBackend:
        # The memory backend keeps nothing outside the process, so the prefix only
        # matters for the suite's own key names.
        return MemoryBackend(token_policy=policy, ignore_preconditions=options.lying)

    return make


def _validate_endpoint(backend: str, endpoint_url: str) -> None:
    example = ENDPOINT_EXAMPLES.get(backend)
    if example is None:
        raise ConfigError(
            "--endpoint-url",
            f"applies only to --backend s3 or gcs, not {backend!r}; drop it or configure "
            "the endpoint in your factory",
            "--backend s3 --endpoint-url http://127.0.0.1:8333",
        )
    try:
        validate_endpoint_url("--endpoint-url", endpoint_url, example)
    except ConfigError as error:
        raise ConfigError(error.name, error.problem, f"--endpoint-url {example}") from None


def _require_bucket(options: BackendOptions) -> str:
    if not options.bucket:
        raise ConfigError(
            "--bucket",
            f"is required with --backend {options.backend}",
            "--bucket my-test-bucket",
        )
    return options.bucket


def _s3_factory(options: BackendOptions) -> Callable[[str], Any]:
    bucket = _require_bucket(options)

    def make(prefix: str) -> Any:
        from osqueue.storage.s3 import S3Backend

        return S3Backend(
            bucket, prefix=prefix, region=options.region, endpoint_url=options.endpoint_url
        )

    return make


def _gcs_factory(options: BackendOptions) -> Callable[[str], Any]:
    bucket = _require_bucket(options)

    def make(prefix: str) -> Any:
        from osqueue.storage.gcs import GCSBackend

        return GCSBackend(
            bucket, prefix=prefix, project=options.project, endpoint_url=options.endpoint_url
        )

    return make


def load_module_factory(spec: str) -> Callable[[str], Any]:
    """Import ``module:attribute`` and return the callable it names."""

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigError(
            "--backend",
            f"{spec!r} is not of the form module:factory",
            "--backend mypackage.storage:make_backend",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(
            "--backend",
            f"cannot import module {module_name!r} from {spec!r} ({error}); check the module "
            "path, and install the package in this environment or add the directory that "
            f"contains it to PYTHONPATH (for example PYTHONPATH=. when {module_name!r} is in "
            "the current directory)",
            "--backend mypackage.storage:make_backend",
        ) from error

    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ConfigError(
                "--backend",
                f"module {module_name!r} has no attribute {attribute!r}; name a function "
                "that takes the prefix and returns a StorageBackend",
                f"--backend {module_name}:make_backend",
            )
    if not callable(factory):
        raise ConfigError(
            "--backend",
            f"{spec!r} names a {type(factory).__name__}, which is not callable; name a "
            "function that takes the prefix and returns a StorageBackend",
            f"--backend {module_name}:make_backend",
        )
    return factory
