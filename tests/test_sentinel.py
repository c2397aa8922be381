"""The client behind Redis Sentinel: a primary, a replica and three sentinels.

The consumers' Redis is a sentinel ``master_for`` client, so after a failover
they reconnect to whichever server the sentinels name as the primary.

A forced failover leaves the old primary serving as a primary until the
sentinels make it a replica, some ten seconds later, and cut its connections.
Until then a consumer is split: connections it opens go to the new primary,
those it keeps open stay on the old one, and the locks it holds may run out on
the new primary. The heartbeat then reports each lost lock, and the
reconciliation sweep announces the stream for another consumer to claim.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio
from _consumers import GHOST, Recorded, connected, ghost_entry, lock_holder, running
from _wait import wait_for
from redis.asyncio.sentinel import Sentinel

from rsc_async import (
    AlreadyClaimedError,
    RedisStreamClient,
    RetryConfig,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    StreamTerminated,
    add_stream,
)
from rsc_async.testing import RedisSentinelServers, RedisUnavailableError

HB_INTERVAL = 2.0
"""The lock TTL: a quick switch of primary need not cost the locks, though the
split after a forced failover usually does."""

PATIENT = RetryConfig(max_retries=-1, initial_delay=0.05, max_delay=0.5)
"""Retries that outlast the failover, and retry soon after it."""

SOCKET_TIMEOUT = 2.0
"""Seconds redis-py waits for a reply, from the sentinels and the primary."""

FAILOVER_WAIT = 45.0
"""Seconds for the consumers to be back on the new primary: the sentinels
demote the old primary some ten seconds after the failover, and a loaded
machine may take a while longer."""


@pytest.fixture
def sentinels() -> Iterator[RedisSentinelServers]:
    """A primary, its replica and three sentinels, owned by the test."""
    try:
        servers = RedisSentinelServers().start()
    except RedisUnavailableError as exc:
        pytest.skip(f"the sentinel tests start their own redis-server: {exc}")
    yield servers
    servers.stop()


@contextlib.asynccontextmanager
async def _primary_of(
    servers: RedisSentinelServers, *, decode_responses: bool = False
) -> AsyncIterator[redis.asyncio.Redis]:
    """A client of whichever server the sentinels name as the primary."""
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        servers.sentinel_addresses, socket_timeout=SOCKET_TIMEOUT
    )
    primary = sentinel.master_for(
        servers.master_name,
        socket_timeout=SOCKET_TIMEOUT,
        decode_responses=decode_responses,
    )
    try:
        yield primary
    finally:
        await primary.aclose()
        for client in sentinel.sentinels:
            await client.aclose()


@contextlib.asynccontextmanager
async def _consumer(
    servers: RedisSentinelServers, service: str, name: str
) -> AsyncIterator[Recorded]:
    """A running client named *name* on its own sentinel ``master_for`` client."""
    async with _primary_of(servers) as primary:
        client = RedisStreamClient(
            primary,
            service,
            consumer_id=name,
            hb_interval=HB_INTERVAL,
            # Also the period of the reconciliation sweep, which announces the
            # streams whose locks ran out where no consumer could hear it.
            lbs_idle_time=2 * HB_INTERVAL,
            retry=PATIENT,
        )
        async with running(client) as consumer:
            yield consumer


async def _named_primaries(servers: RedisSentinelServers) -> set[tuple[str, int]]:
    """The primary's address as each sentinel reports it."""
    named = set()
    for host, port in servers.sentinel_addresses:
        url = f"redis://{host}:{port}"
        async with connected(url, decode_responses=True) as sentinel:
            address = await sentinel.sentinel_get_master_addr_by_name(
                servers.master_name
            )
        assert isinstance(address, tuple)
        named_host, named_port = address
        assert isinstance(named_host, str)
        named.add((named_host, named_port))
    return named


async def _replicated(url: str, key: str) -> None:
    """Wait until the replica of the server at *url* has every write made so far.

    WAIT counts the acknowledgements of the writes of its own connection, so a
    write goes first on the same connection.
    """
    async with connected(url) as primary:

        async def acknowledged() -> bool:
            async with primary.pipeline(transaction=False) as pipe:
                pipe.incr(key)
                pipe.wait(1, 1000)
                _, replicas = await pipe.execute()
            return 1 == int(replicas)

        await wait_for(acknowledged, timeout=10.0)


async def _fail_over(servers: RedisSentinelServers) -> tuple[str, int]:
    """Force a failover; return the new primary once every sentinel names it."""
    [old] = await _named_primaries(servers)
    host, port = servers.sentinel_addresses[0]
    async with connected(f"redis://{host}:{port}") as sentinel:
        assert await sentinel.sentinel_failover(servers.master_name)

    async def switched() -> bool:
        named = await _named_primaries(servers)
        return 1 == len(named) and old not in named

    await wait_for(switched, timeout=15.0, interval=0.1)
    [new] = await _named_primaries(servers)
    return new


async def _listening(primary: redis.asyncio.Redis, subscribers: int) -> bool:
    """Whether *subscribers* clients subscribe to a pattern on *primary* and it
    publishes lock expiries."""
    clients = await primary.client_list()
    subscribed = sum(1 for client in clients if int(client["psub"]) > 0)
    setting = await primary.config_get("notify-keyspace-events")
    flags = str(setting["notify-keyspace-events"])
    return subscribed >= subscribers and "K" in flags and ("x" in flags or "A" in flags)


