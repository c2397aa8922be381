"""The heartbeat on its own thread keeps locks while the event loop is blocked."""

from __future__ import annotations

import time

import pytest
import redis.asyncio as aioredis
from _wait import next_notification, wait_for
from redis.asyncio.cluster import RedisCluster

from rsc_async import (
    InvalidOptionError,
    NotificationType,
    RedisStreamClient,
    add_stream,
)

HB_INTERVAL = 0.5


def _client(
    redis: aioredis.Redis, service: str, progress_deadline: float
) -> RedisStreamClient:
    return RedisStreamClient(
        redis,
        service,
        consumer_id="busy",
        hb_interval=HB_INTERVAL,
        lbs_idle_time=30.0,
        heartbeat_thread=True,
        progress_deadline=progress_deadline,
    )


async def _hold(client: RedisStreamClient, redis: aioredis.Redis, count: int) -> None:
    for n in range(count):
        await add_stream(redis, client.service, f"stream-{n}")
    await wait_for(lambda: len(client.held_streams) == count)


async def test_locks_survive_a_loop_blocked_for_several_ttls(
    redis_client: aioredis.Redis, service_name: str
) -> None:
    """CPU-bound work blocking the loop for 3 TTLs loses no lock."""
    async with _client(redis_client, service_name, progress_deadline=30.0) as client:
        await client.init()
        await _hold(client, redis_client, 3)

        # The handler's blocking work, on purpose.
        time.sleep(3 * HB_INTERVAL)  # noqa: ASYNC251

        held = client.held_streams
        assert 3 == len(held)
        for info in held:
            assert b"redis-consumer-busy" == await redis_client.get(info.mutex_key)


async def test_a_loop_stuck_past_the_progress_deadline_lets_go(
    redis_client: aioredis.Redis, service_name: str
) -> None:
    """Past progress_deadline the locks lapse, and the client reports them lost."""
    async with _client(redis_client, service_name, progress_deadline=1.0) as client:
        notifications = await client.init()
        await _hold(client, redis_client, 2)
        assert (
            NotificationType.STREAM_ADDED
            == (await next_notification(notifications)).type
        )
        assert (
            NotificationType.STREAM_ADDED
            == (await next_notification(notifications)).type
        )

        # Stuck past the deadline, on purpose.
        time.sleep(1.0 + 3 * HB_INTERVAL)  # noqa: ASYNC251

        lost = {(await next_notification(notifications)).type for _ in range(2)}
        assert {NotificationType.STREAM_DISOWNED} == lost
        assert [] == list(client.held_streams)


async def test_a_cluster_client_cannot_use_the_heartbeat_thread() -> None:
    """Only a plain client can be copied for the heartbeat's own loop."""
    cluster = RedisCluster(host="127.0.0.1", port=1)
    try:
        with pytest.raises(InvalidOptionError, match="heartbeat_thread"):
            RedisStreamClient(cluster, "svc", heartbeat_thread=True)
    finally:
        await cluster.aclose()
