"""Assignment of data streams from the LBS, finishing them, and the iterator's life."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import anyio
import pytest
import redis.asyncio
from _wait import next_notification, wait_for
from redis.typing import EncodableT

from rsc_async import (
    MUTEX_KEY_SEP,
    DataStreamNotFoundError,
    LBSInfo,
    Notification,
    Notifications,
    RedisStreamClient,
    StreamAdded,
    add_stream,
)


def _client(
    redis_client: redis.asyncio.Redis, service: str, consumer_id: str, **options: Any
) -> RedisStreamClient:
    return RedisStreamClient(
        redis_client,
        service,
        consumer_id=consumer_id,
        hb_interval=0.5,
        lbs_idle_time=1.0,
        **options,
    )


async def _collect(notifications: Notifications, into: list[Notification]) -> None:
    async for notification in notifications:
        into.append(notification)


def _added(notifications: list[Notification]) -> dict[str, tuple[str, dict[str, Any]]]:
    """Entry id and info of each StreamAdded, by data stream name."""
    added = {}
    for notification in notifications:
        assert isinstance(notification, StreamAdded)
        payload = notification.payload
        added[payload.data_stream_name] = (
            payload.id_in_lbs,
            notification.additional_info,
        )
    return added


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


async def test_two_consumers_share_the_streams_and_each_is_assigned_once(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """Two consumers split the added streams; each goes to one, with its Info."""
    received: dict[str, list[Notification]] = {"a": [], "b": []}
    expected: dict[str, tuple[str, dict[str, Any]]] = {}
    async with (
        _client(redis_client, service_name, "a") as a,
        _client(redis_client, service_name, "b") as b,
        anyio.create_task_group() as tasks,
    ):
        tasks.start_soon(_collect, await a.init(), received["a"])
        tasks.start_soon(_collect, await b.init(), received["b"])
        # One at a time, so that each read finds the other consumer waiting.
        for i in range(10):
            name, info = f"session-{i}", {"user": f"u-{i}", "n": i}
            expected[name] = (
                await add_stream(redis_client, service_name, name, info),
                info,
            )
            await wait_for(lambda: len(expected) == sum(map(len, received.values())))
        tasks.cancel_scope.cancel()

    by_a, by_b = _added(received["a"]), _added(received["b"])
    assert 10 == len(received["a"]) + len(received["b"])
    assert expected == by_a | by_b
    assert set() == by_a.keys() & by_b.keys()
    assert by_a
    assert by_b


async def test_no_notification_arrives_before_anything_is_added(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """A consumer of an empty LBS hears nothing."""
    received = []
    async with _client(redis_client, service_name, "a") as client:
        notifications = await client.init()
        with anyio.move_on_after(1.0):
            received.append(await anext(notifications))

    assert [] == received


async def test_done_stream_removes_the_entry_and_the_lock(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """done_stream acknowledges and deletes the LBS entry and deletes the lock."""
    async with _client(redis_client, service_name, "a") as client:
        notifications = await client.init()
        entry_id = await add_stream(redis_client, service_name, "session-1")
        added = await next_notification(notifications)
        assert isinstance(added, StreamAdded)
        lock = added.payload.mutex_key
        assert f"session-1{MUTEX_KEY_SEP}{entry_id}" == lock
        assert b"redis-consumer-a" == await redis_client.get(lock)
        assert [entry_id] == await _entry_ids(redis_client, service_name)
        assert [entry_id] == await _pending_ids(redis_client, service_name)

        await client.done_stream("session-1")

        assert [] == await _entry_ids(redis_client, service_name)
        assert [] == await _pending_ids(redis_client, service_name)
        assert 0 == await redis_client.exists(lock)
        assert [] == list(client.held_streams)


async def test_done_stream_of_a_stream_not_held_raises_not_found(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """done_stream of a name this consumer does not hold raises."""
    async with _client(redis_client, service_name, "a") as client:
        await client.init()
        with pytest.raises(DataStreamNotFoundError):
            await client.done_stream("session-unknown")


BAD_ENTRIES = [
    pytest.param({"other-field": "x"}, id="no-lbs-input-field"),
    pytest.param({"lbs-input": "not json {"}, id="not-json"),
    pytest.param({"lbs-input": "[1, 2]"}, id="not-an-object"),
    pytest.param({"lbs-input": json.dumps({"Info": {"k": "v"}})}, id="no-name"),
    pytest.param({"lbs-input": json.dumps({"DataStreamName": ""})}, id="empty-name"),
    pytest.param(
        {"lbs-input": json.dumps({"DataStreamName": f"s{MUTEX_KEY_SEP}1"})},
        id="name-with-separator",
    ),
]


@pytest.mark.parametrize("fields", BAD_ENTRIES)
async def test_bad_entry_goes_to_the_dead_letters_and_good_ones_are_assigned(
    redis_client: redis.asyncio.Redis,
    service_name: str,
    fields: dict[EncodableT, EncodableT],
) -> None:
    """A bad LBS entry is dead-lettered, acked and deleted; its neighbours are not."""
    async with _client(redis_client, service_name, "a") as client:
        notifications = await client.init()
        before = await add_stream(redis_client, service_name, "before", {"k": 1})
        bad = _text(await redis_client.xadd(f"{service_name}-input", fields))
        after = await add_stream(redis_client, service_name, "after", {"k": 2})
        received = [await next_notification(notifications) for _ in range(2)]

        expected_added = {"before": (before, {"k": 1}), "after": (after, {"k": 2})}
        assert expected_added == _added(received)
        dead = await redis_client.xrange(f"{service_name}-dead") or []
        assert 1 == len(dead)
        record = {_text(key): _text(value) for key, value in (dead[0][1] or {}).items()}
        assert record.pop("reason")
        expected_record = {"entry_id": bad, "consumer": "redis-consumer-a"}
        if "lbs-input" in fields:
            expected_record["lbs-input"] = _text(fields["lbs-input"])
        assert expected_record == record
        assert [before, after] == await _entry_ids(redis_client, service_name)
        assert [before, after] == await _pending_ids(redis_client, service_name)


async def test_bytes_that_are_not_text_are_dead_lettered_by_a_decoding_client(
    redis_url: str, redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """With decode_responses=True, an entry that is not UTF-8 is set aside intact."""
    raw = b'{"DataStreamName": "a\xffb"}'
    decoding = redis.asyncio.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with _client(decoding, service_name, "a") as client:
            notifications = await client.init()
            bad = _text(
                await redis_client.xadd(f"{service_name}-input", {"lbs-input": raw})
            )
            good = await add_stream(redis_client, service_name, "good")
            added = await next_notification(notifications)
    finally:
        await decoding.aclose()

    assert LBSInfo(data_stream_name="good", id_in_lbs=good) == added.payload
    dead = await redis_client.xrange(f"{service_name}-dead") or []
    record = dead[0][1] or {}
    assert [bad] == [_text(record[b"entry_id"])]
    assert raw == record[b"lbs-input"]


async def test_iterating_init_without_awaiting_it_starts_the_client(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """`async for n in client.init()` starts the client and yields its news."""
    received = []

    async def read_one(client: RedisStreamClient) -> None:
        async for notification in client.init():
            received.append(notification)
            return

    async def lbs_exists() -> bool:
        return 1 == await redis_client.exists(f"{service_name}-input")

    async with _client(redis_client, service_name, "a") as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read_one, client)
                # The LBS appears with the consumer group, as the client starts.
                await wait_for(lbs_exists)
                entry_id = await add_stream(redis_client, service_name, "session-1")

    assert {"session-1": (entry_id, {})} == _added(received)


async def test_init_in_one_task_and_done_in_another_ends_the_iteration(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """done() from another task ends the iteration started by init()."""
    client = _client(redis_client, service_name, "a")
    received: list[Notification] = []
    started = anyio.Event()

    async def consume() -> None:
        notifications = await client.init()
        started.set()
        await _collect(notifications, received)

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(consume)
                await started.wait()
                entry_id = await add_stream(redis_client, service_name, "session-1")
                await wait_for(lambda: 1 == len(received))
                await client.done()
    finally:
        await client.done()

    assert {"session-1": (entry_id, {})} == _added(received)
    assert [] == await _entry_ids(redis_client, service_name)


async def test_done_during_init_leaves_no_task_running(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """done() called while init() is setting up leaves nothing running."""
    before = asyncio.all_tasks()
    client = _client(redis_client, service_name, "a")
    with anyio.fail_after(15):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_init, client)
            # Let init() send its first command, then stop the client under it.
            await asyncio.sleep(0)
            await client.done()

        assert before == asyncio.all_tasks()
        with pytest.raises(StopAsyncIteration):
            await anext(client.init())


async def _init(client: RedisStreamClient) -> None:
    await client.init()


async def test_done_is_idempotent_and_ends_a_waiting_iteration(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """done() twice is fine; a reader waiting for news sees the iteration end."""
    client = _client(redis_client, service_name, "a")
    received: list[Notification] = []
    try:
        notifications = await client.init()
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_collect, notifications, received)
                await add_stream(redis_client, service_name, "session-1")
                await wait_for(lambda: 1 == len(received))
                await client.done()
                await client.done()
            with pytest.raises(StopAsyncIteration):
                await anext(notifications)
    finally:
        await client.done()

    assert ["session-1"] == list(_added(received))


async def test_notifications_buffered_before_done_are_read_then_the_iteration_ends(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """What was queued before done() still comes out, then StopAsyncIteration."""
    names = ["session-1", "session-2", "session-3"]
    client = _client(redis_client, service_name, "a")
    try:
        notifications = await client.init()
        for name in names:
            await add_stream(redis_client, service_name, name)
        await wait_for(lambda: 3 == len(client.held_streams))
        await client.done()

        with anyio.fail_after(5):
            received = [notification async for notification in notifications]
    finally:
        await client.done()

    assert names == list(_added(received))
