"""The conformance suite against MemoryBackend: correct modes pass, the lying mode fails."""

from __future__ import annotations

import json
import random

import pytest
from osqueue.cli import app
from osqueue.conformance import (
    BackendFactoryError,
    ConcurrencyConfig,
    ConformanceFailure,
    Status,
    assert_conformance,
    run_conformance,
)
from osqueue.errors import CASConflictError, ConfigError, ConflictReason
from osqueue.spec.cas import TokenPolicy
from osqueue.spec.history import GUARANTEES, Outcome, StoreOperation, check_history
from osqueue.storage.base import ReadResult, StorageVersion
from osqueue.storage.memory import Fault, MemoryBackend
from typer.testing import CliRunner

MEMORY_EXAMPLES = 60
SMALL_CONCURRENCY = ConcurrencyConfig(writers=4, increments=3, burst_writers=5, rounds=3)


def _shared(backend: MemoryBackend):
    return lambda prefix: backend


@pytest.mark.parametrize("policy", list(TokenPolicy), ids=lambda policy: policy.value)
def test_memory_passes_declared_policy(policy: TokenPolicy) -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(token_policy=policy),
        token_policy=policy,
        examples=MEMORY_EXAMPLES,
        concurrency=SMALL_CONCURRENCY,
    )

    assert report.passed, report.render_text()
    assert report.policy_source == "declared"
    assert report.token_policy is policy
    for name in GUARANTEES:
        result = report.results[name]
        assert result.status is Status.PASS
        assert result.examples >= MEMORY_EXAMPLES
        assert result.rounds == 1 + 2 * SMALL_CONCURRENCY.rounds
        assert result.seconds > 0


@pytest.mark.parametrize("policy", list(TokenPolicy), ids=lambda policy: policy.value)
def test_memory_policy_detected(policy: TokenPolicy) -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(token_policy=policy), examples=20, concurrency=None
    )

    assert report.passed, report.render_text()
    assert report.policy_source == "detected"
    assert report.token_policy is policy


def test_lying_memory_violates_cas_guarantees() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(ignore_preconditions=True),
        examples=MEMORY_EXAMPLES,
        concurrency=None,
        derandomize=True,
    )

    assert not report.passed
    assert report.violated == ("atomic-cas", "no-lost-update")
    assert report.results["read-your-writes"].status is Status.PASS
    assert report.results["conflict-detection"].status is Status.PASS


def test_lying_memory_shows_minimal_sequence() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(ignore_preconditions=True),
        examples=MEMORY_EXAMPLES,
        concurrency=None,
        guarantees=["no-lost-update"],
    )

    failure = report.results["no-lost-update"].failure
    assert failure is not None
    assert failure.source == "sequential"
    assert "already replaced that version" in failure.message
    # The shrunk program: a create, a successful write, then a write with the stale token
    # (write, or write_previous, which presents the token before the latest).
    steps = failure.steps
    assert steps[0] == "state = ConformanceMachine()"
    assert steps[-1] == "state.teardown()"
    assert steps[1].startswith("tokens_0 = state.create(")
    assert steps[-2].startswith("state.write")
    assert any(".write" in step for step in steps[2:-2])
    assert len(steps) <= 10

    text = report.render_text()
    assert "Minimal failing sequence" in text
    assert steps[-2] in text


def test_lying_memory_fails_concurrent_scenarios() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(ignore_preconditions=True),
        examples=5,
        concurrency=SMALL_CONCURRENCY,
        guarantees=["conflict-detection"],
    )

    by_name = {scenario.name: scenario for scenario in report.scenarios}
    create_guarantees = {failure.guarantee for failure in by_name["create-burst"].failures}
    token_guarantees = {failure.guarantee for failure in by_name["same-token-burst"].failures}
    assert "atomic-cas" in create_guarantees
    assert "no-lost-update" in token_guarantees
    assert not by_name["counter"].passed
    # conflict-detection itself holds: the lying store never rejects anything.
    assert report.results["conflict-detection"].status is Status.PASS


