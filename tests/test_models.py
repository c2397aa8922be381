"""Protocol values: LBS entries, lock keys, notifications and the producer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, cast

import pytest
import redis.asyncio
from hypothesis import given
from hypothesis import strategies as st

from rsc_async import (
    MUTEX_KEY_SEP,
    InvalidLBSMessageError,
    InvalidOptionError,
    LBSInfo,
    LBSMessage,
    NotificationType,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    StreamTerminated,
    add_stream,
)
from rsc_async._models import Notification, notification_adapter

ENTRY_ID = "1700000000000-0"

Fields = Mapping[bytes | str, bytes | str] | None


def _fields(value: str) -> dict[bytes | str, bytes | str]:
    return {"lbs-input": value}


@pytest.mark.parametrize(
    "fields",
    [
        {b"lbs-input": b'{"DataStreamName": "session-42", "Info": {"user": "u-1"}}'},
        {"lbs-input": '{"DataStreamName": "session-42", "Info": {"user": "u-1"}}'},
        {b"lbs-input": '{"DataStreamName": "session-42", "Info": {"user": "u-1"}}'},
        {"lbs-input": b'{"DataStreamName": "session-42", "Info": {"user": "u-1"}}'},
    ],
    ids=["bytes", "str", "bytes-key", "bytes-value"],
)
def test_from_entry_reads_bytes_and_str_fields(fields: Fields) -> None:
    """An entry parses the same whether its field and value are bytes or str."""
    message = LBSMessage.from_entry(ENTRY_ID, fields)

    assert "session-42" == message.data_stream_name
    assert {"user": "u-1"} == message.info


def test_from_entry_keeps_an_info_object_as_given() -> None:
    """A nested Info object comes back whole."""
    info = {"user_id": "u-1", "priority": "high", "tags": ["a", "b"], "n": {"x": 1}}
    raw = json.dumps({"DataStreamName": "s", "Info": info})

    message = LBSMessage.from_entry(ENTRY_ID, _fields(raw))

    assert info == message.info


@pytest.mark.parametrize(
    "raw",
    ['{"DataStreamName": "s"}', '{"DataStreamName": "s", "Info": null}'],
    ids=["missing", "null"],
)
def test_from_entry_gives_empty_info_when_info_is_missing_or_null(raw: str) -> None:
    """Info is optional: absent or null, it reads as an empty object."""
    message = LBSMessage.from_entry(ENTRY_ID, _fields(raw))

    assert "s" == message.data_stream_name
    assert {} == message.info


def test_from_entry_ignores_other_fields() -> None:
    """Fields besides lbs-input do not get in the way."""
    fields: dict[bytes | str, bytes | str] = {
        b"other": b"x",
        b"lbs-input": b'{"DataStreamName": "s"}',
    }

    assert "s" == LBSMessage.from_entry(ENTRY_ID, fields).data_stream_name


@pytest.mark.parametrize(
    ("fields", "reason_names"),
    [
        (None, "lbs-input"),
        ({}, "lbs-input"),
        ({b"other": b'{"DataStreamName": "s"}'}, "lbs-input"),
        (_fields("not json"), "JSON"),
        (_fields(""), "JSON"),
        (_fields("{"), "JSON"),
        (_fields("[" * 100_000), "JSON"),
        (_fields('["s"]'), "object"),
        (_fields('"s"'), "object"),
        (_fields("42"), "object"),
        (_fields("null"), "object"),
        (_fields("{}"), "DataStreamName"),
        (_fields('{"Info": {}}'), "DataStreamName"),
        (_fields('{"DataStreamName": ""}'), "DataStreamName"),
        (_fields('{"DataStreamName": null}'), "DataStreamName"),
        (_fields('{"DataStreamName": 7}'), "DataStreamName"),
        (_fields('{"DataStreamName": ["s"]}'), "DataStreamName"),
        (_fields('{"dataStreamName": "s"}'), "DataStreamName"),
        (_fields(json.dumps({"DataStreamName": f"a{MUTEX_KEY_SEP}b"})), MUTEX_KEY_SEP),
        (_fields(json.dumps({"DataStreamName": MUTEX_KEY_SEP})), MUTEX_KEY_SEP),
        (_fields('{"DataStreamName": "s", "Info": []}'), "Info"),
        (_fields('{"DataStreamName": "s", "Info": "x"}'), "Info"),
        (_fields('{"DataStreamName": "s", "Info": 1}'), "Info"),
        (_fields('{"DataStreamName": "s", "Info": true}'), "Info"),
    ],
    ids=[
        "no-fields",
        "empty-fields",
        "other-field-only",
        "not-json",
        "empty-value",
        "truncated-json",
        "nested-too-deep",
        "json-list",
        "json-string",
        "json-number",
        "json-null",
        "empty-object",
        "no-name",
        "empty-name",
        "null-name",
        "number-name",
        "list-name",
        "misspelt-name",
        "name-with-separator",
        "name-is-separator",
        "info-list",
        "info-string",
        "info-number",
        "info-bool",
    ],
)
def test_from_entry_rejects_entries_that_break_the_protocol(
    fields: Fields, reason_names: str
) -> None:
    """Each way an entry can break the protocol raises with its id and a reason."""
    with pytest.raises(InvalidLBSMessageError) as caught:
        LBSMessage.from_entry(ENTRY_ID, fields)

    assert ENTRY_ID == caught.value.entry_id
    assert reason_names in caught.value.reason
    assert ENTRY_ID in str(caught.value)
    assert caught.value.reason in str(caught.value)


def test_invalid_lbs_message_error_is_a_value_error() -> None:
    """Callers that catch ValueError also catch a bad entry."""
    with pytest.raises(ValueError, match="JSON"):
        LBSMessage.from_entry(ENTRY_ID, _fields("not json"))


_field_names = st.one_of(
    st.just("lbs-input"),
    st.just(b"lbs-input"),
    st.text(max_size=12),
    st.binary(max_size=12),
)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
_protocol_like = st.fixed_dictionaries(
    {},
    optional={
        "DataStreamName": _json_values
        | st.text(max_size=20)
        | st.just(MUTEX_KEY_SEP)
        | st.text(max_size=4).map(lambda t: f"{t}{MUTEX_KEY_SEP}{t}"),
        "Info": _json_values | st.dictionaries(st.text(max_size=8), _json_values),
    },
).map(json.dumps)
_field_values = st.one_of(
    st.text(max_size=40),
    st.binary(max_size=40),
    _json_values.map(json.dumps),
    _protocol_like,
    _protocol_like.map(str.encode),
)


@given(
    fields=st.none()
    | st.dictionaries(_field_names, _field_values, max_size=4)
    | st.builds(
        lambda value: {"lbs-input": value},
        st.one_of(_protocol_like, st.binary(max_size=40)),
    ),
    entry_id=st.text(min_size=1, max_size=20),
)
def test_from_entry_returns_a_message_or_raises_invalid_lbs_message_error(
    fields: Fields, entry_id: str
) -> None:
    """Whatever the fields, the outcome is a valid message or the protocol error."""
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
        assert isinstance(outcome.info, dict)


def test_mutex_key_joins_name_and_entry_id_with_the_separator() -> None:
    """The lock key is the data stream name, the separator, then the entry id."""
    info = LBSInfo(data_stream_name="session-42", id_in_lbs=ENTRY_ID)

    assert f"session-42<MUTEX_KEY_SEP>{ENTRY_ID}" == info.mutex_key


@given(
    name=st.text(min_size=1).filter(lambda t: MUTEX_KEY_SEP not in t),
    entry_id=st.text(min_size=1).filter(lambda t: MUTEX_KEY_SEP not in t),
)
def test_from_mutex_key_parses_back_what_mutex_key_built(
    name: str, entry_id: str
) -> None:
    """Any name and entry id without the separator survive a round trip."""
    info = LBSInfo(data_stream_name=name, id_in_lbs=entry_id)

    assert info == LBSInfo.from_mutex_key(info.mutex_key)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "session-42",
        f"session-42{MUTEX_KEY_SEP}",
        f"{MUTEX_KEY_SEP}{ENTRY_ID}",
        MUTEX_KEY_SEP,
        f"a{MUTEX_KEY_SEP}b{MUTEX_KEY_SEP}{ENTRY_ID}",
        "session-42<MUTEX_KEY_SEP",
    ],
    ids=[
        "empty",
        "no-separator",
        "no-entry-id",
        "no-name",
        "separator-only",
        "two-separators",
        "partial-separator",
    ],
)
def test_from_mutex_key_rejects_keys_that_are_not_lock_keys(key: str) -> None:
    """A key without exactly one name, one separator and one id is refused."""
    with pytest.raises(ValueError, match="lock key"):
        LBSInfo.from_mutex_key(key)


_PAYLOAD = LBSInfo(data_stream_name="session-42", id_in_lbs=ENTRY_ID)
_NOTIFICATIONS: list[Notification] = [
    StreamAdded(payload=_PAYLOAD, additional_info={"user": "u-1"}),
    StreamExpired(payload=_PAYLOAD, additional_info={"user": "u-1"}),
    StreamDisowned(payload=_PAYLOAD),
    StreamTerminated(additional_info={"info": "stopped"}),
    StreamTerminated(payload=_PAYLOAD, additional_info={"info": "stopped"}),
]


@pytest.mark.parametrize(
    "notification",
    _NOTIFICATIONS,
    ids=lambda n: f"{type(n).__name__}-{n.payload is not None}",
)
def test_notification_adapter_round_trips_each_notification_type(
    notification: Notification,
) -> None:
    """Dumped and validated again, a notification keeps its class and values."""
    from_python = notification_adapter.validate_python(notification.model_dump())
    from_json = notification_adapter.validate_json(notification.model_dump_json())

    assert type(notification) is type(from_python)
    assert notification == from_python
    assert type(notification) is type(from_json)
    assert notification == from_json


@pytest.mark.parametrize(
    ("notification", "expected_type"),
    [
        (StreamAdded(payload=_PAYLOAD), "StreamAdded"),
        (StreamExpired(payload=_PAYLOAD), "StreamExpired"),
        (StreamDisowned(payload=_PAYLOAD), "StreamDisowned"),
        (StreamTerminated(), "StreamTerminated"),
    ],
)
def test_each_notification_carries_its_type_name(
    notification: Notification, expected_type: str
) -> None:
    """The type field holds the protocol's name of the notification."""
    assert NotificationType(expected_type) == notification.type
    assert expected_type == notification.model_dump(mode="json")["type"]


