"""The reconciliation sweep: orphans whose expiry nobody heard are announced.

An orphan here is an entry pending for a consumer that never took its lock,
so no expiry event ever comes for it: only the sweep can bring it back.
"""

from __future__ import annotations

import time

import redis.asyncio
from _consumers import (
    connected,
    expire_ghost_lock,
    ghost_entry,
    lock_holder,
    running,
)
from _wait import wait_for

from rsc_async import RedisStreamClient, StreamExpired
from rsc_async.testing import RedisServer

HB_INTERVAL = 0.5
ORPHANED_AFTER = 2 * HB_INTERVAL
"""Idle time after which a pending entry without a lock is an orphan."""
RECONCILE_INTERVAL = 1.0


def _client(
    r: redis.asyncio.Redis, service: str, consumer_id: str, reconcile_interval: float
) -> RedisStreamClient:
    # Startup recovery would take the orphan over before any sweep: its idle
    # time is kept far away.
    return RedisStreamClient(
        r,
        service,
        consumer_id=consumer_id,
        hb_interval=HB_INTERVAL,
        lbs_idle_time=30.0,
        reconcile_interval=reconcile_interval,
    )


async def test_orphan_is_announced_to_every_consumer_and_can_be_claimed(
    redis_url: str, service_name: str
) -> None:
    """Both consumers hear of an orphan within a sweep interval; one claims it."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        orphan = await ghost_entry(admin, service_name, "session-1", {"k": "v"})
        made = time.monotonic()
        async with (
            running(_client(r, service_name, "a", RECONCILE_INTERVAL)) as a,
            running(_client(r, service_name, "b", RECONCILE_INTERVAL)) as b,
        ):
            timeout = ORPHANED_AFTER + 2 * RECONCILE_INTERVAL + 2.0
            heard_by_a = await a.wait(StreamExpired, "session-1", timeout)
            heard_by_b = await b.wait(StreamExpired, "session-1", timeout)
            waited = a.times(StreamExpired, "session-1")[0] - made

            token = await a.client.claim(heard_by_a.payload)
            holder = await lock_holder(admin, orphan)

    expected = StreamExpired(payload=orphan, additional_info={"k": "v"})
    assert expected == heard_by_a
    assert expected == heard_by_b
    # The first sweep after the entry became an orphan announced it; one
    # interval of slack for a loaded machine.
    assert waited < ORPHANED_AFTER + 2 * RECONCILE_INTERVAL
    assert 0 < token
    assert a.client.id == holder


async def test_sweep_runs_once_per_interval_across_the_service(
    redis_url: str, service_name: str
) -> None:
    """Two consumers sweep in turn: an unclaimed orphan is announced once a round."""
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        await ghost_entry(admin, service_name, "session-1")
        async with (
            running(_client(r, service_name, "a", RECONCILE_INTERVAL)) as a,
            running(_client(r, service_name, "b", RECONCILE_INTERVAL)) as b,
        ):
            rounds = 4
            timeout = ORPHANED_AFTER + (rounds + 2) * RECONCILE_INTERVAL + 3.0

            def both_heard_it_often() -> bool:
                return all(
                    rounds <= len(consumer.of(StreamExpired, "session-1"))
                    for consumer in (a, b)
                )

            await wait_for(both_heard_it_often, timeout)

    # Each round both consumers hear the one announcement; were each to sweep
    # on its own they would hear two a round, and four within two intervals.
    spans = [
        times[rounds - 1] - times[0]
        for times in (c.times(StreamExpired, "session-1") for c in (a, b))
    ]
    assert all((rounds - 1.5) * RECONCILE_INTERVAL < span for span in spans), spans


async def test_sweep_is_off_when_reconcile_interval_is_zero(
    redis_url: str, service_name: str
) -> None:
    """With reconcile_interval=0 an orphan is never announced."""
    control = f"{service_name}-control"
    async with (
        connected(redis_url, decode_responses=True) as admin,
        connected(redis_url) as r,
    ):
        await ghost_entry(admin, service_name, "session-1")
        await ghost_entry(admin, control, "session-control")
        async with (
            running(_client(r, service_name, "off", 0)) as off,
            running(_client(r, control, "on", RECONCILE_INTERVAL)) as on,
        ):
            # The same orphan, in a service that sweeps, is announced twice:
            # time enough for a sweep of the other service to have run.
            def control_announced_twice() -> bool:
                return 2 <= len(on.of(StreamExpired, "session-control"))

            timeout = ORPHANED_AFTER + 3 * RECONCILE_INTERVAL + 3.0
            await wait_for(control_announced_twice, timeout)

    assert [] == off.of(StreamExpired, "session-1")


async def test_consumers_re_subscribing_together_sweep_once(
    dedicated_redis: RedisServer, service_name: str
) -> None:
    """Every subscription killed at once: the orphan is announced once, not twice."""
    async with (
        connected(dedicated_redis.url, decode_responses=True) as admin,
        connected(dedicated_redis.url) as r,
    ):
        await ghost_entry(admin, service_name, "session-1")

        async def orphaned() -> bool:
            rows = await admin.xpending_range(
                f"{service_name}-input", f"{service_name}-group", "-", "+", 1
            )
            return int(rows[0]["time_since_delivered"]) > 1000 * ORPHANED_AFTER + 100

        await wait_for(orphaned)
        # The periodic sweep is kept far off: only the re-subscribes sweep.
        async with (
            running(_client(r, service_name, "a", 60.0)) as a,
            running(_client(r, service_name, "b", 60.0)) as b,
        ):
            assert 2 == await admin.client_kill_filter(_type="pubsub")

            def both_heard(name: str) -> bool:
                return all(c.of(StreamExpired, name) for c in (a, b))

            await wait_for(lambda: both_heard("session-1"))
            # A second sweep would follow the first within milliseconds; what
            # it announced would be heard before this later expiry.
            await expire_ghost_lock(admin, service_name, "marker")
            await wait_for(lambda: both_heard("marker"))

    assert [1, 1] == [len(c.of(StreamExpired, "session-1")) for c in (a, b)]