def test_lying_memory_concurrent_failure_lists_operations() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(ignore_preconditions=True),
        examples=5,
        concurrency=SMALL_CONCURRENCY,
        guarantees=["no-lost-update"],
    )

    scenario = next(s for s in report.scenarios if s.name == "same-token-burst")
    failure = next(f for f in scenario.failures if f.guarantee == "no-lost-update")
    assert failure.source == "concurrent: same-token-burst"
    assert failure.steps
    assert all(step.startswith("#") for step in failure.steps)
    assert any("-> ok" in step for step in failure.steps)


class SpuriousConflictBackend(MemoryBackend):
    """Rejects every third valid write as stale, without storing it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes_seen = 0

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        self.writes_seen += 1
        if self.writes_seen % 3 == 0:
            raise CASConflictError(key, ConflictReason.STALE_VERSION, "spurious")
        return await super().write(key, data, expected)


class StaleReadBackend(MemoryBackend):
    """Serves every second read of a key from the version before its latest write."""

    def __init__(self) -> None:
        super().__init__()
        self.older: dict[str, ReadResult] = {}
        self.reads_seen = 0

    async def read(self, key: str) -> ReadResult | None:
        self.reads_seen += 1
        if self.reads_seen % 2 == 0 and key in self.older:
            return self.older[key]
        return await super().read(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion) -> StorageVersion:
        before = await super().read(key)
        version = await super().write(key, data, expected)
        if before is not None:
            self.older[key] = before
        return version


@pytest.mark.parametrize(
    ("backend_class", "guarantee"),
    [
        (SpuriousConflictBackend, "conflict-detection"),
        (StaleReadBackend, "read-your-writes"),
    ],
)
def test_faulty_backend_named_guarantee(backend_class: type, guarantee: str) -> None:
    report = run_conformance(
        lambda prefix: backend_class(),
        token_policy="unique",
        examples=MEMORY_EXAMPLES,
        concurrency=None,
        derandomize=True,
    )

    assert guarantee in report.violated, report.render_text()
    failure = report.results[guarantee].failure
    assert failure is not None
    assert failure.steps


def test_unique_tokens_declared_content_hash_fail() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(token_policy=TokenPolicy.UNIQUE),
        token_policy="content-hash",
        examples=200,
        concurrency=None,
        guarantees=["conflict-detection"],
        # The fault needs an A -> B -> A sequence and then the first token: rarer than
        # the other faults, so use more examples and a fixed generation order.
        derandomize=True,
    )

    failure = report.results["conflict-detection"].failure
    assert report.violated == ("conflict-detection",)
    assert failure is not None
    assert "--token-policy unique" in failure.message


def test_content_hash_declared_unique_fails() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(token_policy=TokenPolicy.CONTENT_HASH),
        token_policy=TokenPolicy.UNIQUE,
        examples=MEMORY_EXAMPLES,
        concurrency=None,
        guarantees=["atomic-cas"],
        derandomize=True,
    )

    failure = report.results["atomic-cas"].failure
    assert report.violated == ("atomic-cas",)
    assert failure is not None
    assert "--token-policy content-hash" in failure.message


def test_run_deletes_its_keys() -> None:
    backend = MemoryBackend()

    report = run_conformance(_shared(backend), examples=10, concurrency=SMALL_CONCURRENCY)

    assert report.passed, report.render_text()
    assert backend.keys() == []
    assert report.cleanup.startswith("Deleted the ")


def test_run_keeps_keys_when_asked() -> None:
    backend = MemoryBackend()

    report = run_conformance(_shared(backend), examples=5, concurrency=None, cleanup=False)

    stored = backend.keys()
    assert stored
    assert all(key.startswith(("seq/", "probe/")) for key in stored)
    assert "queue.json" not in stored
    assert "remain" in report.cleanup


def test_run_prefix_fresh_each_run() -> None:
    prefixes: list[str] = []

    def factory(prefix: str) -> MemoryBackend:
        prefixes.append(prefix)
        return MemoryBackend()

    run_conformance(factory, examples=2, concurrency=None, prefix="team/ci")
    run_conformance(factory, examples=2, concurrency=None, prefix="team/ci")

    assert len(prefixes) == 2
    assert prefixes[0] != prefixes[1]
    assert all(prefix.startswith("team/ci/run-") and prefix.endswith("/") for prefix in prefixes)


def test_concurrent_request_409_is_retried() -> None:
    backend = MemoryBackend(
        fault_rates={Fault.CONCURRENT_REQUEST: 0.1}, rng=random.Random(7)
    )

    report = run_conformance(
        _shared(backend), token_policy="unique", examples=5, concurrency=SMALL_CONCURRENCY
    )

    assert report.passed, report.render_text()
    assert backend.faults_injected[Fault.CONCURRENT_REQUEST] > 0
    failed = [op for s in report.scenarios for op in s.history if op.outcome is Outcome.FAILED]
    assert failed, "injected 409s should appear as FAILED operations in the histories"


def test_trio_event_loop_passes() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(),
        examples=10,
        concurrency=SMALL_CONCURRENCY,
        async_backend="trio",
    )

    assert report.passed, report.render_text()


def test_async_factory_accepted() -> None:
    async def factory(prefix: str) -> MemoryBackend:
        return MemoryBackend()

    report = run_conformance(factory, examples=5, concurrency=None)

    assert report.passed, report.render_text()


def test_factory_returning_non_backend_rejected() -> None:
    with pytest.raises(BackendFactoryError, match="not a StorageBackend"):
        run_conformance(lambda prefix: object(), examples=1)


def test_unknown_guarantee_rejected() -> None:
    with pytest.raises(ConfigError, match="no-such-guarantee"):
        run_conformance(lambda prefix: MemoryBackend(), guarantees=["no-such-guarantee"])


def test_unknown_token_policy_rejected() -> None:
    with pytest.raises(ConfigError, match="'sequential'"):
        run_conformance(lambda prefix: MemoryBackend(), token_policy="sequential")


def test_assert_conformance_raises_on_lying() -> None:
    with pytest.raises(ConformanceFailure) as caught:
        assert_conformance(
            lambda prefix: MemoryBackend(ignore_preconditions=True),
            examples=20,
            concurrency=None,
            guarantees=["atomic-cas"],
        )

    assert caught.value.report.violated == ("atomic-cas",)
    assert "atomic-cas" in str(caught.value)


def test_pytest_fixture_passes_memory(osqueue_conformance) -> None:
    report = osqueue_conformance(lambda prefix: MemoryBackend(), examples=10, concurrency=None)

    assert report.passed


def test_pytest_fixture_negative_control(osqueue_conformance) -> None:
    report = osqueue_conformance(
        lambda prefix: MemoryBackend(ignore_preconditions=True),
        expect_failure=True,
        examples=20,
        concurrency=None,
    )

    assert "atomic-cas" in report.violated


def test_report_json_ready() -> None:
    report = run_conformance(lambda prefix: MemoryBackend(), examples=3, concurrency=None)

    record = json.loads(json.dumps(report.to_dict()))
    assert record["passed"] is True
    assert set(record["results"]) == set(GUARANTEES)


runner = CliRunner()


def test_cli_memory_exits_zero() -> None:
    result = runner.invoke(app, ["conformance", "--backend", "memory", "--examples", "20"])

    assert result.exit_code == 0, result.output
    assert "all guarantees hold" in result.output
    for name in GUARANTEES:
        assert name in result.output


def test_cli_content_hash_memory_exits_zero() -> None:
    result = runner.invoke(
        app, ["conformance", "--examples", "20", "--token-policy", "content-hash"]
    )

    assert result.exit_code == 0, result.output
    assert "content-hash (declared)" in result.output


def test_cli_lying_exits_nonzero(tmp_path) -> None:
    report_path = tmp_path / "report.json"

    result = runner.invoke(
        app,
        ["conformance", "--lying", "--examples", "30", "--no-concurrency", "--derandomize",
         "--json", str(report_path)],
    )

    assert result.exit_code == 1, result.output
    assert "violated: atomic-cas, no-lost-update" in result.output
    assert "Minimal failing sequence" in result.output
    assert json.loads(report_path.read_text())["violated"] == ["atomic-cas", "no-lost-update"]


def test_cli_writes_histories(tmp_path) -> None:
    history_dir = tmp_path / "histories"

    result = runner.invoke(
        app, ["conformance", "--examples", "2", "--history-dir", str(history_dir)]
    )

    assert result.exit_code == 0, result.output
    names = sorted(path.name for path in history_dir.iterdir())
    assert names == ["counter.jsonl", "create-burst.jsonl", "same-token-burst.jsonl"]
    lines = (history_dir / "counter.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["format"] == "osqueue-history"
    assert header["policy"] == "unique"
    operations = [StoreOperation.from_record(json.loads(line)) for line in lines[1:]]
    assert operations
    assert check_history(operations, TokenPolicy.UNIQUE) == []


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--backend", "dynamo"], "unknown backend 'dynamo'"),
        (["--backend", "no_such_module_xyz:make"], "cannot import module 'no_such_module_xyz'"),
        (["--backend", "osqueue.storage.memory:no_such_factory"], "no attribute"),
        (["--backend", "s3"], "--bucket"),
        (["--backend", "gcs"], "--bucket"),
        (["--backend", "s3", "--bucket", "b", "--lying"], "--lying"),
        (["--token-policy", "sequential"], "unknown token policy 'sequential'"),
        (["--guarantee", "linearizable"], "linearizable"),
    ],
)
def test_cli_bad_options_rejected(arguments: list[str], message: str) -> None:
    result = runner.invoke(app, ["conformance", "--examples", "1", *arguments])

    assert result.exit_code == 2, result.output
    assert message in _unwrapped(result.output)


def test_cli_factory_error_reported() -> None:
    result = runner.invoke(
        app, ["conformance", "--backend", "osqueue.storage.memory:MemoryBackend"]
    )

    assert result.exit_code == 2, result.output
    assert "could not build" in result.output
    assert "MemoryBackend" in result.output


def _unwrapped(output: str) -> str:
    """Join rich's boxed, wrapped error panel back into one line of text."""

    lines = [line.strip(" │╭╮╰╯─") for line in output.splitlines()]
    return " ".join(line for line in lines if line)


