"""The server setting lock expiry events need, and hearing them in any database.

Every test here changes a server's configuration or users, so each runs on a
redis-server of its own.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest
import pytest_asyncio
import redis.asyncio
from _wait import next_notification, wait_for

from rsc_async import (
    MUTEX_KEY_SEP,
    ExistingKeyspaceConfigError,
    KeyspaceConfigError,
    LBSInfo,
    Notification,
    RedisStreamClient,
    StreamAdded,
    StreamExpired,
    add_stream,
)
from rsc_async.testing import RedisServer

SETTING = "notify-keyspace-events"
USER = "limited"
PASSWORD = "limited-pw"
GHOST = "redis-consumer-ghost"


@pytest_asyncio.fixture
async def admin(dedicated_redis: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """A client with every right on the test's own server."""
    client = redis.asyncio.Redis.from_url(dedicated_redis.url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


async def _flags(admin: redis.asyncio.Redis) -> str:
    reply = await admin.config_get(SETTING)
    return str(reply[SETTING])


async def _limited_url(
    admin: redis.asyncio.Redis, server: RedisServer, *commands: str
) -> str:
    """Create a user with every right except CONFIG, plus *commands*; its URL."""
    await admin.acl_setuser(
        USER,
        enabled=True,
        passwords=[f"+{PASSWORD}"],
        keys=["*"],
        channels=["*"],
        categories=["+@all"],
        commands=["-config", *commands],
    )
    return f"redis://{USER}:{PASSWORD}@{server.host}:{server.port}/0"


def _client(
    redis_client: redis.asyncio.Redis,
    service: str,
    *,
    force_config_override: bool = False,
) -> RedisStreamClient:
    return RedisStreamClient(
        redis_client,
        service,
        consumer_id="config-test",
        hb_interval=0.5,
        lbs_idle_time=1.0,
        force_config_override=force_config_override,
    )


async def _init_and_assign(
    url: str, admin: redis.asyncio.Redis, service: str
) -> Notification:
    """Start a client on *url*, add a stream, and return the first notification."""
    user_redis = redis.asyncio.Redis.from_url(url)
    try:
        async with _client(user_redis, service) as client:
            notifications = await client.init()
            await add_stream(admin, service, "session-1")
            return await next_notification(notifications, timeout=10.0)
    finally:
        await user_redis.aclose()


async def test_init_sets_kex_when_the_setting_is_empty(
    admin: redis.asyncio.Redis, service_name: str
) -> None:
    """A server publishing no keyspace events is set to the protocol's KEx."""
    assert "" == await _flags(admin)

    async with _client(admin, service_name) as client:
        await client.init()

    assert set("KEx") == set(await _flags(admin))


@pytest.mark.parametrize("flags", ["KEx", "AKE", "Kx", "KA", "gxKEl"])
async def test_init_leaves_a_setting_that_has_k_and_x(
    admin: redis.asyncio.Redis, service_name: str, flags: str
) -> None:
    """A setting that already yields keyspace expiry events is left as it is."""
    await admin.config_set(SETTING, flags)
    before = await _flags(admin)

    async with _client(admin, service_name) as client:
        await client.init()

    assert before == await _flags(admin)


@pytest.mark.parametrize("flags", ["Eg", "K", "Ex", "A", "E$"])
async def test_init_refuses_to_change_a_setting_that_lacks_k_or_x(
    admin: redis.asyncio.Redis, service_name: str, flags: str
) -> None:
    """Other flags without K and x raise and leave the setting untouched."""
    await admin.config_set(SETTING, flags)
    before = await _flags(admin)

    async with _client(admin, service_name) as client:
        with pytest.raises(ExistingKeyspaceConfigError) as caught:
            await client.init()

    assert before == caught.value.current
    assert "force_config_override" in str(caught.value)
    assert before == await _flags(admin)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("Eg", "EgKx"), ("K", "Kx"), ("Ex", "ExK"), ("A", "AK"), ("E$", "E$Kx")],
)
async def test_init_with_force_adds_k_and_x_and_keeps_other_flags(
    admin: redis.asyncio.Redis, service_name: str, flags: str, expected: str
) -> None:
    """force_config_override adds the missing flags and keeps the others."""
    await admin.config_set(SETTING, flags)

    async with _client(admin, service_name, force_config_override=True) as client:
        await client.init()

    assert set(expected) == set(await _flags(admin))


async def test_init_with_force_hears_expiries_after_adding_the_flags(
    admin: redis.asyncio.Redis, service_name: str
) -> None:
    """After force_config_override, a lock expiry does reach the client."""
    await admin.config_set(SETTING, "Eg")
    entry_id = await _ghost_entry(admin, service_name, "session-1", {"k": "v"})

    async with RedisStreamClient(
        admin,
        service_name,
        consumer_id="config-test",
        hb_interval=0.5,
        lbs_idle_time=30.0,
        force_config_override=True,
    ) as client:
        notifications = await client.init()
        await admin.set(f"session-1{MUTEX_KEY_SEP}{entry_id}", GHOST, px=300)
        notification = await next_notification(notifications, timeout=10.0)

    expected = StreamExpired(
        payload=LBSInfo(data_stream_name="session-1", id_in_lbs=entry_id),
        additional_info={"k": "v"},
    )
    assert expected == notification


