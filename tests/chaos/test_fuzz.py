"""Whatever other programs leave in Redis, the client raises only what it documents.

Everything the client parses comes from Redis, and anyone can write there: a
producer in another language fills the LBS, any client can PUBLISH on the
keyspace channels, entries sit pending under any consumer name. Each test
feeds arbitrary values of one kind, through the parser or through a real
server, and checks that the outcome is a usable value or a documented error.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any, cast
from uuid import uuid4

import anyio
import pytest
import redis.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rsc_async import (
    MUTEX_KEY_SEP,
    AlreadyClaimedError,
    InvalidLBSMessageError,
    LBSInfo,
    LBSMessage,
    PoisonStreamError,
    RedisCommandError,
    RedisStreamClient,
    StreamAdded,
    StreamExpired,
    StreamTerminated,
    add_stream,
)
from rsc_async.testing import RedisServer, find_redis_server

LBS_FIELD = "lbs-input"

# Text as JSON spells it, including escapes of lone surrogates, which decode
# to Python strings that no Redis key can hold.
_surrogate_escapes = st.from_regex(r"\\u[dD][89abAB][0-9a-fA-F]{2}", fullmatch=True)
_names = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", MUTEX_KEY_SEP, f"a{MUTEX_KEY_SEP}b", " "]),
)
_name_bodies = st.one_of(
    _names.map(lambda name: json.dumps(name)[1:-1]),
    st.lists(_surrogate_escapes | st.just("x"), min_size=1, max_size=3).map("".join),
)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


def _entry_json(name_body: str, info: Any, with_info: bool) -> str:
    info_part = f', "Info": {json.dumps(info)}' if with_info else ""
    return f'{{"DataStreamName": "{name_body}"{info_part}}}'


_values = st.one_of(
    st.builds(_entry_json, _name_bodies, _json, st.booleans()),
    _json.map(json.dumps),
    st.text(max_size=30),
)
_raw_values = _values.map(str.encode) | st.binary(max_size=30)
_field_names = st.sampled_from([LBS_FIELD, LBS_FIELD.encode()]) | st.binary(max_size=6)
_fields = st.dictionaries(_field_names, _values | _raw_values, max_size=3)


@given(fields=st.none() | _fields, entry_id=st.text(min_size=1, max_size=12))
@settings(max_examples=400)
def test_from_entry_gives_a_usable_message_or_the_protocol_error(
    fields: dict[Any, Any] | None, entry_id: str
) -> None:
    """Any fields give a message whose name can be a Redis key, or the error."""
    outcome: LBSMessage | InvalidLBSMessageError
    try:
        outcome = LBSMessage.from_entry(entry_id, fields)
    except InvalidLBSMessageError as exc:
        outcome = exc

    if isinstance(outcome, InvalidLBSMessageError):
        assert entry_id == outcome.entry_id
        assert outcome.reason
    else:
        assert outcome.data_stream_name
        assert MUTEX_KEY_SEP not in outcome.data_stream_name
        assert outcome.data_stream_name.encode()
        assert isinstance(outcome.info, dict)


_any_text = st.text(
    alphabet=st.characters(categories=["L", "N", "P", "S", "Z", "C"]), max_size=30
)


@given(
    key=st.one_of(
        _any_text,
        st.builds(lambda a, b: f"{a}{MUTEX_KEY_SEP}{b}", _any_text, _any_text),
    )
)
@settings(max_examples=400)
def test_from_mutex_key_parses_any_text_back_or_raises_value_error(key: str) -> None:
    """A channel's key parses into a lock identity that rebuilds it, or fails."""
    try:
        info = LBSInfo.from_mutex_key(key)
    except ValueError:
        return

    assert key == info.mutex_key


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[RedisServer]:
    """A server of this module's own: it receives junk keyspace messages."""
    if find_redis_server() is None:
        pytest.skip("the fuzz tests start their own redis-server; none found")
    with RedisServer() as server:
        yield server


REDIS_FUZZ = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

_consumer_names = st.binary(min_size=1, max_size=12).filter(
    lambda name: name != b"redis-consumer-fuzz"
)
_entry_fields = st.dictionaries(_field_names, _raw_values, min_size=1, max_size=3)


@given(pending=st.lists(st.tuples(_consumer_names, _entry_fields), max_size=6))
@REDIS_FUZZ
def test_startup_recovery_of_any_pending_entries_announces_or_sets_aside_each(
    fuzz_server: RedisServer, pending: list[tuple[bytes, dict[Any, Any]]]
) -> None:
    """Every pending entry is announced once or set aside; nothing else escapes."""
    asyncio.run(_recover(fuzz_server.url, pending))