def test_empty_guarantee_list_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        run_conformance(lambda prefix: MemoryBackend(ignore_preconditions=True), guarantees=[])

    assert raised.value.name == "guarantees"
    assert "is empty" in str(raised.value)


def test_report_with_nothing_run_not_passed() -> None:
    from osqueue.conformance import ConformanceReport, GuaranteeResult

    skipped = {name: GuaranteeResult(name, Status.SKIPPED) for name in GUARANTEES}
    report = ConformanceReport(
        "memory", "p/", TokenPolicy.UNIQUE, "declared", skipped, (), 0.0, "none"
    )

    assert not report.passed
    assert "no guarantee was checked" in report.render_text()


def test_single_guarantee_string_accepted() -> None:
    report = run_conformance(
        lambda prefix: MemoryBackend(), guarantees="atomic-cas", examples=3, concurrency=None
    )

    assert report.passed
    assert report.results["atomic-cas"].status is Status.PASS
    assert report.results["read-your-writes"].status is Status.SKIPPED


def test_unknown_async_backend_rejected() -> None:
    with pytest.raises(ConfigError) as raised:
        run_conformance(lambda prefix: MemoryBackend(), async_backend="curio")

    assert raised.value.name == "async_backend"
    assert "'curio'" in str(raised.value)
    assert "'asyncio' or 'trio'" in str(raised.value)