async def _take_over(consumer: Recorded, name: str, timeout: float) -> None:
    """Claim *name* as a service does: at each StreamExpired about it, try."""
    deadline = time.monotonic() + timeout
    tried = 0
    while True:

        def announced(count: int = tried) -> bool:
            return count < len(consumer.of(StreamExpired, name))

        announced.__name__ = f"StreamExpired about {name!r} arrived"
        await wait_for(announced, timeout=max(0.0, deadline - time.monotonic()))
        expired = consumer.of(StreamExpired, name)[tried]
        tried += 1
        try:
            await consumer.client.claim(expired.payload)
        except AlreadyClaimedError:
            # The sweep held the lock for its millisecond; it announces again.
            continue
        return


def _assigned(consumers: list[Recorded], name: str) -> list[Recorded]:
    return [consumer for consumer in consumers if consumer.of(StreamAdded, name)]


async def test_consumers_are_assigned_streams_through_the_sentinels_primary(
    sentinels: RedisSentinelServers, service_name: str
) -> None:
    """Streams added through the sentinels' primary go to one consumer each."""
    names = [f"session-{number}" for number in range(4)]
    async with (
        _primary_of(sentinels, decode_responses=True) as producer,
        _consumer(sentinels, service_name, "a") as a,
        _consumer(sentinels, service_name, "b") as b,
        connected(sentinels.primary.url, decode_responses=True) as primary,
    ):
        for name in names:
            await add_stream(producer, service_name, name)

        def all_assigned() -> bool:
            return all(_assigned([a, b], name) for name in names)

        await wait_for(all_assigned, timeout=10.0)
        owners = {name: _assigned([a, b], name) for name in names}
        holders = {}
        for name in names:
            [added] = owners[name][0].of(StreamAdded, name)
            holders[name] = await lock_holder(primary, added.payload)
        for name in names:
            await owners[name][0].client.done_stream(name)
        pending = await primary.xpending(
            f"{service_name}-input", f"{service_name}-group"
        )
        length = await primary.xlen(f"{service_name}-input")

    assert dict.fromkeys(names, 1) == {n: len(o) for n, o in owners.items()}
    assert {name: owners[name][0].client.id for name in names} == holders
    assert 0 == pending["pending"]
    assert 0 == length


async def test_consumers_follow_a_failover_and_finish_every_stream_once(
    sentinels: RedisSentinelServers, service_name: str
) -> None:
    """After a failover the consumers use the new primary and lose no stream."""
    held = [f"held-{number}" for number in range(4)]
    later = [f"later-{number}" for number in range(2)]
    finished: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        a = await stack.enter_async_context(_consumer(sentinels, service_name, "a"))
        async with _primary_of(sentinels) as producer:
            for name in held:
                await add_stream(producer, service_name, name)
            for name in held:
                await a.wait(StreamAdded, name, timeout=10.0)
        b = await stack.enter_async_context(_consumer(sentinels, service_name, "b"))
        await _replicated(sentinels.primary.url, f"{service_name}-replicated")

        host, port = await _fail_over(sentinels)

        # A client made now asks the sentinels, so it writes to the new primary.
        producer = await stack.enter_async_context(
            _primary_of(sentinels, decode_responses=True)
        )
        primary = await stack.enter_async_context(
            connected(f"redis://{host}:{port}/0", decode_responses=True)
        )
        for name in later:
            await add_stream(producer, service_name, name)

        def later_assigned() -> bool:
            return all(_assigned([a, b], name) for name in later)

        await wait_for(later_assigned, timeout=FAILOVER_WAIT, interval=0.1)

        async def both_listening() -> bool:
            return await _listening(primary, 2)

        both_listening.__name__ = (
            "both consumers subscribed on the new primary, which publishes expiries"
        )
        await wait_for(both_listening, timeout=FAILOVER_WAIT, interval=0.1)
        ghost = await ghost_entry(producer, service_name, "ghost")
        await producer.set(ghost.mutex_key, GHOST, px=300)
        heard_by_a = await a.wait(StreamExpired, "ghost", timeout=10.0)
        heard_by_b = await b.wait(StreamExpired, "ghost", timeout=10.0)
        await _take_over(b, "ghost", timeout=10.0)

        async def settled() -> bool:
            # Each stream A held is A's on the new primary, or A was told it
            # lost it: a lock is never lost without a word.
            lost = {n.payload.data_stream_name for n in a.of(StreamDisowned)}
            for name in held:
                [added] = a.of(StreamAdded, name)
                holder = await lock_holder(primary, added.payload)
                if name not in lost and a.client.id != holder:
                    return False
            return True

        await wait_for(settled, timeout=FAILOVER_WAIT, interval=0.1)
        disowned = sorted(n.payload.data_stream_name for n in a.of(StreamDisowned))
        for name in held:
            if name in disowned:
                await _take_over(b, name, timeout=FAILOVER_WAIT)
                await b.client.done_stream(name)
            else:
                await a.client.done_stream(name)
            finished.append(name)
        for name in later:
            [owner] = _assigned([a, b], name)
            await owner.client.done_stream(name)
            finished.append(name)
        await b.client.done_stream("ghost")
        finished.append("ghost")

        pending = await primary.xpending(
            f"{service_name}-input", f"{service_name}-group"
        )
        length = await primary.xlen(f"{service_name}-input")
        held_after = [*a.client.held_streams, *b.client.held_streams]
        terminated = [n for n in [*a.seen, *b.seen] if isinstance(n, StreamTerminated)]

    assert ghost == heard_by_a.payload == heard_by_b.payload
    assert set(disowned) <= set(held)
    assert sorted([*held, *later, "ghost"]) == sorted(finished)
    assert 0 == pending["pending"]
    assert 0 == length
    assert [] == held_after
    assert [] == terminated