async def _recover(url: str, pending: list[tuple[bytes, dict[Any, Any]]]) -> None:
    service = f"fuzz-{uuid4().hex[:8]}"
    lbs, group = f"{service}-input", f"{service}-group"
    r = redis.asyncio.Redis.from_url(url)
    try:
        await r.xgroup_create(lbs, group, id="0", mkstream=True)
        ids = []
        for consumer, fields in pending:
            entry_id = _text(await r.xadd(lbs, fields))
            # Consumer names are bytes as the server keeps them; redis-py
            # sends bytes as they are.
            name = cast(str, consumer)
            await r.xreadgroup(group, name, {lbs: ">"}, count=1)
            # Backdate the delivery, as if its consumer had died long ago.
            await r.xclaim(lbs, group, name, 0, [entry_id], idle=60_000, justid=True)
            ids.append(entry_id)
        # What the client will parse is what the server hands back.
        expected_names = {}
        for raw_id, raw_fields in await r.xrange(lbs) or []:
            read_id = _text(raw_id or b"")
            try:
                message = LBSMessage.from_entry(read_id, raw_fields)
            except InvalidLBSMessageError:
                continue
            expected_names[read_id] = message.data_stream_name
        async with RedisStreamClient(
            r, service, consumer_id="fuzz", hb_interval=1.0, lbs_idle_time=30.0
        ) as client:
            notifications = await client.init()
            # Set-up set the bad entries aside and queued the rest.
            dead = {
                _text((fields or {})[b"entry_id"])
                for _, fields in await r.xrange(f"{service}-dead") or []
            }
            with anyio.fail_after(5):
                added = [await notifications.__anext__() for _ in set(ids) - dead]
            held = {info.id_in_lbs for info in client.held_streams}
    finally:
        await r.aclose()

    streams = [n.payload for n in added if isinstance(n, StreamAdded)]
    assert len(added) == len(streams)
    announced = {info.id_in_lbs: info.data_stream_name for info in streams}
    assert set(ids) == set(announced) | dead
    assert set(announced) == held
    for entry_id, name in announced.items():
        assert expected_names[entry_id] == name


def _text(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


_keys = st.one_of(
    st.builds(lambda a, b: f"{a}{MUTEX_KEY_SEP}{b}", _any_text, _any_text),
    st.builds(
        lambda a, b: a + MUTEX_KEY_SEP.encode() + b,
        st.binary(max_size=10),
        st.binary(max_size=10),
    ),
    st.sampled_from([MUTEX_KEY_SEP, MUTEX_KEY_SEP * 2, f"s{MUTEX_KEY_SEP}0-1"]),
)
_events = st.sampled_from(["expired", "del", "set"]) | st.binary(max_size=8)


@given(messages=st.lists(st.tuples(_keys, _events), min_size=1, max_size=8))
@REDIS_FUZZ
def test_any_keyspace_message_gives_claimable_notifications_or_none(
    fuzz_server: RedisServer, messages: list[tuple[str | bytes, str | bytes]]
) -> None:
    """Junk on the keyspace channels never stops the client; claims fail cleanly."""
    asyncio.run(_publish(fuzz_server.url, messages))


async def _publish(url: str, messages: list[tuple[str | bytes, str | bytes]]) -> None:
    service = f"fuzz-{uuid4().hex[:8]}"
    lbs, group = f"{service}-input", f"{service}-group"
    # Lone surrogates go out as the bytes Python would spell them: not UTF-8.
    published = [
        (key.encode(errors="surrogatepass") if isinstance(key, str) else key, event)
        for key, event in messages
    ]
    r = redis.asyncio.Redis.from_url(url)
    try:
        # A real entry whose holder is gone: its expiry, published last, marks
        # the end of what the listener has to get through.
        await r.xgroup_create(lbs, group, id="0", mkstream=True)
        marker_id = await add_stream(r, service, "marker")
        await r.xreadgroup(group, "ghost", {lbs: ">"}, count=1)
        marker = LBSInfo(data_stream_name="marker", id_in_lbs=marker_id)
        async with RedisStreamClient(
            r,
            service,
            consumer_id="fuzz",
            hb_interval=1.0,
            lbs_idle_time=30.0,
            reconcile_interval=0,
        ) as client:
            notifications = await client.init()
            channel = b"__keyspace@0__:"
            for key, event in published:
                await r.publish(channel + key, event)
            await r.publish(channel + marker.mutex_key.encode(), "expired")
            seen = []
            with anyio.fail_after(5):
                async for notification in notifications:
                    seen.append(notification)
                    if notification.payload == marker:
                        break
            for notification in seen:
                if isinstance(notification, StreamExpired):
                    await _claim(client, notification.payload)
    finally:
        await r.aclose()

    assert [] == [n for n in seen if isinstance(n, StreamTerminated)]
    # What the listener can hear: each channel as the server hands it back.
    heard = {
        LBSInfo.from_mutex_key(_text(key))
        for key, event in published
        if _parses(key) and _text(event) == "expired"
    }
    assert {n.payload for n in seen if isinstance(n, StreamExpired)} <= heard | {marker}


def _parses(key: str | bytes) -> bool:
    try:
        LBSInfo.from_mutex_key(_text(key))
    except ValueError:
        return False
    return True


async def _claim(client: RedisStreamClient, info: LBSInfo) -> None:
    """Claim *info*; a documented refusal is as good as success."""
    try:
        await client.claim(info)
    except (
        AlreadyClaimedError,
        InvalidLBSMessageError,
        PoisonStreamError,
        RedisCommandError,
    ):
        return