@pytest.mark.parametrize("prefix", ["", "/", "//"])
def test_empty_prefix_rejected(prefix: str) -> None:
    with pytest.raises(ConfigError) as raised:
        run_conformance(lambda prefix: MemoryBackend(), prefix=prefix)

    assert raised.value.name == "prefix"
    assert "no character other than '/'" in str(raised.value)


def test_prefix_slashes_stripped() -> None:
    seen: list[str] = []

    def make(prefix: str) -> MemoryBackend:
        seen.append(prefix)
        return MemoryBackend()

    run_conformance(make, prefix="/team/ci/", examples=2, concurrency=None)

    assert seen[0].startswith("team/ci/run-")


def test_single_burst_writer_rejected() -> None:
    with pytest.raises(ConfigError, match="at least 2"):
        ConcurrencyConfig(burst_writers=1)


def test_default_burst_writers_three() -> None:
    # docs/conformance.md says 4 or more racing writers are slow on SeaweedFS.
    assert ConcurrencyConfig().burst_writers == 3


class _StoreCountingBackend(MemoryBackend):
    """A MemoryBackend that counts the objects it stored."""

    def __init__(self) -> None:
        super().__init__()
        self.stored = 0

    async def write(self, key, data, expected):
        version = await super().write(key, data, expected)
        self.stored += 1
        return version

    async def create_if_not_exists(self, key, data):
        version = await super().create_if_not_exists(key, data)
        self.stored += 1
        return version


