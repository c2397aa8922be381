"""Takeover: expired locks, claims, lost locks and finishing a stream late."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import anyio
import pytest
import redis
import redis.asyncio
from _consumer_proc import ConsumerProcess
from _consumers import GHOST, ghost_entry
from _wait import next_notification

from rsc_async import (
    AlreadyClaimedError,
    DataStreamNotFoundError,
    LBSInfo,
    LockLostError,
    Notification,
    Notifications,
    RedisStreamClient,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    add_stream,
)
from rsc_async.testing import find_redis_server
from rsc_async.testing.pytest_plugin import RedisServerFactory

INTRUDER = "redis-consumer-intruder"


def _client(
    redis_client: redis.asyncio.Redis, service: str, consumer_id: str, **options: Any
) -> RedisStreamClient:
    # The reconciliation sweep announces orphans by taking their lock for a
    # millisecond; it is off so that the claims and lost locks under test are
    # the only ones.
    return RedisStreamClient(
        redis_client,
        service,
        consumer_id=consumer_id,
        hb_interval=0.5,
        lbs_idle_time=1.0,
        reconcile_interval=0,
        **options,
    )


def _text(value: object) -> str:
    assert isinstance(value, bytes | str)
    return value.decode() if isinstance(value, bytes) else value


async def _pending_ids(redis_client: redis.asyncio.Redis, service: str) -> list[str]:
    rows = await redis_client.xpending_range(
        f"{service}-input", f"{service}-group", "-", "+", 100
    )
    return [_text(row["message_id"]) for row in rows]


async def _entry_ids(redis_client: redis.asyncio.Redis, service: str) -> list[str]:
    entries = await redis_client.xrange(f"{service}-input") or []
    return [_text(entry_id) for entry_id, _ in entries]


async def _nothing_within(
    notifications: Notifications, seconds: float
) -> list[Notification]:
    """What arrives within *seconds*; a check that nothing more comes."""
    received = []
    with anyio.move_on_after(seconds):
        received.append(await anext(notifications))
    return received


async def test_stream_of_a_killed_consumer_expires_and_is_claimed(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """A holder is SIGKILLed; the survivor hears StreamExpired and claims it."""
    child = await ConsumerProcess.start(
        redis_url, service_name, consumer_id="doomed", hb_interval=0.5
    )
    try:
        entry_id = await add_stream(redis_client, service_name, "s-1", {"k": "v"})
        await child.expect(type="StreamAdded", stream="s-1")

        async with _client(redis_client, service_name, "survivor") as client:
            notifications = await client.init()
            child.kill()

            expired = await next_notification(notifications, timeout=10)
            assert isinstance(expired, StreamExpired)
            info = LBSInfo(data_stream_name="s-1", id_in_lbs=entry_id)
            assert info == expired.payload
            assert {"k": "v"} == expired.additional_info

            await client.claim(expired.payload)
            assert [info] == list(client.held_streams)
            lock = await redis_client.get(info.mutex_key)
            assert b"redis-consumer-survivor" == lock
            assert [entry_id] == await _pending_ids(redis_client, service_name)

            await client.done_stream("s-1")
            assert [] == await _entry_ids(redis_client, service_name)
            assert [] == await _pending_ids(redis_client, service_name)
    finally:
        await child.stop()


async def _ghost_holds(
    redis_client: redis.asyncio.Redis, service: str, name: str, ttl_ms: int
) -> LBSInfo:
    """An entry read and locked by a consumer that runs no client."""
    info = await ghost_entry(redis_client, service, name, {"k": "v"})
    await redis_client.set(info.mutex_key, GHOST, px=ttl_ms)
    return info


async def test_only_one_of_three_concurrent_claims_succeeds(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """Three consumers claim one expired stream at once; exactly one gets it."""
    info = await _ghost_holds(redis_client, service_name, "s-1", ttl_ms=60_000)
    async with (
        _client(redis_client, service_name, "a") as a,
        _client(redis_client, service_name, "b") as b,
        _client(redis_client, service_name, "c") as c,
    ):
        clients = [a, b, c]
        streams = [await client.init() for client in clients]
        await redis_client.pexpire(info.mutex_key, 1)
        for notifications in streams:
            expired = await next_notification(notifications, timeout=10)
            assert isinstance(expired, StreamExpired)
            assert info == expired.payload

        results = await asyncio.gather(
            *(client.claim(info) for client in clients), return_exceptions=True
        )

        winners = [
            client
            for client, result in zip(clients, results, strict=True)
            if not isinstance(result, BaseException)
        ]
        losers = [result for result in results if isinstance(result, BaseException)]
        assert 1 == len(winners)
        assert [AlreadyClaimedError, AlreadyClaimedError] == list(map(type, losers))
        [winner] = winners
        assert [[info] if client is winner else [] for client in clients] == [
            list(client.held_streams) for client in clients
        ]
        assert winner.id.encode() == await redis_client.get(info.mutex_key)
        await winner.done_stream("s-1")
        assert [] == await _pending_ids(redis_client, service_name)


@pytest.mark.parametrize("how", ["deleted", "overwritten", "expired"])
async def test_lost_lock_is_reported_once_as_disowned(
    redis_client: redis.asyncio.Redis, service_name: str, how: str
) -> None:
    """A lock deleted, taken or run out gives one StreamDisowned, nothing else.

    A lock that runs out is found gone by the heartbeat or heard expiring by
    the keyspace listener, whichever comes first; neither may also report it
    as the STREAM_EXPIRED of somebody else's lock.
    """
    async with _client(redis_client, service_name, "a") as client:
        notifications = await client.init()
        await add_stream(redis_client, service_name, "s-1", {"k": "v"})
        added = await next_notification(notifications)
        assert isinstance(added, StreamAdded)
        lock = added.payload.mutex_key
        try:
            if how == "deleted":
                await redis_client.delete(lock)
            elif how == "overwritten":
                await redis_client.set(lock, INTRUDER, px=60_000)
            else:
                await redis_client.pexpire(lock, 1)

            disowned = await next_notification(notifications)
            assert isinstance(disowned, StreamDisowned)
            assert added.payload == disowned.payload
            assert {"k": "v"} == disowned.additional_info
            # Several heartbeats: the loss is not reported again.
            assert [] == await _nothing_within(notifications, 1.5)
            assert [] == list(client.held_streams)
            with pytest.raises(DataStreamNotFoundError):
                await client.done_stream("s-1")
        finally:
            await redis_client.delete(lock)


def _debug_command_args() -> tuple[str, ...]:
    """Arguments that let a test server take DEBUG (refused by default from 7.0)."""
    executable = find_redis_server()
    if executable is None:
        return ()
    version = subprocess.run(
        [executable, "--version"], capture_output=True, text=True, check=True
    ).stdout
    major = int(version.split("v=")[1].split(".")[0])
    return ("--enable-debug-command", "yes") if major >= 7 else ()


async def test_lock_found_gone_by_the_heartbeat_is_not_announced_to_its_holder(
    redis_server_factory: RedisServerFactory, service_name: str
) -> None:
    """A lock the heartbeat finds run out: StreamDisowned, then no StreamExpired.

    With the server's own expiry off, the heartbeat's read is what expires the
    key: it learns of the loss before the event that read raises is heard.
    """
    server = redis_server_factory(*_debug_command_args())
    async with (
        redis.asyncio.Redis.from_url(server.url) as r,
        _client(r, service_name, "a") as client,
    ):
        notifications = await client.init()
        await add_stream(r, service_name, "s-1")
        added = await next_notification(notifications)
        assert isinstance(added, StreamAdded)
        debug = r.execute_command
        await debug("DEBUG", "SET-ACTIVE-EXPIRE", "0")  # type: ignore[no-untyped-call]
        await r.pexpire(added.payload.mutex_key, 1)

        disowned = await next_notification(notifications)
        assert isinstance(disowned, StreamDisowned)
        assert [] == await _nothing_within(notifications, 1.5)


def _block_until_gone(sync_client: redis.Redis, key: str) -> None:
    deadline = time.monotonic() + 5.0
    while sync_client.exists(key):
        assert time.monotonic() < deadline, f"{key} did not expire"
        time.sleep(0.005)


async def test_done_stream_of_a_lock_another_consumer_took_raises_lock_lost(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """done_stream after another consumer took the lock acknowledges nothing."""
    async with _client(redis_client, service_name, "a") as client:
        notifications = await client.init()
        entry_id = await add_stream(redis_client, service_name, "s-1")
        added = await next_notification(notifications)
        assert isinstance(added, StreamAdded)
        lock = added.payload.mutex_key
        try:
            # A blocking client keeps the event loop busy, so done_stream runs
            # before the heartbeat can notice the new holder.
            with redis.Redis.from_url(redis_url) as blocking:
                blocking.set(lock, INTRUDER, px=60_000)
            with pytest.raises(LockLostError) as caught:
                await client.done_stream("s-1")

            assert INTRUDER == caught.value.holder
            assert [entry_id] == await _entry_ids(redis_client, service_name)
            assert [entry_id] == await _pending_ids(redis_client, service_name)
            assert INTRUDER.encode() == await redis_client.get(lock)
            assert [] == list(client.held_streams)
        finally:
            await redis_client.delete(lock)


async def test_done_stream_after_the_lock_expired_unclaimed_finishes_the_entry(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """done_stream of a lock that expired with nobody taking it still finishes."""
    async with _client(redis_client, service_name, "a") as client:
        notifications = await client.init()
        await add_stream(redis_client, service_name, "s-1")
        added = await next_notification(notifications)
        assert isinstance(added, StreamAdded)
        # A blocking client keeps the event loop busy (as a stalled handler
        # would) while the lock expires, so neither the heartbeat nor the
        # expiry event can report it lost before done_stream runs.
        with redis.Redis.from_url(redis_url) as blocking:
            blocking.pexpire(added.payload.mutex_key, 1)
            _block_until_gone(blocking, added.payload.mutex_key)
        await client.done_stream("s-1")

        assert [] == await _entry_ids(redis_client, service_name)
        assert [] == await _pending_ids(redis_client, service_name)
        assert [] == list(client.held_streams)
        # The expiry is heard after the entry was finished: nothing to claim.
        assert [] == await _nothing_within(notifications, 1.0)
