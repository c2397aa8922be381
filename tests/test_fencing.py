"""Fencing tokens: one counter per service, a larger token for every lock taken."""

from __future__ import annotations

import pytest
import redis.asyncio
from _consumer_proc import ConsumerProcess
from _consumers import Recorded, connected, running

from rsc_async import (
    DataStreamNotFoundError,
    RedisStreamClient,
    StreamAdded,
    StreamExpired,
    add_stream,
)

HB_INTERVAL = 0.5


def _client(
    r: redis.asyncio.Redis, service: str, consumer_id: str = "fenced"
) -> RedisStreamClient:
    return RedisStreamClient(
        r,
        service,
        consumer_id=consumer_id,
        hb_interval=HB_INTERVAL,
        lbs_idle_time=1.0,
        reconcile_interval=0,
    )


async def _assign(
    admin: redis.asyncio.Redis, consumer: Recorded, service: str, names: list[str]
) -> list[StreamAdded]:
    for name in names:
        await add_stream(admin, service, name)
    return [await consumer.wait(StreamAdded, name) for name in names]


async def test_each_lock_takes_the_next_token_of_the_service_counter(
    redis_url: str, service_name: str
) -> None:
    """Three assignments carry the tokens 1, 2 and 3 from INCR <service>-fencing."""
    names = [f"{service_name}/s{n}" for n in range(3)]
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        added = await _assign(admin, consumer, service_name, names)
        counter = await admin.get(f"{service_name}-fencing")

    assert [1, 2, 3] == sorted(
        notification.fencing_token or 0 for notification in added
    )
    assert "3" == counter


async def test_claim_after_a_crash_gets_a_larger_token_than_the_dead_holder(
    redis_url: str, service_name: str
) -> None:
    """The consumer that takes over a crashed one's stream gets a larger token."""
    name = f"{service_name}/s"
    options = {"hb_interval": HB_INTERVAL, "lbs_idle_time": 1.0}
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        crashing = await ConsumerProcess.start(
            redis_url, service_name, consumer_id="crashing", **options
        )
        try:
            await add_stream(admin, service_name, name)
            added = await crashing.expect(type="StreamAdded", stream=name)
            async with running(_client(r, service_name, "heir")) as heir:
                crashing.kill()
                expired = await heir.wait(StreamExpired, name)
                token = await heir.client.claim(expired.payload)
        finally:
            await crashing.stop()

    assert added["token"] < token


async def test_fencing_token_of_a_held_stream_and_of_others(
    redis_url: str, service_name: str
) -> None:
    """fencing_token() gives a held stream's token, else DataStreamNotFoundError."""
    name = f"{service_name}/s"
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        [added] = await _assign(admin, consumer, service_name, [name])
        held = consumer.client.fencing_token(name)
        with pytest.raises(DataStreamNotFoundError) as never_held:
            consumer.client.fencing_token(f"{service_name}/other")
        await consumer.client.done_stream(name)
        with pytest.raises(DataStreamNotFoundError) as finished:
            consumer.client.fencing_token(name)

    assert added.fencing_token == held
    assert f"{service_name}/other" == never_held.value.data_stream
    assert name == finished.value.data_stream


async def test_finished_streams_leave_no_key_behind(
    redis_url: str, service_name: str
) -> None:
    """After done_stream only the LBS and the fencing counter remain."""
    names = [f"{service_name}/s{n}" for n in range(3)]
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        await _assign(admin, consumer, service_name, names)
        for name in names:
            await consumer.client.done_stream(name)
        keys = set(await admin.keys(f"{service_name}*"))
        entries = await admin.xlen(f"{service_name}-input")

    assert {f"{service_name}-input", f"{service_name}-fencing"} == keys
    assert 0 == entries
