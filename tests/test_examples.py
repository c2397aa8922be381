"""The FastAPI and aiohttp examples, driven by their frameworks' test clients."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import redis.asyncio
from _consumers import expire_ghost_lock
from _wait import wait_for

from rsc_async import MUTEX_KEY_SEP, RedisStreamClient, add_stream
from rsc_async.testing import RedisServer

EXAMPLES = Path(__file__).parent.parent / "examples"


def _example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module of its own name."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def _aiohttp_app(
    redis_url: str, service: str
) -> AsyncIterator[tuple[Any, RedisStreamClient]]:
    """The aiohttp example served to a test client; that client and the app's."""
    pytest.importorskip("aiohttp")
    from aiohttp.test_utils import TestClient, TestServer

    module = _example("aiohttp_app")
    app = module.create_app(redis_url, service=service, consumer_id="web-1")
    async with TestClient(TestServer(app)) as http:
        yield http, app[module.CLIENT]


async def _lbs_length(connection: redis.asyncio.Redis, service: str) -> int:
    return int(await connection.xlen(f"{service}-input"))


async def test_fastapi_app_lists_a_held_stream_and_finishes_it(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """GET /streams shows the assigned stream; POST .../done finishes it."""
    pytest.importorskip("fastapi")
    httpx = pytest.importorskip("httpx")
    lifespan = pytest.importorskip("asgi_lifespan")
    app = _example("fastapi_app").create_app(
        redis_url, service=service_name, consumer_id="web-1"
    )
    listed: list[Any] = []

    async with (
        lifespan.LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://test"
        ) as http,
    ):
        entry_id = await add_stream(redis_client, service_name, "session-1")

        async def listed_once() -> bool:
            listed[:] = (await http.get("/streams")).json()
            return bool(listed)

        await wait_for(listed_once)
        finished = await http.post("/streams/session-1/done")
        after = (await http.get("/streams")).json()
        again = await http.post("/streams/session-1/done")

    assert [{"data_stream_name": "session-1", "id_in_lbs": entry_id}] == listed
    assert (200, {"finished": "session-1"}) == (finished.status_code, finished.json())
    assert ([], 404) == (after, again.status_code)
    assert 0 == await _lbs_length(redis_client, service_name)


async def test_fastapi_app_hands_its_streams_back_at_shutdown(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """Leaving the lifespan releases the lock but leaves the entry for others."""
    pytest.importorskip("fastapi")
    lifespan = pytest.importorskip("asgi_lifespan")
    app = _example("fastapi_app").create_app(
        redis_url, service=service_name, consumer_id="web-1"
    )

    async with lifespan.LifespanManager(app):
        entry_id = await add_stream(redis_client, service_name, "session-1")
        await wait_for(lambda: len(app.state.client.held_streams) == 1)

    lock = f"session-1{MUTEX_KEY_SEP}{entry_id}"
    await wait_for(lambda: _gone(redis_client, lock))
    assert 1 == await _lbs_length(redis_client, service_name)


async def _gone(connection: redis.asyncio.Redis, key: str) -> bool:
    return 0 == await connection.exists(key)


async def test_aiohttp_app_lists_a_held_stream_and_finishes_it(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """GET /streams shows the assigned stream; POST .../done finishes it."""
    listed: list[Any] = []

    async with _aiohttp_app(redis_url, service_name) as (http, _):
        entry_id = await add_stream(redis_client, service_name, "session-1")

        async def listed_once() -> bool:
            async with http.get("/streams") as response:
                listed[:] = await response.json()
            return bool(listed)

        await wait_for(listed_once)
        async with http.post("/streams/session-1/done") as finished:
            done = (finished.status, await finished.json())
        async with http.get("/streams") as response:
            after = await response.json()
        async with http.post("/streams/session-1/done") as again:
            missing = again.status

    assert [{"data_stream_name": "session-1", "id_in_lbs": entry_id}] == listed
    assert (200, {"finished": "session-1"}) == done
    assert ([], 404) == (after, missing)
    assert 0 == await _lbs_length(redis_client, service_name)


async def test_aiohttp_app_hands_its_streams_back_at_shutdown(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """Cleaning up the app releases the lock but leaves the entry for others."""
    async with _aiohttp_app(redis_url, service_name) as (_, client):
        entry_id = await add_stream(redis_client, service_name, "session-1")
        await wait_for(lambda: len(client.held_streams) == 1)

    lock = f"session-1{MUTEX_KEY_SEP}{entry_id}"
    await wait_for(lambda: _gone(redis_client, lock))
    assert 1 == await _lbs_length(redis_client, service_name)


async def test_aiohttp_app_takes_over_the_stream_of_a_dead_consumer(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """An expired lock of another consumer is claimed and then listed."""
    async with _aiohttp_app(redis_url, service_name) as (http, _):
        orphan = await expire_ghost_lock(redis_client, service_name, "session-9")

        async def listed() -> bool:
            async with http.get("/streams") as response:
                return orphan.model_dump() in await response.json()

        await wait_for(listed)
        holder = await redis_client.get(orphan.mutex_key)

    assert b"redis-consumer-web-1" == holder


def test_basic_example_shows_a_takeover_and_loses_nothing(
    dedicated_redis: RedisServer,
) -> None:
    """``python examples/basic.py``: bob takes over every session alice held."""
    environment = {**os.environ, "REDIS_URL": dedicated_redis.url}

    ran = subprocess.run(
        [sys.executable, str(EXAMPLES / "basic.py")],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
        check=False,
    )

    assert 0 == ran.returncode, ran.stderr
    assert "alice crashes (SIGKILL)" in ran.stdout
    # Each session alice took before the crash, bob took over after it.
    taken_by_alice = ran.stdout.count("alice took")
    assert taken_by_alice == ran.stdout.count("bob   took over"), ran.stdout
    assert ran.stdout.rstrip().endswith("none was lost")
