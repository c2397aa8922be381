"""A consumer that stalls: frozen by SIGSTOP, or its event loop blocked.

By default (without ``heartbeat_thread``) the heartbeat runs on the event
loop, so a stall longer than the TTL costs every lock; another consumer may
take them meanwhile. A stalled consumer must then find out, and must not touch
what is no longer its own.
"""

from __future__ import annotations

import time

import anyio
import redis.asyncio
from _consumer_proc import ConsumerProcess
from _consumers import (
    Recorded,
    connected,
    lock_holder,
    pending_owner,
    running,
)
from _wait import wait_for

from rsc_async import (
    LBSInfo,
    RedisStreamClient,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    add_stream,
)

HB_INTERVAL = 0.5
CHILD_OPTIONS = {
    "hb_interval": HB_INTERVAL,
    "lbs_idle_time": 1.0,
    "reconcile_interval": 0,
}


def _client(
    r: redis.asyncio.Redis, service: str, consumer_id: str, hb_interval: float
) -> RedisStreamClient:
    return RedisStreamClient(
        r,
        service,
        consumer_id=consumer_id,
        hb_interval=hb_interval,
        lbs_idle_time=2 * hb_interval,
        reconcile_interval=0,
    )


def _block_event_loop(seconds: float) -> None:
    """Hold the event loop as CPU-bound code would: nothing else runs meanwhile."""
    time.sleep(seconds)


async def _assign(
    frozen: ConsumerProcess, admin: redis.asyncio.Redis, service: str, *names: str
) -> None:
    """Add *names* while *frozen* is the only consumer; it gets them all."""
    for name in names:
        await add_stream(admin, service, name)
        await frozen.expect(type="StreamAdded", stream=name)


async def _freeze_and_take_over(
    frozen: ConsumerProcess, heir: Recorded, *names: str
) -> list[LBSInfo]:
    """Freeze *frozen* until its locks expire; *heir* claims every stream."""
    frozen.freeze()
    claimed = []
    for name in names:
        expired = await heir.wait(StreamExpired, name)
        await heir.client.claim(expired.payload)
        claimed.append(expired.payload)
    return claimed


async def test_frozen_consumer_is_told_of_every_stream_taken_meanwhile(
    redis_url: str, service_name: str
) -> None:
    """After SIGSTOP past its TTL: StreamDisowned once per stream, locks untouched."""
    names = ["session-1", "session-2"]
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        frozen = await ConsumerProcess.start(
            redis_url, service_name, consumer_id="frozen", **CHILD_OPTIONS
        )
        try:
            await _assign(frozen, admin, service_name, *names)
            async with running(_client(r, service_name, "heir", HB_INTERVAL)) as heir:
                claimed = await _freeze_and_take_over(frozen, heir, *names)
                frozen.thaw()
                for name in names:
                    await frozen.expect(type="StreamDisowned", stream=name)
                # Two heartbeat intervals: time for it to try extending them.
                holders = set()
                deadline = time.monotonic() + 2 * HB_INTERVAL
                while time.monotonic() < deadline:
                    holders |= {await lock_holder(admin, info) for info in claimed}
                    await anyio.sleep(0.02)
                disowned = [
                    len(frozen.printed(type="StreamDisowned", stream=name))
                    for name in names
                ]
        finally:
            await frozen.stop()

    assert [1, 1] == disowned
    assert {heir.client.id} == holders


async def test_frozen_consumers_done_stream_leaves_the_new_holders_entry(
    redis_url: str, service_name: str
) -> None:
    """done_stream by a consumer just thawed finishes nothing of the new holder's."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        frozen = await ConsumerProcess.start(
            redis_url, service_name, consumer_id="frozen", **CHILD_OPTIONS
        )
        try:
            await _assign(frozen, admin, service_name, "session-1")
            async with running(_client(r, service_name, "heir", HB_INTERVAL)) as heir:
                [info] = await _freeze_and_take_over(frozen, heir, "session-1")
                # Read as it wakes: it may run before its heartbeat finds out.
                await frozen.send("done session-1")
                frozen.thaw()
                done = await frozen.expect(event="done", stream="session-1")
                owner = await pending_owner(admin, service_name, info.id_in_lbs)
                holder = await lock_holder(admin, info)
                await heir.client.done_stream("session-1")
        finally:
            await frozen.stop()

    assert done["error"] in ("LockLostError", "DataStreamNotFoundError")
    assert heir.client.id == owner
    assert heir.client.id == holder


async def test_loop_blocked_under_half_an_interval_keeps_every_lock(
    redis_url: str, service_name: str
) -> None:
    """Blocking the loop for 0.3 of hb_interval, at the worst moment, loses nothing."""
    hb_interval = 1.0
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "busy", hb_interval)) as busy,
    ):
        await add_stream(admin, service_name, "session-1")
        info = (await busy.wait(StreamAdded, "session-1")).payload

        async def tick_is_due() -> bool:
            # Locks are extended every half TTL: this is just before that.
            return await admin.pttl(info.mutex_key) < 0.6 * hb_interval * 1000

        async def extended_again() -> bool:
            return await admin.pttl(info.mutex_key) > 0.8 * hb_interval * 1000

        await wait_for(tick_is_due, 2 * hb_interval, interval=0.005)
        _block_event_loop(0.3 * hb_interval)
        # A lock that expired is never re-created: extended means kept.
        await wait_for(extended_again, hb_interval)
        holder = await lock_holder(admin, info)

    assert busy.client.id == holder
    assert [] == busy.of(StreamDisowned)


async def test_loop_blocked_past_the_ttl_loses_the_locks_to_another_consumer(
    redis_url: str, service_name: str
) -> None:
    """Blocking the loop past hb_interval: another takes the lock, we are told."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name, "busy", HB_INTERVAL)) as busy,
    ):
        await add_stream(admin, service_name, "session-1")
        info = (await busy.wait(StreamAdded, "session-1")).payload
        other = await ConsumerProcess.start(
            redis_url, service_name, consumer_id="other", **CHILD_OPTIONS
        )
        try:
            await other.send("claim-expired")
            await other.expect(event="claiming")
            _block_event_loop(3 * HB_INTERVAL)
            disowned = await busy.wait(StreamDisowned, "session-1")
            claimed = await other.expect(event="claimed", stream="session-1")
            holder = await lock_holder(admin, info)
        finally:
            await other.stop()

    assert info == disowned.payload
    assert "token" in claimed
    assert other.id == holder
