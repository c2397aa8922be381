"""Shutdown: bounded while Redis stalls, complete on cancellation, and on outage."""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
import redis.asyncio
from _wait import next_notification, wait_for

from rsc_async import (
    RedisStreamClient,
    RetryConfig,
    RSCError,
    StreamAdded,
    StreamTerminated,
    add_stream,
)
from rsc_async.testing import RedisServer

SERVICE = "svc"


def _client(
    redis_client: redis.asyncio.Redis,
    service: str = SERVICE,
    retry: RetryConfig | None = None,
) -> RedisStreamClient:
    return RedisStreamClient(
        redis_client,
        service,
        consumer_id="a",
        hb_interval=0.5,
        lbs_idle_time=1.0,
        retry=retry,
    )


async def _blocked_commands(admin: redis.asyncio.Redis) -> set[str]:
    """The commands clients of the server are blocked in now."""
    clients = await admin.client_list()
    return {entry["cmd"] for entry in clients if "b" in entry["flags"]}


async def test_done_returns_within_seconds_while_redis_does_not_answer(
    dedicated_redis: RedisServer,
) -> None:
    """done() is bounded while the reader and the heartbeat wait on a stalled Redis."""
    # No socket timeout: a stalled command waits for as long as Redis stalls.
    connection = redis.asyncio.Redis.from_url(dedicated_redis.url, socket_timeout=None)
    admin = redis.asyncio.Redis.from_url(dedicated_redis.url, decode_responses=True)
    client = _client(connection)
    try:
        notifications = await client.init()
        for i in range(3):
            await add_stream(admin, SERVICE, f"s-{i}")
        for _ in range(3):
            assert isinstance(await next_notification(notifications), StreamAdded)

        # Writes and scripts wait; CLIENT LIST still answers.
        await admin.client_pause(60_000, all=False)

        async def reader_and_heartbeat_blocked() -> bool:
            return {"xreadgroup", "evalsha"} <= await _blocked_commands(admin)

        await wait_for(reader_and_heartbeat_blocked)
        started = time.monotonic()
        await client.done()
        elapsed = time.monotonic() - started

        assert elapsed < 8.0
    finally:
        await admin.client_unpause()
        await client.done()
        await admin.aclose()
        await connection.aclose()


@pytest.mark.parametrize("when", ["while reading", "during init"])
async def test_leaving_async_with_by_cancellation_stops_every_task(
    redis_client: redis.asyncio.Redis, service_name: str, when: str
) -> None:
    """Cancelled inside `async with`, the client finishes its streams and stops."""
    before = asyncio.all_tasks()
    with anyio.fail_after(15), anyio.CancelScope() as scope:
        async with _client(redis_client, service_name) as client:
            if when == "during init":
                scope.cancel()
            notifications = await client.init()
            await add_stream(redis_client, service_name, "s-1")
            assert isinstance(await next_notification(notifications), StreamAdded)
            scope.cancel()
            await anext(notifications)

    assert scope.cancelled_caught
    assert before == asyncio.all_tasks()
    assert [] == list(client.held_streams)
    assert [] == await redis_client.xrange(f"{service_name}-input")


async def test_redis_gone_for_good_terminates_the_notifications(
    dedicated_redis: RedisServer,
) -> None:
    """When Redis stays away past the retries, StreamTerminated ends the iteration."""
    connection = redis.asyncio.Redis.from_url(dedicated_redis.url)
    retry = RetryConfig(max_retries=2, initial_delay=0.05, max_delay=0.1)
    client = _client(connection, retry=retry)
    try:
        notifications = await client.init()
        dedicated_redis.stop()

        terminated = await next_notification(notifications, timeout=30)
        assert isinstance(terminated, StreamTerminated)
        reason = terminated.additional_info["info"]
        assert isinstance(reason, str)
        assert reason
        with anyio.fail_after(5), pytest.raises(StopAsyncIteration):
            await anext(notifications)
    finally:
        with anyio.fail_after(15):
            await client.done()
        await connection.aclose()


async def test_init_can_be_tried_again_after_it_failed(
    dedicated_redis: RedisServer,
) -> None:
    """A start that failed (recovery refused) leaves the client able to start."""
    admin = redis.asyncio.Redis.from_url(dedicated_redis.url)
    await admin.acl_setuser(
        "app", enabled=True, passwords=["+pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-xautoclaim"],
    )  # fmt: skip
    app = redis.asyncio.Redis(port=dedicated_redis.port, username="app", password="pw")
    try:
        client = _client(app)
        with pytest.raises(RSCError, match="XAUTOCLAIM"):
            await client.init()

        await admin.acl_setuser("app", enabled=True, commands=["+xautoclaim"])
        notifications = await client.init()
        await add_stream(admin, SERVICE, "after-retry")
        added = await next_notification(notifications)
        await client.done()
    finally:
        await app.aclose()
        await admin.aclose()

    assert isinstance(added, StreamAdded)
    assert "after-retry" == added.payload.data_stream_name
