"""The live status page rendered by headless Chromium against a real broker process.

`make browser` installs Debian's chromium. The test fails (never skips) when it is missing,
so that CI cannot pass without having looked at the page.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.broker_support import free_port

pytestmark = pytest.mark.browser

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    # Virtual time runs the page's one-second polling timers without waiting for them;
    # it pauses while fetches are pending, so every poll gets a real response.
    "--virtual-time-budget=3000",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed; run `make browser` "
                    "(apt-get install -y chromium) before the tests")
    return path


@pytest.fixture
def broker_url(tmp_path) -> Iterator[str]:
    port = free_port()
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("OSQUEUE_", "BROKER_", "STORAGE_", "S3_", "GCS_"))}
    env["STORAGE_BACKEND"] = "memory"
    log = open(tmp_path / "broker.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-c", "from osqueue.cli import main; main()", "--log-level", "INFO",
         "broker", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert process.poll() is None, (tmp_path / "broker.log").read_text()
            try:
                if httpx.get(f"{url}/healthz", timeout=1).json()["leader"]:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "broker did not start within 20 s"
            time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def render(url: str, profile) -> str:
    result = subprocess.run(
        [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
         f"{url}/"],
        capture_output=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    return result.stdout.decode()


def text_of(dom: str, element_id: str) -> str:
    match = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert match is not None, f"element {element_id!r} not in the rendered page"
    return html.unescape(match.group(1))


def test_status_page_shows_live_numbers(broker_url, tmp_path):
    before = render(broker_url, tmp_path / "profile-1")

    httpx.post(f"{broker_url}/v1/jobs", json={"jobs": [
        {"payload": {"n": n}, "type": "email"} for n in range(4)]}).raise_for_status()
    httpx.post(f"{broker_url}/v1/jobs", json={"payload": "<b>bold</b>", "type": "x",
                                              "maxAttempts": 1}).raise_for_status()
    claimed = httpx.post(f"{broker_url}/v1/jobs/claim", json={"workerId": "page-worker"})
    job = claimed.json()["job"]
    httpx.post(f"{broker_url}/v1/jobs/{job['id']}/complete",
               json={"claimToken": job["claimToken"]}).raise_for_status()
    claimed = httpx.post(f"{broker_url}/v1/jobs/claim", json={"workerId": "page-worker"})
    after = render(broker_url, tmp_path / "profile-2")

    assert text_of(before, "count-unclaimed") == "0"
    assert text_of(before, "broker-role") == "leader"
    assert text_of(before, "updated") != "never"

    assert text_of(after, "error") == ""
    assert text_of(after, "count-unclaimed") == "3"
    assert text_of(after, "count-in-progress") == "1"
    assert text_of(after, "count-dead") == "0"
    assert text_of(after, "counter-enqueued") == "5"
    assert text_of(after, "counter-completed") == "1"
    assert text_of(after, "broker-address") == broker_url
    assert text_of(after, "broker-epoch") == "1"
    assert int(text_of(after, "engine-commits")) >= 4
    assert "page-worker" in after
    # The payload is shown as text, never parsed as markup.
    assert "<b>bold</b>" not in after
    assert "&lt;b&gt;bold&lt;/b&gt;" in after
