"""A consumer that wakes from a stall never finishes or takes a finished stream.

The chaos run found both: a consumer frozen while a read was answered took the
stream from that stale reply after another consumer had finished it, and a
consumer whose lock ran out finished a stream that another consumer had taken
over. Each is replayed here step by step.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest
import redis.asyncio

from rsc_async import (
    LockLostError,
    RedisStreamClient,
    StreamAdded,
    add_stream,
)
from rsc_async.testing import RedisServer

from ._ledger import Holding, Ledger, text
from ._processes import ConsumerOptions, ConsumerPool, ConsumerProcess

# Long enough that no heartbeat tick falls inside a test's few round trips.
SLOW_HB = 10.0


async def _until(
    condition: Callable[[], Awaitable[bool]], within: float = 10.0
) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        assert time.monotonic() < deadline, f"{condition.__name__} stayed false"
        await anyio.sleep(0.02)


def _client(r: redis.asyncio.Redis, service: str, name: str) -> RedisStreamClient:
    return RedisStreamClient(
        r,
        service,
        consumer_id=name,
        hb_interval=SLOW_HB,
        lbs_idle_time=2 * SLOW_HB,
        reconcile_interval=0,
    )


async def _pending(r: redis.asyncio.Redis, service: str) -> dict[str, str]:
    rows = await r.xpending_range(f"{service}-input", f"{service}-group", "-", "+", 10)
    return {text(row["message_id"]): text(row["consumer"]) for row in rows}


async def test_done_stream_after_another_consumer_finished_it_raises_lock_lost(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """A holder whose lock ran out cannot finish a stream a newer holder finished."""
    async with (
        _client(redis_client, service_name, "old") as old,
        _client(redis_client, service_name, "new") as new,
    ):
        notifications = await old.init()
        await new.init()
        await add_stream(redis_client, service_name, "s-1")
        added = await notifications.__anext__()
        assert isinstance(added, StreamAdded)
        # The old holder is paused past its TTL: its lock is gone.
        await redis_client.delete(added.payload.mutex_key)
        await new.claim(added.payload)
        await new.done_stream("s-1")

        with pytest.raises(LockLostError):
            await old.done_stream("s-1")

        assert 0 == await redis_client.xlen(f"{service_name}-input")


async def test_done_stream_after_another_consumer_claimed_it_raises_lock_lost(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """A holder whose lock ran out leaves alone a stream another consumer claimed."""
    async with (
        _client(redis_client, service_name, "old") as old,
        _client(redis_client, service_name, "new") as new,
    ):
        notifications = await old.init()
        await new.init()
        entry_id = await add_stream(redis_client, service_name, "s-1")
        added = await notifications.__anext__()
        assert isinstance(added, StreamAdded)
        await redis_client.delete(added.payload.mutex_key)
        await new.claim(added.payload)
        # The newer holder stalls in turn; the stream is an orphan again.
        await redis_client.delete(added.payload.mutex_key)

        with pytest.raises(LockLostError) as caught:
            await old.done_stream("s-1")

        assert new.id == caught.value.holder
        assert {entry_id: new.id} == await _pending(redis_client, service_name)


async def _blocked_readers(r: redis.asyncio.Redis) -> int:
    clients = await r.client_list()
    return sum(1 for c in clients if c.get("cmd") == "xreadgroup" and "b" in c["flags"])


async def _freeze_while_reading(
    admin: redis.asyncio.Redis, frozen: ConsumerProcess, service: str, index: int
) -> tuple[str, str] | None:
    """SIGSTOP *frozen* blocked in its read, and hand it one stream.

    Returns:
        The stream and its entry id, when the frozen read took the entry; None
        when the read had timed out in between (the caller tries again).
    """
    await _until(lambda: _blocked_readers_are(admin, 1))
    frozen.stall()
    name = f"{service}:data:{index}"
    await admin.xadd(name, {"n": 0})
    entry_id = await add_stream(admin, service, name)
    if (await _pending(admin, service)).get(entry_id) == frozen.client_id:
        return name, entry_id
    frozen.resume()
    return None


async def _blocked_readers_are(r: redis.asyncio.Redis, count: int) -> bool:
    return count == await _blocked_readers(r)


async def test_a_read_answered_during_a_stall_does_not_take_a_finished_stream(
    dedicated_redis: RedisServer, tmp_path: Path
) -> None:
    """An entry finished by another consumer while its reader was frozen stays done."""
    service = "stale"
    options = ConsumerOptions(
        url=dedicated_redis.url,
        service=service,
        seed=0,
        work_ms=1.0,
        hb_interval=0.5,
        lbs_idle_time=1.0,
        reconcile_interval=0,
        max_deliveries=10,
    )
    admin = redis.asyncio.Redis.from_url(dedicated_redis.url, decode_responses=True)
    ledger = Ledger(admin, service)
    pool = ConsumerPool(options, tmp_path)
    try:
        frozen = pool.start()
        await pool.wait_ready(ledger, 60.0)
        taken = None
        for index in range(5):
            taken = await _freeze_while_reading(admin, frozen, service, index)
            if taken is not None:
                break
        assert taken is not None, "the frozen consumer never had a read answered"
        name, entry_id = taken

        # Another consumer recovers the entry once it is idle, and finishes it.
        async def idle_enough() -> bool:
            rows = await admin.xpending_range(
                f"{service}-input", f"{service}-group", entry_id, entry_id, 1
            )
            return bool(rows) and int(rows[0]["time_since_delivered"]) >= 1000

        await _until(idle_enough)
        heir_redis = redis.asyncio.Redis.from_url(dedicated_redis.url)
        async with RedisStreamClient(
            heir_redis, service, consumer_id="heir", hb_interval=0.5, lbs_idle_time=1.0
        ) as heir:
            notifications = await heir.init()
            recovered = await notifications.__anext__()
            assert isinstance(recovered, StreamAdded)
            assert name == recovered.payload.data_stream_name
            await heir.done_stream(name)
        await heir_redis.aclose()

        # The frozen consumer wakes to the stale reply; once it blocks in its
        # next read, it has dealt with that reply.
        await _until(lambda: _blocked_readers_are(admin, 0))
        frozen.resume()
        await _until(lambda: _blocked_readers_are(admin, 1))
        codes = await pool.stop_all()
        held: list[Holding] = [
            h
            for h in await ledger.holdings(ledger.claims)
            if h.consumer == frozen.client_id
        ]
        lock_left = await admin.exists(f"{name}<MUTEX_KEY_SEP>{entry_id}")
    finally:
        pool.kill_all()
        await admin.aclose()

    assert {frozen.name: 0} == codes
    assert [] == held
    assert 0 == lock_left
