"""Broker settings from environment variables and flags."""

from __future__ import annotations

import socket

import pytest
from osqueue.broker.config import BrokerSettings, load_settings
from osqueue.broker.pacing import PacedStorage
from osqueue.broker.service import Broker
from osqueue.errors import ConfigError
from osqueue.storage.memory import MemoryBackend
from typer.testing import CliRunner

from tests.broker_support import TOKEN


def test_defaults():
    settings = load_settings({})

    assert settings.host == "127.0.0.1"
    assert settings.port == 8080
    assert settings.advertised_url == "http://127.0.0.1:8080"
    assert settings.queue_key == "queue.json"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.token is None
    assert settings.engine_config().lease_seconds == 15.0
    assert settings.engine_config().renew_interval_seconds == 5.0
    assert settings.engine_config().heartbeat_timeout == 60.0
    assert settings.engine_config().max_batch_size == 1000
    assert settings.engine_config().max_state_bytes == 64 * 1024 * 1024


def test_environment_and_flag_override():
    env = {"BROKER_HOST": "0.0.0.0", "BROKER_PORT": "9000", "QUEUE_KEY": "q/prod.json",
           "BROKER_HEARTBEAT_INTERVAL_MS": "1000", "BROKER_HEARTBEAT_TIMEOUT_MS": "4000",
           "GROUP_COMMIT_INTERVAL_MS": "20", "JOB_HEARTBEAT_TIMEOUT_MS": "30000",
           "MAX_BODY_BYTES": "4096", "OSQUEUE_TOKEN": TOKEN, "MAX_BATCH_SIZE": "50",
           "MAX_STATE_BYTES": "1048576",
           "BROKER_ADVERTISED_URL": "http://broker-1.internal:9000/"}

    settings = load_settings(env, port=9001, advertised_url=None)

    assert settings.host == "0.0.0.0"
    assert settings.port == 9001
    assert settings.advertised_url == "http://broker-1.internal:9000"
    assert settings.queue_key == "q/prod.json"
    assert settings.heartbeat_interval == 1.0
    assert settings.heartbeat_timeout == 4.0
    assert settings.group_commit_interval == 0.02
    assert settings.job_timeout == 30.0
    assert settings.max_body_bytes == 4096
    assert settings.engine_config().max_batch_size == 50
    assert settings.engine_config().max_state_bytes == 1048576
    assert settings.token == TOKEN


def test_advertised_url_follows_host_and_port():
    assert load_settings({}, host="::1", port=81).advertised_url == "http://[::1]:81"


@pytest.mark.parametrize("env, variable", [
    ({"BROKER_PORT": "http"}, "BROKER_PORT"),
    ({"BROKER_PORT": "70000"}, "BROKER_PORT"),
    ({"BROKER_HOST": "bad host!"}, "BROKER_HOST"),
    ({"BROKER_ADVERTISED_URL": "broker:8080"}, "BROKER_ADVERTISED_URL"),
    ({"BROKER_ADVERTISED_URL": "http://user:pw@broker:8080"}, "BROKER_ADVERTISED_URL"),
    ({"BROKER_HEARTBEAT_INTERVAL_MS": "0"}, "BROKER_HEARTBEAT_INTERVAL_MS"),
    ({"BROKER_HEARTBEAT_INTERVAL_MS": "12000"}, "BROKER_HEARTBEAT_INTERVAL_MS"),
    ({"BROKER_HEARTBEAT_TIMEOUT_MS": "1.5"}, "BROKER_HEARTBEAT_TIMEOUT_MS"),
    ({"GROUP_COMMIT_INTERVAL_MS": "-1"}, "GROUP_COMMIT_INTERVAL_MS"),
    ({"GROUP_COMMIT_INTERVAL_MS": "6000"}, "GROUP_COMMIT_INTERVAL_MS"),
    ({"JOB_HEARTBEAT_TIMEOUT_MS": "soon"}, "JOB_HEARTBEAT_TIMEOUT_MS"),
    ({"MAX_BODY_BYTES": "10"}, "MAX_BODY_BYTES"),
    ({"QUEUE_KEY": "k" * 2000}, "QUEUE_KEY"),
    ({"OSQUEUE_TOKEN": "short"}, "OSQUEUE_TOKEN"),
    ({"OSQUEUE_TOKEN": "has a space in the middle"}, "OSQUEUE_TOKEN"),
])
def test_invalid_values_name_the_variable(env, variable):
    with pytest.raises(ConfigError) as raised:
        load_settings(env)

    assert raised.value.name == variable
    assert f"for example {variable}=" in str(raised.value)


