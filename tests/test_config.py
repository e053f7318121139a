"""from_env, load_settings and describe_config."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from osqueue.errors import ConfigError
from osqueue.storage import MemoryBackend, ThrottledStorageBackend, from_env
from osqueue.storage.config import describe_config, load_settings, redact_url


class FakeBackend:
    """Stands in for S3Backend or GCSBackend and records its constructor arguments."""

    name = "fake"

    def __init__(self, bucket: str, **options: Any) -> None:
        self.bucket = bucket
        self.options = options

    async def read(self, key: str) -> None:
        return None

    async def write(self, key: str, data: bytes, expected: object) -> None:
        raise NotImplementedError

    async def create_if_not_exists(self, key: str, data: bytes) -> None:
        raise NotImplementedError


@pytest.fixture
def fake_s3(monkeypatch: pytest.MonkeyPatch) -> None:
    import osqueue.storage.s3

    monkeypatch.setattr(osqueue.storage.s3, "S3Backend", FakeBackend)


@pytest.fixture
def fake_gcs(monkeypatch: pytest.MonkeyPatch) -> None:
    import osqueue.storage.gcs

    monkeypatch.setattr(osqueue.storage.gcs, "GCSBackend", FakeBackend)


def test_default_is_memory() -> None:
    backend = from_env({})

    assert isinstance(backend, MemoryBackend)


def test_empty_values_count_as_unset() -> None:
    backend = from_env({"STORAGE_BACKEND": "", "S3_MAX_WRITES_PER_MINUTE": "  "})

    assert isinstance(backend, MemoryBackend)


def test_backend_name_is_case_insensitive() -> None:
    assert isinstance(from_env({"STORAGE_BACKEND": " Memory "}), MemoryBackend)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_BACKEND", "memory")
    monkeypatch.setenv("S3_MAX_WRITES_PER_DAY", "100")

    backend = from_env()

    assert isinstance(backend, ThrottledStorageBackend)
    assert backend.writes_per_day == 100


def test_throttle_wraps_memory() -> None:
    backend = from_env({
        "S3_MAX_READS_PER_MINUTE": "600",
        "S3_MAX_WRITES_PER_MINUTE": "60.5",
        "S3_MAX_WRITES_PER_DAY": "50000",
    })

    assert isinstance(backend, ThrottledStorageBackend)
    assert isinstance(backend.inner, MemoryBackend)
    assert backend.reads_per_minute == 600.0
    assert backend.writes_per_minute == 60.5
    assert backend.writes_per_day == 50000
    assert backend.name == "memory"


def test_s3_settings_reach_constructor(fake_s3: None) -> None:
    backend = from_env({
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "queue-bucket",
        "S3_REGION": "eu-west-1",
        "S3_PREFIX": "prod/",
        "S3_ENDPOINT_URL": "http://127.0.0.1:8333",
    })

    assert isinstance(backend, FakeBackend)
    assert backend.bucket == "queue-bucket"
    assert backend.options == {
        "prefix": "prod/",
        "region": "eu-west-1",
        "endpoint_url": "http://127.0.0.1:8333",
    }


def test_s3_optional_settings_default(fake_s3: None) -> None:
    backend = from_env({"STORAGE_BACKEND": "s3", "S3_BUCKET": "queue-bucket"})

    assert isinstance(backend, FakeBackend)
    assert backend.options == {"prefix": "", "region": None, "endpoint_url": None}


def test_gcs_settings_reach_constructor(fake_gcs: None) -> None:
    backend = from_env({
        "STORAGE_BACKEND": "gcs",
        "GCS_BUCKET": "queue-bucket",
        "GCS_PREFIX": "prod/",
        "STORAGE_EMULATOR_HOST": "http://127.0.0.1:4443",
        "S3_REGION": "ignored-for-gcs",
    })

    assert isinstance(backend, FakeBackend)
    assert backend.bucket == "queue-bucket"
    assert backend.options == {"prefix": "prod/", "endpoint_url": "http://127.0.0.1:4443"}


def test_throttle_wraps_cloud_backends(fake_s3: None, fake_gcs: None) -> None:
    for env in (
        {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b-1"},
        {"STORAGE_BACKEND": "gcs", "GCS_BUCKET": "b-1"},
    ):
        backend = from_env({**env, "S3_MAX_WRITES_PER_MINUTE": "30"})

        assert isinstance(backend, ThrottledStorageBackend)
        assert isinstance(backend.inner, FakeBackend)
        assert backend.name == "fake"
        assert backend.writes_per_minute == 30.0


def test_real_s3_backend_constructed() -> None:
    # The endpoint is a closed local port: constructing the client sends no request.
    backend = from_env({
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "queue-bucket",
        "S3_REGION": "us-east-1",
        "S3_ENDPOINT_URL": "http://127.0.0.1:9",
    })

    assert type(backend).__name__ == "S3Backend"
    assert backend.name == "s3"


def test_real_gcs_backend_constructed() -> None:
    backend = from_env({
        "STORAGE_BACKEND": "gcs",
        "GCS_BUCKET": "queue-bucket",
        "STORAGE_EMULATOR_HOST": "http://127.0.0.1:9",
    })

    assert type(backend).__name__ == "GCSBackend"
    assert backend.name == "gcs"


def test_constructor_error_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import osqueue.storage.s3

    def reject_prefix(bucket: str, **options: Any) -> None:
        raise ConfigError("prefix", "is not usable", "queues/prod/")

    monkeypatch.setattr(osqueue.storage.s3, "S3Backend", reject_prefix)
    with pytest.raises(ConfigError) as raised:
        from_env({"STORAGE_BACKEND": "s3", "S3_BUCKET": "b-1", "S3_PREFIX": "x"})

    assert raised.value.name == "S3_PREFIX"
    assert "S3_PREFIX=queues/prod/" in str(raised.value)


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"STORAGE_BACKEND": "azure"}, "STORAGE_BACKEND"),
        ({"STORAGE_BACKEND": "s3"}, "S3_BUCKET"),
        ({"STORAGE_BACKEND": "gcs"}, "GCS_BUCKET"),
        ({"STORAGE_BACKEND": "s3", "S3_BUCKET": "s3://bucket"}, "S3_BUCKET"),
        ({"STORAGE_BACKEND": "gcs", "GCS_BUCKET": "bucket/path"}, "GCS_BUCKET"),
        ({"STORAGE_BACKEND": "s3", "S3_BUCKET": "b-1", "S3_REGION": "eu west"}, "S3_REGION"),
        (
            {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b-1", "S3_ENDPOINT_URL": "127.0.0.1:8333"},
            "S3_ENDPOINT_URL",
        ),
        (
            {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b-1", "S3_ENDPOINT_URL": "ftp://host"},
            "S3_ENDPOINT_URL",
        ),
        (
            {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b-1", "S3_ENDPOINT_URL": "http://h:99999"},
            "S3_ENDPOINT_URL",
        ),
        (
            {"STORAGE_BACKEND": "gcs", "GCS_BUCKET": "b-1", "STORAGE_EMULATOR_HOST": "h:4443"},
            "STORAGE_EMULATOR_HOST",
        ),
        (
            {"STORAGE_BACKEND": "s3", "S3_BUCKET": "b-1", "S3_PREFIX": "p" * 1024},
            "S3_PREFIX",
        ),
        ({"S3_MAX_READS_PER_MINUTE": "fast"}, "S3_MAX_READS_PER_MINUTE"),
        ({"S3_MAX_WRITES_PER_MINUTE": "-1"}, "S3_MAX_WRITES_PER_MINUTE"),
        ({"S3_MAX_WRITES_PER_MINUTE": "0"}, "S3_MAX_WRITES_PER_MINUTE"),
        ({"S3_MAX_WRITES_PER_MINUTE": "inf"}, "S3_MAX_WRITES_PER_MINUTE"),
        ({"S3_MAX_WRITES_PER_MINUTE": "nan"}, "S3_MAX_WRITES_PER_MINUTE"),
        ({"S3_MAX_WRITES_PER_DAY": "1.5"}, "S3_MAX_WRITES_PER_DAY"),
        ({"S3_MAX_WRITES_PER_DAY": "-3"}, "S3_MAX_WRITES_PER_DAY"),
    ],
)
def test_invalid_value_names_variable(env: dict[str, str], name: str) -> None:
    with pytest.raises(ConfigError) as raised:
        from_env(env)

    assert raised.value.name == name
    message = str(raised.value)
    assert message.startswith(f"{name}: ")
    assert f"for example {name}=" in message
    assert raised.value.example


def test_invalid_value_message_shows_value() -> None:
    with pytest.raises(ConfigError) as raised:
        from_env({"S3_MAX_WRITES_PER_MINUTE": "sixty"})

    assert "'sixty'" in str(raised.value)
    assert "S3_MAX_WRITES_PER_MINUTE=60" in str(raised.value)


def test_unknown_backend_lists_choices() -> None:
    with pytest.raises(ConfigError) as raised:
        from_env({"STORAGE_BACKEND": "azure"})

    for choice in ("memory", "s3", "gcs"):
        assert choice in raised.value.problem


def test_describe_memory_lists_limits_only() -> None:
    described = describe_config({"S3_MAX_WRITES_PER_MINUTE": "60", "S3_BUCKET": "unused"})

    assert described == {
        "backend": "memory",
        "reads_per_minute": None,
        "writes_per_minute": 60.0,
        "writes_per_day": None,
    }


def test_describe_redacts_endpoint_credentials() -> None:
    described = describe_config({
        "STORAGE_BACKEND": "s3",
        "S3_BUCKET": "queue-bucket",
        "S3_ENDPOINT_URL": "https://user:secret@127.0.0.1:8333/path",
    })

    assert described["endpoint_url"] == "https://***@127.0.0.1:8333/path"
    assert "secret" not in repr(described)
    assert described["bucket"] == "queue-bucket"
    assert described["region"] is None


def test_describe_gcs_has_no_region() -> None:
    described = describe_config({"STORAGE_BACKEND": "gcs", "GCS_BUCKET": "queue-bucket"})

    assert "region" not in described
    assert described["endpoint_url"] is None


def test_invalid_url_message_hides_password() -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": "b-1",
            "S3_ENDPOINT_URL": "http://user:secret@h:bad",
        })

    assert "secret" not in str(raised.value)


def test_redact_url_keeps_plain_url() -> None:
    assert redact_url("http://127.0.0.1:4443") == "http://127.0.0.1:4443"


def test_chosen_backend_logged(fake_s3: None, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="osqueue.storage.config"):
        from_env({
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": "queue-bucket",
            "S3_ENDPOINT_URL": "http://user:secret@127.0.0.1:8333",
        })

    messages = [record.getMessage() for record in caplog.records]
    assert any("backend=s3" in message and "queue-bucket" in message for message in messages)
    assert not any("secret" in message for message in messages)


@pytest.mark.parametrize("bucket", ["b", "q1", "my.queue_bucket-2"])
def test_short_bucket_names_accepted(bucket: str) -> None:
    # Length limits differ between AWS and S3-compatible servers, so the server checks them.
    settings = load_settings({"STORAGE_BACKEND": "s3", "S3_BUCKET": bucket})

    assert settings.bucket == bucket


@pytest.mark.parametrize("bucket", ["-bucket", "bucket.", "my bucket", "s3://b"])
def test_bucket_message_states_rule(bucket: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"STORAGE_BACKEND": "s3", "S3_BUCKET": bucket})

    message = str(raised.value)
    assert message.startswith("S3_BUCKET: ")
    assert "start and end with a letter or digit" in message
    assert "'.', '-' and '_'" in message


def test_validate_endpoint_url_names_option() -> None:
    from osqueue.storage.config import validate_endpoint_url

    with pytest.raises(ConfigError) as raised:
        validate_endpoint_url("--endpoint-url", "user:pw@127.0.0.1:8333", "http://127.0.0.1:8333")

    assert raised.value.name == "--endpoint-url"
    assert "pw" not in str(raised.value)
    assert validate_endpoint_url("--endpoint-url", "https://h:1", "x") == "https://h:1"
