"""Handing streams back unfinished, one at a time or all at shutdown.

A hand-back makes the lock expire at once, so the other consumers hear of it
long before the TTL would have run out: the heartbeat interval here is long
(5 s) to make the difference plain.
"""

from __future__ import annotations

import time
from typing import Any

import redis.asyncio
from _consumers import (
    LBS_FIELD,
    Recorded,
    connected,
    expire_ghost_lock,
    lock_holder,
    pending_owner,
    running,
)
from _wait import wait_for

from rsc_async import (
    LBSInfo,
    LBSMessage,
    RedisStreamClient,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    add_stream,
)

HB_INTERVAL = 5.0
AT_ONCE = 2.0
"""Seconds within which a handed-back stream is announced: well under the TTL."""


def _client(
    r: redis.asyncio.Redis, service: str, consumer_id: str, **options: Any
) -> RedisStreamClient:
    return RedisStreamClient(
        r,
        service,
        consumer_id=consumer_id,
        hb_interval=HB_INTERVAL,
        lbs_idle_time=2 * HB_INTERVAL,
        **options,
    )


async def _assign(
    admin: redis.asyncio.Redis, consumer: Recorded, service: str, *names: str
) -> list[LBSInfo]:
    """Add streams while *consumer* is the only one reading; it gets them all."""
    for name in names:
        await add_stream(admin, service, name)
    return [(await consumer.wait(StreamAdded, name)).payload for name in names]


async def test_released_stream_is_announced_at_once_and_claimable(
    redis_url: str, service_name: str
) -> None:
    """release_stream: the other consumer hears it well before the TTL and claims."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "leaving")) as leaving,
    ):
        [info] = await _assign(admin, leaving, service_name, "session-1")
        given_up = leaving.client.fencing_token("session-1")
        async with running(_client(r, service_name, "staying")) as staying:
            released = time.monotonic()
            await leaving.client.release_stream("session-1")
            expired = await staying.wait(StreamExpired, "session-1", AT_ONCE)
            heard = staying.times(StreamExpired, "session-1")[0] - released
            token = await staying.client.claim(expired.payload)
            holder = await lock_holder(admin, info)

    assert info == expired.payload
    assert heard < AT_ONCE
    assert given_up < token
    assert staying.client.id == holder


async def test_releasing_consumer_hears_nothing_of_its_own_release(
    redis_url: str, service_name: str
) -> None:
    """The consumer that hands a stream back gets no StreamExpired or Disowned."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "leaving")) as leaving,
    ):
        await _assign(admin, leaving, service_name, "session-1")
        await leaving.client.release_stream("session-1")
        # Expiries reach a consumer in order: once it tells of this one, it
        # has handled the expiry of the released lock.
        await expire_ghost_lock(admin, service_name, "marker")
        await leaving.wait(StreamExpired, "marker")
        held = leaving.client.held_streams

    assert [] == leaving.of(StreamExpired, "session-1")
    assert [] == leaving.of(StreamDisowned)
    assert [] == list(held)


async def test_released_entry_stays_pending_until_claimed(
    redis_url: str, service_name: str
) -> None:
    """After release_stream the entry is still pending, then the claimer's."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "leaving")) as leaving,
    ):
        [info] = await _assign(admin, leaving, service_name, "session-1")
        async with running(_client(r, service_name, "staying")) as staying:
            await leaving.client.release_stream("session-1")
            await wait_for(lambda: _gone(admin, info))
            released_owner = await pending_owner(admin, service_name, info.id_in_lbs)
            await staying.client.claim(info)
            claimed_owner = await pending_owner(admin, service_name, info.id_in_lbs)

    assert leaving.client.id == released_owner
    assert staying.client.id == claimed_owner


async def _gone(admin: redis.asyncio.Redis, info: LBSInfo) -> bool:
    return 0 == await admin.exists(info.mutex_key)


async def test_done_with_release_hands_back_every_held_stream(
    redis_url: str, service_name: str
) -> None:
    """done(release=True): the other consumer hears of each stream at once."""
    names = ["session-1", "session-2", "session-3"]
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "leaving")) as leaving,
    ):
        infos = await _assign(admin, leaving, service_name, *names)
        async with running(_client(r, service_name, "staying")) as staying:
            released = time.monotonic()
            await leaving.client.done(release=True)
            expired = [await staying.wait(StreamExpired, n, AT_ONCE) for n in names]
            heard = max(staying.times(StreamExpired, n)[0] for n in names) - released
            still_pending = [
                await pending_owner(admin, service_name, info.id_in_lbs)
                for info in infos
            ]

    assert infos == [notification.payload for notification in expired]
    assert heard < AT_ONCE
    assert [leaving.client.id] * 3 == still_pending


async def test_done_finishes_every_held_stream(
    redis_url: str, service_name: str
) -> None:
    """done(): every held entry is acknowledged and deleted, and no one is told."""
    names = ["session-1", "session-2", "session-3"]
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "leaving")) as leaving,
    ):
        infos = await _assign(admin, leaving, service_name, *names)
        async with running(_client(r, service_name, "staying")) as staying:
            await leaving.client.done()
            marker = await expire_ghost_lock(admin, service_name, "marker")
            await staying.wait(StreamExpired, "marker")
            locks = await admin.exists(*(info.mutex_key for info in infos))
            entries = await admin.xrange(f"{service_name}-input")
            pending = await admin.xpending(
                f"{service_name}-input", f"{service_name}-group"
            )

    assert [marker] == [n.payload for n in staying.of(StreamExpired)]
    assert 0 == locks
    assert [marker.id_in_lbs] == [entry_id for entry_id, _ in entries or []]
    assert 1 == pending["pending"]


async def test_every_stream_of_a_large_hand_back_is_announced(
    redis_url: str, service_name: str
) -> None:
    """done(release=True) of 3,000 streams: every one is heard expiring."""
    count = 3000
    names = [f"session-{n}" for n in range(count)]
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "leaving", read_batch=1000)) as leaving,
    ):
        async with admin.pipeline(transaction=False) as pipe:
            for name in names:
                message = LBSMessage(data_stream_name=name).to_json()
                pipe.xadd(f"{service_name}-input", {LBS_FIELD: message})
            await pipe.execute()
        await wait_for(lambda: len(leaving.client.held_streams) == count, 30)
        # Room for every expiry of the burst: past the buffer, events are
        # dropped and left to the reconciliation sweep.
        staying_client = _client(r, service_name, "staying", ksp_buffer_size=count)
        async with running(staying_client) as staying:
            await leaving.client.done(release=True)

            await wait_for(lambda: len(staying.of(StreamExpired)) == count, AT_ONCE)