def test_token_value_never_in_error_or_repr():
    secret = "has a space but is secret"
    with pytest.raises(ConfigError) as raised:
        load_settings({"OSQUEUE_TOKEN": secret})

    assert secret not in str(raised.value)
    assert TOKEN not in repr(BrokerSettings(token=TOKEN))


def test_group_commit_interval_wraps_storage():
    storage = MemoryBackend()
    paced = Broker(storage, BrokerSettings(group_commit_interval=0.01))
    plain = Broker(storage, BrokerSettings())

    assert isinstance(paced.storage, PacedStorage)
    assert paced.storage.name == "memory"
    assert plain.storage is storage


def test_cli_reports_config_error(monkeypatch):
    from osqueue.cli import app

    monkeypatch.setenv("BROKER_PORT", "not-a-port")
    result = CliRunner().invoke(app, ["broker"])

    assert result.exit_code == 2
    assert "BROKER_PORT" in result.output
    assert "for example BROKER_PORT=8080" in result.output


def test_cli_help_lists_flags():
    from osqueue.cli import app

    result = CliRunner().invoke(app, ["broker", "--help"])

    assert result.exit_code == 0
    for flag in ("--host", "--port", "--advertised-url", "--heartbeat-timeout-ms"):
        assert flag in result.output


def test_cli_reports_port_in_use(monkeypatch):
    from osqueue.cli import app

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        monkeypatch.setenv("STORAGE_BACKEND", "memory")
        result = CliRunner().invoke(app, ["broker", "--port", str(port)])

    assert result.exit_code == 2
    assert "--port:" in result.output
    assert "BROKER_PORT" not in result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output


def test_cli_names_flag_not_variable(monkeypatch):
    from osqueue.cli import app

    monkeypatch.setenv("STORAGE_BACKEND", "memory")
    result = CliRunner().invoke(app, ["broker", "--heartbeat-timeout-ms", "-1"])

    assert result.exit_code == 2
    assert "--heartbeat-timeout-ms: -1 is outside" in result.output
    assert "BROKER_HEARTBEAT_TIMEOUT_MS" not in result.output


class _UnresolvableSocket(socket.socket):
    """A socket whose bind fails as for a host name that does not resolve, without sending
    a DNS query."""

    def bind(self, address):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def test_cli_unresolvable_host_named(monkeypatch):
    import types

    from osqueue.broker import server
    from osqueue.cli import app

    fake = types.SimpleNamespace(**vars(socket))
    fake.socket = _UnresolvableSocket
    monkeypatch.setattr(server, "socket", fake)
    monkeypatch.setenv("STORAGE_BACKEND", "memory")
    monkeypatch.setenv("BROKER_HOST", "999.1.1.1")
    from_env = CliRunner().invoke(app, ["broker"])
    monkeypatch.delenv("BROKER_HOST")
    from_flag = CliRunner().invoke(app, ["broker", "--host", "999.1.1.1"])

    assert from_env.exit_code == 2
    assert "BROKER_HOST: cannot resolve '999.1.1.1'" in from_env.output
    assert "BROKER_PORT" not in from_env.output
    assert from_flag.exit_code == 2
    assert "--host: cannot resolve '999.1.1.1'" in from_flag.output


def test_cli_lists_limit_flags():
    from osqueue.cli import app

    result = CliRunner().invoke(app, ["broker", "--help"])

    assert "--max-batch-size" in result.output
    assert "--max-state-bytes" in result.output