class _InterruptingClock:
    """A clock that raises KeyboardInterrupt, like Ctrl-C, once the run has stored an object.

    It waits for a stored object because a short Hypothesis run may, by chance, only read
    and hit conflicts, and then there is nothing to clean up.
    """

    def __init__(self, backend: _StoreCountingBackend) -> None:
        self.backend = backend

    def __call__(self) -> float:
        if self.backend.stored:
            raise KeyboardInterrupt
        return 0.0


def test_interrupt_cleans_up_and_notes_it() -> None:
    backend = _StoreCountingBackend()

    with pytest.raises(KeyboardInterrupt) as raised:
        run_conformance(
            _shared(backend), examples=10, concurrency=None, token_policy="unique",
            clock=_InterruptingClock(backend),
        )

    notes = raised.value.__notes__
    assert backend.stored > 0
    assert len(notes) == 1
    assert notes[0].startswith("Deleted the ")
    assert backend.keys() == []


class _MissingBucketBackend:
    """Rejects every request the way an S3 backend does for a missing bucket."""

    name = "missing-bucket"

    def _error(self, key: str):
        from osqueue.errors import StorageBackendError

        return StorageBackendError(
            f"request for 'p/{key}' failed: HTTP 404 NoSuchBucket; create the bucket",
            key=key, retryable=False, status=404,
        )

    async def read(self, key: str):
        raise self._error(key)

    async def write(self, key: str, data: bytes, expected: StorageVersion):
        raise self._error(key)

    async def create_if_not_exists(self, key: str, data: bytes):
        raise self._error(key)

    async def delete(self, key: str) -> None:
        raise self._error(key)


def test_missing_bucket_error_printed_once(caplog) -> None:
    with caplog.at_level("WARNING"):
        result = runner.invoke(
            app, ["conformance", "--backend", "tests.test_conformance_memory:missing_bucket"]
        )

    assert result.exit_code == 1, result.output
    output = result.output
    assert output.count("NoSuchBucket") == 1, output
    assert "Clean-up deleted 0 of 1 key(s)" in output
    assert "StorageBackendError (HTTP 404)" in output
    assert not [record for record in caplog.records if "NoSuchBucket" in record.getMessage()]


