"""Startup recovery: a new consumer takes over what a dead one left pending."""

from __future__ import annotations

from typing import Any

import anyio
import redis.asyncio
from _consumers import GHOST, ghost_entry
from _wait import next_notification, wait_for

from rsc_async import (
    LBSInfo,
    Notification,
    Notifications,
    RedisStreamClient,
    StreamAdded,
)


def _client(
    redis_client: redis.asyncio.Redis, service: str, **options: Any
) -> RedisStreamClient:
    return RedisStreamClient(
        redis_client,
        service,
        consumer_id="heir",
        hb_interval=0.5,
        lbs_idle_time=1.0,
        **options,
    )


def _text(value: object) -> str:
    assert isinstance(value, bytes | str)
    return value.decode() if isinstance(value, bytes) else value


async def _pending(redis_client: redis.asyncio.Redis, service: str) -> list[Any]:
    rows: list[Any] = await redis_client.xpending_range(
        f"{service}-input", f"{service}-group", "-", "+", 1000
    )
    return rows


async def _ghost_reads(
    redis_client: redis.asyncio.Redis, service: str, count: int
) -> list[LBSInfo]:
    """Entries a consumer read and then died with, before taking any lock."""
    return [
        await ghost_entry(redis_client, service, f"s-{i}", {"n": i})
        for i in range(count)
    ]


async def _all_idle_for_lbs_idle_time(
    redis_client: redis.asyncio.Redis, service: str
) -> None:
    async def idle() -> bool:
        rows = await _pending(redis_client, service)
        return all(row["time_since_delivered"] >= 1100 for row in rows)

    await wait_for(idle, timeout=10)


async def _read(notifications: Notifications, count: int) -> list[Notification]:
    return [await next_notification(notifications) for _ in range(count)]


def _added(notifications: list[Notification]) -> dict[LBSInfo, dict[str, Any]]:
    """The Info of each StreamAdded, by stream."""
    added = {}
    for notification in notifications:
        assert isinstance(notification, StreamAdded)
        added[notification.payload] = notification.additional_info
    return added


async def test_init_recovers_the_entries_a_dead_consumer_left(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """Pending entries of a dead consumer come back as StreamAdded with Info."""
    streams = await _ghost_reads(redis_client, service_name, 6)
    lbs, group = f"{service_name}-input", f"{service_name}-group"
    # Finished before the ghost died: acknowledged and deleted.
    for done in (streams[1], streams[3]):
        await redis_client.xack(lbs, group, done.id_in_lbs)
        await redis_client.xdel(lbs, done.id_in_lbs)
    # Deleted by a producer while still pending.
    await redis_client.xdel(lbs, streams[4].id_in_lbs)
    await _all_idle_for_lbs_idle_time(redis_client, service_name)
    left = [streams[0], streams[2], streams[5]]

    async with _client(redis_client, service_name) as client:
        notifications = await client.init()
        received = await _read(notifications, 3)

        expected = {info: {"n": int(info.data_stream_name[2:])} for info in left}
        assert expected == _added(received)
        assert set(left) == set(client.held_streams)
        pending = await _pending(redis_client, service_name)
        expected_pending = [(info.id_in_lbs, "redis-consumer-heir") for info in left]
        assert expected_pending == [
            (_text(row["message_id"]), _text(row["consumer"])) for row in pending
        ]
        for info in left:
            assert b"redis-consumer-heir" == await redis_client.get(info.mutex_key)


async def test_init_leaves_entries_whose_lock_is_still_held(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """An idle pending entry whose lock is alive stays with its holder."""
    streams = await _ghost_reads(redis_client, service_name, 3)
    held = streams[1]
    await redis_client.set(held.mutex_key, GHOST, px=60_000)
    try:
        await _all_idle_for_lbs_idle_time(redis_client, service_name)

        async with _client(redis_client, service_name) as client:
            notifications = await client.init()
            received = await _read(notifications, 2)

            expected = {streams[0]: {"n": 0}, streams[2]: {"n": 2}}
            assert expected == _added(received)
            assert set(expected) == set(client.held_streams)
            assert GHOST.encode() == await redis_client.get(held.mutex_key)
            with anyio.move_on_after(1.0):
                received.append(await anext(notifications))
            assert 2 == len(received)
            # Still the holder's, with the deliveries it had.
            assert (GHOST, 1) == await _pending_entry(redis_client, service_name, held)
    finally:
        await redis_client.delete(held.mutex_key)


async def _pending_entry(
    redis_client: redis.asyncio.Redis, service: str, info: LBSInfo
) -> tuple[str, int]:
    """Whom *info*'s entry is pending under, and how often it was delivered."""
    rows = await redis_client.xpending_range(
        f"{service}-input", f"{service}-group", info.id_in_lbs, info.id_in_lbs, 1
    )
    assert 1 == len(rows)
    return _text(rows[0]["consumer"]), int(rows[0]["times_delivered"])


async def test_restarts_of_other_consumers_never_make_a_held_entry_poison(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """Recoveries past max_deliveries leave a held entry with its holder."""
    (held,) = await _ghost_reads(redis_client, service_name, 1)
    await redis_client.set(held.mutex_key, GHOST, px=60_000)
    try:
        for _ in range(2):
            await _all_idle_for_lbs_idle_time(redis_client, service_name)
            async with _client(redis_client, service_name, max_deliveries=1) as client:
                await client.init()

                assert [] == list(client.held_streams)

        assert 0 == await redis_client.xlen(f"{service_name}-dead")
        assert (GHOST, 1) == await _pending_entry(redis_client, service_name, held)
    finally:
        await redis_client.delete(held.mutex_key)


async def test_recovery_pages_through_more_entries_than_a_page_holds(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """25 pending entries are all recovered with pages of 10."""
    streams = await _ghost_reads(redis_client, service_name, 25)
    await _all_idle_for_lbs_idle_time(redis_client, service_name)

    async with _client(redis_client, service_name, lbs_recovery_count=10) as client:
        notifications = await client.init()
        received = await _read(notifications, 25)

        assert {info: {"n": i} for i, info in enumerate(streams)} == _added(received)
        assert 25 == len(client.held_streams)


async def test_recovering_more_than_the_output_buffer_does_not_block_init(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """init() returns with 20 recovered streams and a buffer of 5; all are read."""
    streams = await _ghost_reads(redis_client, service_name, 20)
    await _all_idle_for_lbs_idle_time(redis_client, service_name)

    async with _client(redis_client, service_name, output_buffer_size=5) as client:
        with anyio.fail_after(10):
            notifications = await client.init()
        received = await _read(notifications, 20)

        assert {info: {"n": i} for i, info in enumerate(streams)} == _added(received)
