"""Latency probes for ``bench_backends.py``, run by pytest so they can use the server fixtures.

Not part of the test suite: ``bench_backends.py`` runs this module with the fixture plugins
of ``tests/support`` and reads the JSON it writes to ``$OSQUEUE_BENCH_OUT``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import uuid
from pathlib import Path

import anyio
import pytest
from osqueue.storage import MemoryBackend

ROUNDS = int(os.environ.get("OSQUEUE_BENCH_ROUNDS", "200"))
PAYLOAD = b"x" * 4096


async def _measure(backend) -> dict[str, float]:
    """Time ``ROUNDS`` sequential reads and CAS writes of one 4 KiB object."""

    key = f"bench-{uuid.uuid4().hex}.json"
    version = await backend.create_if_not_exists(key, PAYLOAD)
    reads: list[float] = []
    writes: list[float] = []

    for round_number in range(ROUNDS):
        started = time.perf_counter()
        result = await backend.read(key)
        reads.append(time.perf_counter() - started)
        assert result is not None and result.version == version

        body = PAYLOAD[:-8] + round_number.to_bytes(8, "big")
        started = time.perf_counter()
        version = await backend.write(key, body, version)
        writes.append(time.perf_counter() - started)

    delete = getattr(backend, "delete", None)
    if delete is not None:
        await delete(key)
    return {
        "read_median_ms": statistics.median(reads) * 1000,
        "read_p99_ms": statistics.quantiles(reads, n=100)[98] * 1000,
        "write_median_ms": statistics.median(writes) * 1000,
        "write_p99_ms": statistics.quantiles(writes, n=100)[98] * 1000,
    }


def _record(name: str, figures: dict[str, float]) -> None:
    path = Path(os.environ["OSQUEUE_BENCH_OUT"])
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = figures
    path.write_text(json.dumps(results, indent=2, sort_keys=True))


def test_memory_latency() -> None:
    _record("memory", anyio.run(_measure, MemoryBackend()))


@pytest.mark.parametrize("fixture_name", ["seaweedfs_server", "moto_server", "fake_gcs_server"])
def test_server_latency(fixture_name: str, request: pytest.FixtureRequest) -> None:
    server = request.getfixturevalue(fixture_name)
    backend = server.make_backend(f"bench-{uuid.uuid4().hex}/")
    _record(server.name if hasattr(server, "name") else fixture_name, anyio.run(_measure, backend))
