"""Poison entries: delivered more than max_deliveries times, they are set aside.

Entries are delivered again here by a consumer that runs no client, with
XCLAIM, as a crashing consumer's entries would be by each one taking over.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio
from _consumers import GHOST, LBS_FIELD, connected, ghost_entry, running
from _wait import wait_for

from rsc_async import (
    LBSInfo,
    PoisonStreamError,
    RedisStreamClient,
    StreamAdded,
    StreamExpired,
)

MAX_DELIVERIES = 2
IDLE_MS = 5_000
"""Idle time given to entries: past the sweep's threshold (1 s) and recovery's
when lbs_idle_time is 1 s, short of recovery's at 30 s."""


def _client(r: redis.asyncio.Redis, service: str, **options: Any) -> RedisStreamClient:
    settings: dict[str, Any] = {
        "consumer_id": "careful",
        "hb_interval": 0.5,
        "lbs_idle_time": 30.0,
        "reconcile_interval": 0,
        "max_deliveries": MAX_DELIVERIES,
        **options,
    }
    return RedisStreamClient(r, service, **settings)


async def _delivered(
    admin: redis.asyncio.Redis, service: str, name: str, times: int
) -> LBSInfo:
    """An entry for *name* delivered *times* times to a ghost, idle for a while."""
    lbs, group = f"{service}-input", f"{service}-group"
    info = await ghost_entry(admin, service, name, {"name": name})
    for _ in range(times - 1):
        await admin.xclaim(lbs, group, GHOST, 0, [info.id_in_lbs])
    # JUSTID: set the idle time without counting a delivery.
    await admin.xclaim(
        lbs, group, GHOST, 0, [info.id_in_lbs], idle=IDLE_MS, justid=True
    )
    return info


async def _dead_letters(
    admin: redis.asyncio.Redis, service: str
) -> list[dict[str, str]]:
    entries = await admin.xrange(f"{service}-dead") or []
    return [
        {str(k): str(v) for k, v in (fields or {}).items()} for _, fields in entries
    ]


async def _in_lbs(admin: redis.asyncio.Redis, service: str, info: LBSInfo) -> bool:
    lbs, group = f"{service}-input", f"{service}-group"
    present = await admin.xrange(lbs, info.id_in_lbs, info.id_in_lbs)
    pending = await admin.xpending_range(lbs, group, info.id_in_lbs, info.id_in_lbs, 1)
    return bool(present or pending)


async def test_recovery_sets_aside_an_entry_delivered_too_often(
    redis_url: str, service_name: str
) -> None:
    """Startup recovery moves an over-delivered entry to the dead letters."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        # Recovery delivers each once more: 2 stays within the limit, 3 not.
        healthy = await _delivered(admin, service_name, "healthy", MAX_DELIVERIES - 1)
        poison = await _delivered(admin, service_name, "poison", MAX_DELIVERIES)
        async with running(_client(r, service_name, lbs_idle_time=1.0)) as consumer:
            await consumer.wait(StreamAdded, "healthy")
            dead = await _dead_letters(admin, service_name)
            poison_left = await _in_lbs(admin, service_name, poison)

    [letter] = dead
    assert poison.id_in_lbs == letter["entry_id"]
    assert "delivered 3 times" in letter["reason"]
    assert "poison" in letter[LBS_FIELD]
    assert not poison_left
    assert [] == consumer.of(StreamAdded, "poison")
    assert [healthy] == [n.payload for n in consumer.of(StreamAdded)]


async def test_claim_of_an_entry_delivered_too_often_raises_and_sets_it_aside(
    redis_url: str, service_name: str
) -> None:
    """claim() of an over-delivered entry raises PoisonStreamError and moves it."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        # The claim delivers it once more, past the limit.
        poison = await _delivered(admin, service_name, "poison", MAX_DELIVERIES)
        async with running(_client(r, service_name)) as consumer:
            await admin.set(poison.mutex_key, GHOST, px=1)
            expired = await consumer.wait(StreamExpired, "poison")
            with pytest.raises(PoisonStreamError) as caught:
                await consumer.client.claim(expired.payload)
            dead = await _dead_letters(admin, service_name)
            poison_left = await _in_lbs(admin, service_name, poison)
            lock = await admin.exists(poison.mutex_key)
            held = consumer.client.held_streams

    [letter] = dead
    assert poison.id_in_lbs == letter["entry_id"]
    assert "delivered 3 times" in letter["reason"]
    assert "delivered 3 times" in caught.value.reason
    assert not poison_left
    assert 0 == lock
    assert [] == list(held)


async def test_sweep_sets_aside_an_orphan_delivered_too_often(
    redis_url: str, service_name: str
) -> None:
    """The reconciliation sweep moves an over-delivered orphan, unannounced."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        poison = await _delivered(admin, service_name, "poison", MAX_DELIVERIES + 1)
        async with running(
            _client(r, service_name, reconcile_interval=1.0)
        ) as consumer:

            async def set_aside() -> bool:
                return bool(await _dead_letters(admin, service_name))

            await wait_for(set_aside)
            dead = await _dead_letters(admin, service_name)
            poison_left = await _in_lbs(admin, service_name, poison)

    [letter] = dead
    assert poison.id_in_lbs == letter["entry_id"]
    assert "delivered 3 times" in letter["reason"]
    assert not poison_left
    assert [] == consumer.of(StreamExpired, "poison")
