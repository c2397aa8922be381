"""Carrying on through killed connections, restarts, a deleted LBS, outages,
a lost server setting, and the events of other services on the same server.

Each test breaks a redis-server of its own, so none of them disturbs another.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import pytest
import pytest_asyncio
import redis.asyncio
from _consumers import (
    GHOST,
    LBS_FIELD,
    Recorded,
    connected,
    expire_ghost_lock,
    ghost_entry,
    lock_holder,
    running,
)
from _wait import wait_for
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from rsc_async import (
    LBSInfo,
    LBSMessage,
    RedisStreamClient,
    RetryConfig,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    add_stream,
)
from rsc_async.testing import RedisServer
from rsc_async.testing.pytest_plugin import RedisServerFactory

HB_INTERVAL = 0.5
SETTING = "notify-keyspace-events"
PATIENT = RetryConfig(max_retries=-1, initial_delay=0.05, max_delay=0.2)
"""Retries that outlast any outage here, and retry soon after it ends."""


@pytest_asyncio.fixture
async def admin(dedicated_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """The test's own client of the test's own server."""
    async with connected(dedicated_redis.url, decode_responses=True) as client:
        yield client


def _client(r: redis.asyncio.Redis, service: str, **options: Any) -> RedisStreamClient:
    settings: dict[str, Any] = {
        "consumer_id": "survivor",
        "hb_interval": HB_INTERVAL,
        "lbs_idle_time": 1.0,
        "retry": PATIENT,
        **options,
    }
    return RedisStreamClient(r, service, **settings)


async def _assigned(
    admin: redis.asyncio.Redis, consumer: Recorded, service: str, name: str
) -> LBSInfo:
    """Add a stream to the LBS and wait until *consumer* is assigned it."""
    await add_stream(admin, service, name)
    added = await consumer.wait(StreamAdded, name)
    return added.payload


async def _held_throughout(
    admin: redis.asyncio.Redis, consumer: Recorded, info: LBSInfo, seconds: float
) -> list[tuple[str | None, int]]:
    """Sample the holder and PTTL of a lock for *seconds*; the odd samples.

    A sample is odd when the lock is not *consumer*'s or has no TTL left.
    """
    odd = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        holder, pttl = await lock_holder(admin, info), await admin.pttl(info.mutex_key)
        if consumer.client.id != holder or pttl <= 0:
            odd.append((holder, pttl))
        await anyio.sleep(0.05)
    return odd


async def _blocked_readers(admin: redis.asyncio.Redis) -> list[str]:
    """The ids of the connections blocked in XREADGROUP."""
    return [
        client["id"]
        for client in await admin.client_list(_type="normal")
        if "xreadgroup" == client["cmd"] and "b" in client["flags"]
    ]


async def _pubsub_ids(admin: redis.asyncio.Redis) -> set[str]:
    return {client["id"] for client in await admin.client_list(_type="pubsub")}


async def test_listener_resubscribes_after_its_connection_is_killed(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """After CLIENT KILL TYPE pubsub, a later expiry is still heard."""
    orphan = await ghost_entry(admin, service_name, "session-1")
    # No sweep: the expiry must come through the subscription.
    async with (
        connected(dedicated_redis.url) as r,
        running(_client(r, service_name, reconcile_interval=0)) as consumer,
    ):
        before = await _pubsub_ids(admin)
        assert 1 == await admin.client_kill_filter(_type="pubsub")

        async def resubscribed() -> bool:
            return bool((await _pubsub_ids(admin)) - before)

        await wait_for(resubscribed)
        await admin.set(orphan.mutex_key, GHOST, px=200)
        expired = await consumer.wait(StreamExpired, "session-1")

    assert orphan == expired.payload


async def test_subscription_the_redis_client_remade_is_followed_by_a_sweep(
    admin: redis.asyncio.Redis,
    dedicated_redis: RedisServer,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A subscription redis-py re-made by itself is noticed: one WARNING, a sweep."""
    orphan = await ghost_entry(admin, service_name, "session-1")

    async def orphaned() -> bool:
        rows = await admin.xpending_range(
            f"{service_name}-input", f"{service_name}-group", "-", "+", 1
        )
        return bool(rows) and int(rows[0]["time_since_delivered"]) > 2000 * HB_INTERVAL

    await wait_for(orphaned)
    # Retries let redis-py reconnect the killed subscription on its own; the
    # periodic sweep and startup recovery are kept far off.
    options = {"lbs_idle_time": 60.0, "reconcile_interval": 60.0}
    async with (
        connected(dedicated_redis.url, retry=Retry(NoBackoff(), 3)) as r,
        running(_client(r, service_name, **options)) as consumer,
    ):
        assert 1 == await admin.client_kill_filter(_type="pubsub")
        expired = await consumer.wait(StreamExpired, "session-1")

    assert orphan == expired.payload
    remade = [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING and "made anew" in record.getMessage()
    ]
    assert 1 == len(remade)


