"""The error classes: stable tags, wire form and messages."""

from __future__ import annotations

import json
import pickle

import pytest
from osqueue import errors
from osqueue.errors import (
    CASConflictError,
    ConfigError,
    ConflictReason,
    IndeterminateWriteError,
    InvalidDataError,
    InvalidKeyError,
    InvalidVersionError,
    OsqueueError,
    StorageBackendError,
    error_to_dict,
    is_osqueue_error,
)

# Tags go over the wire and clients match on them, so a change here breaks compatibility.
EXPECTED_TAGS = {
    OsqueueError: "OsqueueError",
    CASConflictError: "CASConflictError",
    StorageBackendError: "StorageBackendError",
    IndeterminateWriteError: "IndeterminateWriteError",
    ConfigError: "ConfigError",
    InvalidKeyError: "InvalidKeyError",
    InvalidDataError: "InvalidDataError",
    InvalidVersionError: "InvalidVersionError",
}


def sample_errors() -> list[OsqueueError]:
    return [
        CASConflictError("queue.json", ConflictReason.STALE_VERSION, "expected 3"),
        StorageBackendError("503 SlowDown", key="queue.json", retryable=True, status=503),
        IndeterminateWriteError("queue.json", "read timed out"),
        ConfigError("S3_BUCKET", "missing", "my-queue-bucket"),
        InvalidKeyError("object key is empty"),
        InvalidDataError("object data must be bytes"),
        InvalidVersionError("token from another backend"),
    ]


@pytest.mark.parametrize("cls", list(EXPECTED_TAGS), ids=lambda cls: cls.__name__)
def test_tag_is_stable(cls: type[OsqueueError]) -> None:
    assert cls.tag == EXPECTED_TAGS[cls]


def test_every_error_class_has_own_tag() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, OsqueueError)
    ]

    assert set(classes) == set(EXPECTED_TAGS)
    assert len({cls.tag for cls in classes}) == len(classes)
    for cls in classes:
        assert "tag" in vars(cls), f"{cls.__name__} inherits its tag"


@pytest.mark.parametrize("error", sample_errors(), ids=lambda error: type(error).__name__)
def test_is_osqueue_error_accepts_own(error: OsqueueError) -> None:
    assert is_osqueue_error(error)


@pytest.mark.parametrize(
    "value",
    [ValueError("x"), TypeError("x"), KeyError("x"), None, "CASConflictError", CASConflictError],
    ids=["ValueError", "TypeError", "KeyError", "None", "tag-string", "class"],
)
def test_is_osqueue_error_rejects_others(value: object) -> None:
    assert not is_osqueue_error(value)


@pytest.mark.parametrize("error", sample_errors(), ids=lambda error: type(error).__name__)
def test_error_to_dict_uses_tag(error: OsqueueError) -> None:
    record = error_to_dict(error)

    assert record == {"_tag": error.tag, "message": str(error)}
    assert json.loads(json.dumps(record)) == record


def test_error_to_dict_for_foreign_error() -> None:
    assert error_to_dict(KeyError("queue")) == {"_tag": "KeyError", "message": "'queue'"}


def test_config_error_message_names_variable_and_example() -> None:
    error = ConfigError("S3_MAX_WRITES_PER_MINUTE", "'abc' is not a number", "60")

    assert str(error) == (
        "S3_MAX_WRITES_PER_MINUTE: 'abc' is not a number; "
        "for example S3_MAX_WRITES_PER_MINUTE=60"
    )
    assert error.name == "S3_MAX_WRITES_PER_MINUTE"
    assert error.problem == "'abc' is not a number"
    assert error.example == "60"
    assert isinstance(error, ValueError)


def test_cas_conflict_message_and_fields() -> None:
    error = CASConflictError("queue.json", ConflictReason.STALE_VERSION, "expected 3")

    assert error.key == "queue.json"
    assert error.reason is ConflictReason.STALE_VERSION
    assert error.detail == "expected 3"
    assert str(error) == (
        "conditional write to 'queue.json' was not applied: stale_version (expected 3)"
    )


def test_cas_conflict_without_detail() -> None:
    error = CASConflictError("queue.json", ConflictReason.EXISTS)

    assert str(error) == "conditional write to 'queue.json' was not applied: exists"


@pytest.mark.parametrize("reason", list(ConflictReason), ids=lambda reason: reason.value)
def test_only_409_retries_same_request(reason: ConflictReason) -> None:
    error = CASConflictError("k", reason)

    assert error.retry_same_request is (reason is ConflictReason.CONCURRENT_REQUEST)


def test_conflict_reason_values_are_stable() -> None:
    assert {reason.value for reason in ConflictReason} == {
        "stale_version",
        "missing",
        "exists",
        "concurrent_request",
    }


def test_storage_backend_error_fields() -> None:
    error = StorageBackendError("503 SlowDown", key="queue.json", retryable=True, status=503)

    assert error.key == "queue.json"
    assert error.retryable
    assert error.status == 503
    assert str(error) == "503 SlowDown"

    plain = StorageBackendError("access denied")
    assert plain.key is None
    assert not plain.retryable
    assert plain.status is None


def test_indeterminate_write_message() -> None:
    error = IndeterminateWriteError("queue.json", "read timed out")

    assert error.key == "queue.json"
    assert error.detail == "read timed out"
    assert "queue.json" in str(error)
    assert "unknown" in str(error)


def test_input_errors_are_builtin_kinds() -> None:
    assert issubclass(InvalidKeyError, ValueError)
    assert issubclass(InvalidDataError, TypeError)
    assert issubclass(InvalidVersionError, TypeError)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "error",
    [
        CASConflictError("queue.json", ConflictReason.EXISTS),
        IndeterminateWriteError("queue.json", "read timed out"),
        ConfigError("S3_BUCKET", "missing", "my-queue-bucket"),
        StorageBackendError("503 SlowDown", key="queue.json", retryable=True, status=503),
    ],
    ids=lambda error: type(error).__name__,
)
def test_errors_pickle_round_trip(error: OsqueueError) -> None:
    # Errors cross process boundaries (parallel seed sweeps), where they are pickled.
    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is type(error)
    assert str(copy) == str(error)
    assert copy.__dict__ == error.__dict__