def missing_bucket(prefix: str) -> _MissingBucketBackend:
    return _MissingBucketBackend()


@pytest.mark.parametrize(
    ("arguments", "option", "message"),
    [
        (["--token-policy", "weird"], "--token-policy", "for example --token-policy unique"),
        (["--guarantee", "nope"], "--guarantee", "for example --guarantee atomic-cas"),
        (["--backend", "s3", "--bucket", "b", "--lying"], "--lying",
         "for example --backend memory --lying"),
        (["--backend", "s3", "--bucket", "b", "--endpoint-url", "127.0.0.1:8333"],
         "--endpoint-url", "for example --endpoint-url http://127.0.0.1:8333"),
        (["--backend", "gcs", "--bucket", "b", "--endpoint-url", "127.0.0.1:4443"],
         "--endpoint-url", "for example --endpoint-url http://127.0.0.1:4443"),
        (["--endpoint-url", "http://127.0.0.1:8333"], "--endpoint-url", "applies only to"),
        (["--prefix", ""], "--prefix", "no character other than '/'"),
        (["--prefix", "/"], "--prefix", "no character other than '/'"),
        (["--burst-writers", "1"], "--burst-writers", "at least 2"),
        (["--json", "/nonexistent/dir/r.json"], "--json", "does not exist"),
        (["--history-dir", "/proc/nope"], "--history-dir", "cannot create the directory"),
        (["--backend", "no_such_module_xyz:make"], "--backend", "PYTHONPATH"),
    ],
)
def test_cli_errors_name_option(arguments: list[str], option: str, message: str) -> None:
    result = runner.invoke(app, ["conformance", "--examples", "1", *arguments])

    output = _unwrapped(result.output)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for {option}" in output
    assert message in output
    assert "token_policy" not in output
    assert "guarantees:" not in output
    assert "--lying=" not in output
    # Nothing ran: the options were rejected before the report.
    assert "Guarantees" not in output


def test_cli_json_directory_rejected(tmp_path) -> None:
    result = runner.invoke(app, ["conformance", "--examples", "1", "--json", str(tmp_path)])

    assert result.exit_code == 2, result.output
    assert "is a directory" in _unwrapped(result.output)


def test_python_dash_m_runs_cli() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "osqueue", "conformance", "--help"],
        check=False, capture_output=True, text=True, timeout=60,
    )

    assert result.returncode == 0, result.stderr
    assert "--token-policy" in result.stdout


def test_cli_sigint_reports_cleanup() -> None:
    import signal
    import subprocess
    import sys
    import time

    # A shell may start background jobs with SIGINT ignored, and Python keeps it so; the
    # child therefore installs Python's own handler before it runs `python -m osqueue`.
    child = (
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv = ['osqueue', 'conformance', '--examples', '100000', '--no-concurrency', "
        "'--token-policy', 'unique']; runpy.run_module('osqueue', run_name='__main__')"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        # Let the run get past start-up and into the sequential checks.
        time.sleep(4)
        # Python drops a KeyboardInterrupt raised inside a garbage-collector callback
        # (Hypothesis installs one), so a single SIGINT is sometimes lost, as a single
        # Ctrl-C is. Send it again until the process stops.
        for _ in range(10):
            process.send_signal(signal.SIGINT)
            try:
                stdout, stderr = process.communicate(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        else:
            raise AssertionError("the run did not stop after 10 SIGINTs")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    assert process.returncode == 130, stdout + stderr
    # A lost interrupt (see above) prints "Exception ignored in: ..." with its traceback
    # first; the command's own output is the last two lines.
    last_lines = stderr.splitlines()[-2:]
    assert last_lines[0] == "interrupted", stderr
    # Under load the interrupt may come before the first write.
    assert last_lines[1].startswith(("Deleted the ", "The run created no objects")), stderr