async def test_client_keeps_its_streams_when_its_connections_are_killed(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """After CLIENT KILL TYPE normal, locks are still extended and entries read."""
    async with (
        connected(dedicated_redis.url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        held = await _assigned(admin, consumer, service_name, "session-1")

        async def reader_and_heartbeat_connected() -> bool:
            # The reader blocks in XREADGROUP on one connection; the heartbeat
            # runs on another from the pool. Ours is the third.
            return 3 <= len(await admin.client_list(_type="normal"))

        await wait_for(reader_and_heartbeat_connected)
        assert 2 == await admin.client_kill_filter(_type="normal", skipme=True)

        odd = await _held_throughout(admin, consumer, held, 4 * HB_INTERVAL)
        later = await _assigned(admin, consumer, service_name, "session-2")

    assert [] == odd
    assert [] == consumer.of(StreamDisowned)
    assert "session-2" == later.data_stream_name


async def test_client_keeps_its_streams_when_the_server_forgets_its_scripts(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """After SCRIPT FLUSH, the scripts are loaded again and no lock is lost."""
    async with (
        connected(dedicated_redis.url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        held = await _assigned(admin, consumer, service_name, "session-1")
        assert await admin.script_flush()

        odd = await _held_throughout(admin, consumer, held, 4 * HB_INTERVAL)
        await consumer.client.done_stream("session-1")

    assert [] == odd
    assert [] == consumer.of(StreamDisowned)
    assert 0 == await admin.xlen(f"{service_name}-input")


async def test_client_carries_on_after_a_redis_restart_with_aof(
    redis_server_factory: RedisServerFactory, service_name: str
) -> None:
    """A restart shorter than the TTL: streams stay held, new ones are assigned."""
    server = redis_server_factory("--appendonly", "yes")
    # A TTL of 2 s leaves room for the restart and the reconnections after it
    # even on a loaded machine.
    hb_interval = 2.0
    async with (
        connected(server.url, decode_responses=True) as admin,
        connected(server.url) as r,
        running(
            _client(r, service_name, hb_interval=hb_interval, lbs_idle_time=4.0)
        ) as consumer,
    ):
        held = await _assigned(admin, consumer, service_name, "session-1")
        # The event loop runs on while the server restarts, as it would with
        # the server on another machine.
        await anyio.to_thread.run_sync(server.restart)
        await admin.connection_pool.disconnect()

        odd = await _held_throughout(admin, consumer, held, hb_interval)
        later = await _assigned(admin, consumer, service_name, "session-2")

    assert [] == odd
    assert [] == consumer.of(StreamDisowned)
    assert "session-2" == later.data_stream_name


async def test_reader_recreates_the_group_after_the_lbs_is_deleted(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """After DEL of the LBS, the group comes back and later entries are assigned."""
    lbs = f"{service_name}-input"
    async with (
        connected(dedicated_redis.url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        await _assigned(admin, consumer, service_name, "session-1")
        assert 1 == await admin.delete(lbs)

        async def group_exists() -> bool:
            try:
                return 1 == len(await admin.xinfo_groups(lbs))
            except redis.ResponseError:
                return False

        await wait_for(group_exists)
        later = await _assigned(admin, consumer, service_name, "session-2")

    assert "session-2" == later.data_stream_name


async def test_entry_added_to_a_recreated_lbs_before_its_group_is_assigned(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """An entry of an LBS deleted and re-created by XADD is not skipped."""
    async with (
        connected(dedicated_redis.url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        await _assigned(admin, consumer, service_name, "session-1")
        # The producer's XADD re-creates the LBS, without a group, before the
        # reader can re-create the group: as after a restart without data.
        lbs = f"{service_name}-input"
        message = LBSMessage(data_stream_name="session-2").to_json()
        async with admin.pipeline(transaction=True) as pipe:
            pipe.delete(lbs)
            pipe.xadd(lbs, {LBS_FIELD: message})
            await pipe.execute()
        later = await consumer.wait(StreamAdded, "session-2")

    assert "session-2" == later.payload.data_stream_name


async def test_reader_outage_is_logged_once_at_warning_with_its_duration(
    dedicated_redis: RedisServer,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reader failing for a while logs one WARNING, with the outage's length."""
    caplog.set_level(logging.DEBUG, logger="rsc_async")
    # Without redis-py's own retries every failed read reaches the client.
    async with (
        connected(dedicated_redis.url, retry=Retry(NoBackoff(), 0)) as r,
        running(_client(r, service_name)) as consumer,
    ):
        # stop() and start() hold the event loop: the reader fails only after
        # the first returns and reads again only after the second.
        dedicated_redis.stop()
        stopped = time.monotonic()

        def read_failed_often() -> bool:
            return 3 <= len(_records(caplog, logging.DEBUG, "reading the LBS failed"))

        await wait_for(read_failed_often)
        down = time.monotonic() - stopped
        dedicated_redis.start()
        async with connected(dedicated_redis.url) as admin:
            await _assigned(admin, consumer, service_name, "session-1")

    [warning] = _records(caplog, logging.WARNING, "reading the LBS")
    seconds = re.search(r"failing for (\d+\.\d+) s", warning)
    assert seconds is not None, warning
    assert down <= float(seconds.group(1)) + 0.1


async def test_reader_outage_duration_leaves_out_the_blocking_read_after_it(
    admin: redis.asyncio.Redis,
    dedicated_redis: RedisServer,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A reader's connection killed once: the logged outage lasts a retry delay."""
    caplog.set_level(logging.WARNING, logger="rsc_async")
    async with (
        connected(dedicated_redis.url) as r,
        running(_client(r, service_name)) as consumer,
    ):
        await _assigned(admin, consumer, service_name, "session-1")

        async def reader_blocked() -> bool:
            return bool(await _blocked_readers(admin))

        await wait_for(reader_blocked)
        [reader] = await _blocked_readers(admin)
        assert 1 == await admin.client_kill_filter(_id=reader)

        def recovered() -> bool:
            return bool(_records(caplog, logging.WARNING, "reading the LBS"))

        # The read after the retry blocks for up to a second, then succeeds.
        await wait_for(recovered)

    [warning] = _records(caplog, logging.WARNING, "reading the LBS")
    seconds = re.search(r"failing for (\d+\.\d+) s", warning)
    assert seconds is not None, warning
    assert float(seconds.group(1)) < 0.5, warning


def _records(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "rsc_async"
        and level == record.levelno
        and text in record.getMessage()
    ]


def _expiry_flags_are_set(admin: redis.asyncio.Redis) -> Callable[[], Awaitable[bool]]:
    """A check that the server's setting yields lock expiry events."""

    async def expiry_flags_are_set() -> bool:
        flags = str((await admin.config_get(SETTING))[SETTING])
        return "K" in flags and ("x" in flags or "A" in flags)

    return expiry_flags_are_set


async def test_expiry_events_setting_cleared_by_hand_is_restored(
    admin: redis.asyncio.Redis,
    dedicated_redis: RedisServer,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A cleared notify-keyspace-events gets K and x back, with one WARNING."""
    caplog.set_level(logging.WARNING, logger="rsc_async")
    async with connected(dedicated_redis.url) as r, running(_client(r, service_name)):
        await admin.config_set(SETTING, "")
        # The setting is checked every 5 heartbeat intervals.
        await wait_for(_expiry_flags_are_set(admin), 10 * HB_INTERVAL + 2)

    assert 1 == len(_records(caplog, logging.WARNING, f"set {SETTING}"))


async def test_expiry_events_work_after_a_restart_lost_the_setting(
    redis_server_factory: RedisServerFactory, service_name: str
) -> None:
    """A restart forgets CONFIG SET; the client sets it again and hears expiries."""
    server = redis_server_factory("--appendonly", "yes")
    async with (
        connected(server.url, decode_responses=True) as admin,
        connected(server.url) as r,
        # No sweep: the expiry must come through the subscription.
        running(_client(r, service_name, reconcile_interval=0)) as consumer,
    ):
        orphan = await ghost_entry(admin, service_name, "session-1")
        await anyio.to_thread.run_sync(server.restart)
        await admin.connection_pool.disconnect()
        await wait_for(_expiry_flags_are_set(admin), 10 * HB_INTERVAL + 2)
        await admin.set(orphan.mutex_key, GHOST, px=200)
        expired = await consumer.wait(StreamExpired, "session-1")

    assert orphan == expired.payload


async def test_expiry_of_another_services_lock_on_the_same_entry_id_is_ignored(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """Entry ids repeat across services; another service's expiry is not ours."""
    other = f"{service_name}-other"
    same_id = "5-0"
    for service, name in ((service_name, "ours"), (other, "theirs")):
        lbs, group = f"{service}-input", f"{service}-group"
        await admin.xgroup_create(lbs, group, id="$", mkstream=True)
        message = LBSMessage(data_stream_name=name).to_json()
        await admin.xadd(lbs, {LBS_FIELD: message}, id=same_id)
        await admin.xreadgroup(group, GHOST, {lbs: ">"})
    async with (
        connected(dedicated_redis.url) as r,
        running(_client(r, service_name, lbs_idle_time=30.0)) as consumer,
    ):
        theirs = LBSInfo(data_stream_name="theirs", id_in_lbs=same_id)
        await admin.set(theirs.mutex_key, GHOST, px=1)
        # Expiries arrive in order: once this one is told, theirs was handled.
        await expire_ghost_lock(admin, service_name, "marker")
        await consumer.wait(StreamExpired, "marker")

    assert [] == consumer.of(StreamExpired, "theirs")