async def test_init_works_for_a_user_refused_config_set_when_flags_are_present(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """A user that may only read the setting starts when the flags are there."""
    await admin.config_set(SETTING, "KEx")
    url = await _limited_url(admin, dedicated_redis, "+config|get")

    notification = await _init_and_assign(url, admin, service_name)

    assert isinstance(notification, StreamAdded)
    assert "session-1" == notification.payload.data_stream_name


async def test_flags_lost_and_not_restorable_are_reported_once_while_it_lasts(
    admin: redis.asyncio.Redis,
    dedicated_redis: RedisServer,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A check every few heartbeats that cannot restore the flags logs one ERROR."""
    await admin.config_set(SETTING, "KEx")
    url = await _limited_url(admin, dedicated_redis, "+config|get")
    user_redis = redis.asyncio.Redis.from_url(url)

    async def config_gets() -> int:
        stats = await admin.info("commandstats")
        return int(stats.get("cmdstat_config|get", {}).get("calls", 0))

    def errors() -> list[logging.LogRecord]:
        return [
            record
            for record in caplog.records
            if record.levelno == logging.ERROR and "expiry events are off" in record.msg
        ]

    try:
        async with _client(user_redis, service_name) as client:
            await client.init()
            await admin.config_set(SETTING, "")
            await wait_for(lambda: bool(errors()), timeout=10)
            after_first = await config_gets()

            async def checked_twice_more() -> bool:
                return await config_gets() >= after_first + 2

            await wait_for(checked_twice_more, timeout=15)
    finally:
        await user_redis.aclose()

    assert 1 == len(errors())


async def test_init_raises_for_a_user_refused_config_set_when_flags_are_absent(
    admin: redis.asyncio.Redis, dedicated_redis: RedisServer, service_name: str
) -> None:
    """Flags missing and CONFIG SET refused: init says how to enable them."""
    url = await _limited_url(admin, dedicated_redis, "+config|get")
    user_redis = redis.asyncio.Redis.from_url(url)

    try:
        async with _client(user_redis, service_name) as client:
            with pytest.raises(KeyspaceConfigError) as caught:
                await client.init()
    finally:
        await user_redis.aclose()

    assert KeyspaceConfigError is type(caught.value)
    assert SETTING in str(caught.value)
    assert "'KEx'" in str(caught.value)
    assert "" == await _flags(admin)


async def test_init_warns_and_works_when_config_get_is_refused_and_flags_present(
    admin: redis.asyncio.Redis,
    dedicated_redis: RedisServer,
    service_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A user refused every CONFIG command starts, with a warning about it."""
    caplog.set_level(logging.WARNING, logger="rsc_async")
    await admin.config_set(SETTING, "KEx")
    url = await _limited_url(admin, dedicated_redis)

    notification = await _init_and_assign(url, admin, service_name)

    assert isinstance(notification, StreamAdded)
    warnings = [
        record.getMessage()
        for record in caplog.records
        if record.name == "rsc_async" and record.levelno == logging.WARNING
    ]
    assert 1 == len([text for text in warnings if f"CONFIG GET {SETTING}" in text])


async def _ghost_entry(
    redis_client: redis.asyncio.Redis,
    service: str,
    name: str,
    info: dict[str, str],
) -> str:
    """Add an LBS entry and deliver it to a consumer that holds no client."""
    await redis_client.xgroup_create(
        f"{service}-input", f"{service}-group", id="$", mkstream=True
    )
    entry_id = await add_stream(redis_client, service, name, info)
    reply = await redis_client.xreadgroup(
        f"{service}-group", GHOST, {f"{service}-input": ">"}, count=1
    )
    assert 1 == len(cast(Any, reply)[0][1])
    return entry_id


async def test_client_on_db_3_hears_the_expiry_of_a_lock_in_db_3(
    dedicated_redis: RedisServer, service_name: str
) -> None:
    """The subscription follows the client's database, not database 0."""
    url = f"redis://{dedicated_redis.host}:{dedicated_redis.port}/3"
    db3 = redis.asyncio.Redis.from_url(url)
    try:
        info = {"user_id": "u-1"}
        entry_id = await _ghost_entry(db3, service_name, "session-db3", info)
        # lbs_idle_time is long so that startup recovery leaves the ghost's
        # entry alone: the expiry, not recovery, must bring it to the client.
        async with RedisStreamClient(
            db3,
            service_name,
            consumer_id="db3",
            hb_interval=0.5,
            lbs_idle_time=30.0,
        ) as client:
            notifications = await client.init()
            lock_key = f"session-db3{MUTEX_KEY_SEP}{entry_id}"
            await db3.set(lock_key, GHOST, px=300)
            notification = await next_notification(notifications, timeout=10.0)
    finally:
        await db3.aclose()

    expected = StreamExpired(
        payload=LBSInfo(data_stream_name="session-db3", id_in_lbs=entry_id),
        additional_info=info,
    )
    assert expected == notification
