"""The conformance suite against S3 and GCS servers started on 127.0.0.1 by the fixtures.

SeaweedFS, moto and fake-gcs-server enforce preconditions and must pass. gcp-storage-emulator
ignores ``ifGenerationMatch`` and must fail: it is the negative control. Runs use few
examples and small bursts, because SeaweedFS serialises racing conditional PUTs to one key
slowly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from osqueue.conformance import ConcurrencyConfig, Status, run_conformance
from osqueue.spec.cas import TokenPolicy

SERVER_EXAMPLES = 20
SERVER_STEPS = 15
SERVER_CONCURRENCY = ConcurrencyConfig(writers=3, increments=2, burst_writers=3, rounds=2)
SHRINK_SECONDS = 8.0
OSQUEUE = Path(sys.executable).with_name("osqueue")
CLI_TIMEOUT_SECONDS = 300


def _run(server, **options):
    options.setdefault("examples", SERVER_EXAMPLES)
    options.setdefault("steps", SERVER_STEPS)
    options.setdefault("concurrency", SERVER_CONCURRENCY)
    options.setdefault("shrink_seconds", SHRINK_SECONDS)
    return run_conformance(server.make_backend, **options)


@pytest.mark.s3
@pytest.mark.slow
def test_seaweedfs_passes(seaweedfs_server) -> None:
    report = _run(seaweedfs_server)

    assert report.passed, report.render_text()
    assert report.token_policy is TokenPolicy.CONTENT_HASH
    assert report.policy_source == "detected"


@pytest.mark.s3
@pytest.mark.slow
def test_moto_passes(moto_server) -> None:
    report = _run(moto_server)

    assert report.passed, report.render_text()
    assert report.token_policy is TokenPolicy.CONTENT_HASH


@pytest.mark.s3
def test_seaweedfs_run_leaves_no_objects(seaweedfs_server) -> None:
    report = _run(seaweedfs_server, examples=3, concurrency=None)

    client = seaweedfs_server.client()
    listing = client.list_objects_v2(Bucket=seaweedfs_server.bucket, Prefix=report.prefix)
    assert listing.get("KeyCount", 0) == 0, listing.get("Contents")
    assert report.cleanup.startswith("Deleted the ")


@pytest.mark.gcs
@pytest.mark.slow
def test_fake_gcs_passes(fake_gcs_server) -> None:
    report = _run(fake_gcs_server)

    assert report.passed, report.render_text()
    assert report.token_policy is TokenPolicy.UNIQUE


@pytest.mark.gcs
@pytest.mark.slow
def test_gcp_emulator_fails(gcp_emulator_server) -> None:
    # A fixed generation order with 25 examples of up to 20 steps finds both violations
    # on every run, so the negative control cannot pass by chance.
    report = _run(
        gcp_emulator_server, token_policy="unique", examples=25, steps=20, derandomize=True
    )

    assert not report.passed
    assert "atomic-cas" in report.violated, report.render_text()
    assert "no-lost-update" in report.violated, report.render_text()
    failure = report.results["no-lost-update"].failure
    assert failure is not None
    assert failure.steps, "the report must show the minimal failing sequence"


@pytest.mark.s3
@pytest.mark.slow
def test_cli_seaweedfs_exits_zero(seaweedfs_server, tmp_path) -> None:
    report_path = tmp_path / "report.json"
    environment = dict(os.environ)
    # Dummy credentials that only reach the local server, passed to the child only.
    environment["AWS_ACCESS_KEY_ID"] = seaweedfs_server.access_key_id
    environment["AWS_SECRET_ACCESS_KEY"] = seaweedfs_server.secret_access_key

    result = subprocess.run(
        [
            str(OSQUEUE), "conformance", "--backend", "s3",
            "--endpoint-url", seaweedfs_server.endpoint_url,
            "--bucket", seaweedfs_server.bucket,
            "--region", seaweedfs_server.region,
            "--examples", "10", "--steps", "12",
            "--writers", "3", "--increments", "2", "--burst-writers", "3", "--rounds", "2",
            "--json", str(report_path),
        ],
        env=environment,
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "all guarantees hold" in result.stdout
    record = json.loads(report_path.read_text())
    assert record["token_policy"] == "content-hash"
    assert all(item["status"] == "pass" for item in record["results"].values())


@pytest.mark.gcs
@pytest.mark.slow
def test_cli_gcp_emulator_exits_nonzero(gcp_emulator_server, tmp_path) -> None:
    report_path = tmp_path / "report.json"

    result = subprocess.run(
        [
            str(OSQUEUE), "conformance", "--backend", "gcs",
            "--endpoint-url", gcp_emulator_server.endpoint_url,
            "--bucket", gcp_emulator_server.bucket,
            "--token-policy", "unique",
            "--examples", "25", "--steps", "20", "--derandomize", "--no-concurrency",
            "--shrink-seconds", "5", "--guarantee", "atomic-cas", "--guarantee", "no-lost-update",
            "--json", str(report_path),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    assert "atomic-cas" in result.stdout
    record = json.loads(report_path.read_text())
    assert "atomic-cas" in record["violated"]
    assert "no-lost-update" in record["violated"]
    assert record["results"]["atomic-cas"]["status"] == Status.FAIL.value
    assert record["results"]["read-your-writes"]["status"] == Status.SKIPPED.value


@pytest.mark.s3
def test_cli_missing_bucket_reported_once(seaweedfs_server) -> None:
    environment = dict(os.environ)
    environment["AWS_ACCESS_KEY_ID"] = seaweedfs_server.access_key_id
    environment["AWS_SECRET_ACCESS_KEY"] = seaweedfs_server.secret_access_key

    result = subprocess.run(
        [
            str(OSQUEUE), "conformance", "--backend", "s3",
            "--endpoint-url", seaweedfs_server.endpoint_url,
            "--bucket", "osqueue-no-such-bucket",
            "--region", seaweedfs_server.region,
            "--examples", "2",
        ],
        env=environment,
        check=False,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_SECONDS,
    )

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert output.count("NoSuchBucket") == 1, output
    # The error names the full object name under the run's prefix.
    assert "'osqueue-conformance/run-" in output
    assert "/probe/policy'" in output
    clean_up_lines = [line for line in output.splitlines() if line.startswith("Clean-up ")]
    assert len(clean_up_lines) == 1, output
    assert "Traceback" not in output