def test_notification_adapter_picks_the_class_from_the_type_field() -> None:
    """A plain mapping becomes the notification class its type names."""
    payload = {"data_stream_name": "s", "id_in_lbs": ENTRY_ID}
    expected: dict[str, type[Any]] = {
        "StreamAdded": StreamAdded,
        "StreamExpired": StreamExpired,
        "StreamDisowned": StreamDisowned,
        "StreamTerminated": StreamTerminated,
    }

    actual = {
        name: type(
            notification_adapter.validate_python({"type": name, "payload": payload})
        )
        for name in expected
    }

    assert expected == actual


async def _lbs_entries(
    redis_client: redis.asyncio.Redis, service: str
) -> list[tuple[bytes, dict[bytes | str, bytes | str]]]:
    entries = await redis_client.xrange(f"{service}-input")
    return cast("list[tuple[bytes, dict[bytes | str, bytes | str]]]", entries)


async def test_add_stream_writes_the_protocol_entry(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """add_stream appends one lbs-input field holding the protocol's JSON."""
    info = {"user_id": "u-1", "priority": "high"}

    entry_id = await add_stream(redis_client, service_name, "session-42", info)

    [(read_id, fields)] = await _lbs_entries(redis_client, service_name)
    assert entry_id == read_id.decode()
    assert [b"lbs-input"] == list(fields)
    assert {"DataStreamName": "session-42", "Info": info} == json.loads(
        fields[b"lbs-input"]
    )


async def test_add_stream_without_info_writes_an_empty_info_object(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """With no info, the entry still carries Info as an empty object."""
    await add_stream(redis_client, service_name, "session-42")

    [(_, fields)] = await _lbs_entries(redis_client, service_name)
    assert {"DataStreamName": "session-42", "Info": {}} == json.loads(
        fields[b"lbs-input"]
    )


async def test_add_stream_entry_is_read_back_by_from_entry(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """What the producer writes, the consumer's parser accepts unchanged."""
    info = {"user_id": "u-1", "nested": {"a": [1, 2]}}
    entry_id = await add_stream(redis_client, service_name, "session-42", info)

    [(_, fields)] = await _lbs_entries(redis_client, service_name)
    message = LBSMessage.from_entry(entry_id, fields)

    assert LBSMessage(data_stream_name="session-42", info=info) == message


@pytest.mark.parametrize(
    "name",
    ["", MUTEX_KEY_SEP, f"a{MUTEX_KEY_SEP}b", f"session{MUTEX_KEY_SEP}"],
    ids=["empty", "separator", "separator-inside", "separator-at-end"],
)
async def test_add_stream_rejects_names_it_could_not_lock(
    redis_client: redis.asyncio.Redis, service_name: str, name: str
) -> None:
    """An empty name or one holding the separator raises and writes nothing."""
    with pytest.raises(InvalidOptionError) as caught:
        await add_stream(redis_client, service_name, name)

    assert isinstance(caught.value, ValueError)
    assert "data_stream_name" == caught.value.option
    assert "data_stream_name" in str(caught.value)
    assert 0 == await redis_client.exists(f"{service_name}-input")
