"""Protocol values: LBS entries, lock identities and the notifications."""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ._errors import InvalidLBSMessageError

MUTEX_KEY_SEP = "<MUTEX_KEY_SEP>"
"""Separates the data stream name from the LBS entry id in a lock key."""

LBS_FIELD = "lbs-input"
"""The one field of an LBS entry; its value is a JSON object."""


def decode(value: bytes | str) -> str:
    """Return *value* as text, whatever the client's ``decode_responses``."""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class LBSInfo(BaseModel):
    """Which data stream a notification is about, and its entry in the LBS."""

    model_config = ConfigDict(frozen=True)

    data_stream_name: str
    id_in_lbs: str

    @property
    def mutex_key(self) -> str:
        """The key of this data stream's ownership lock."""
        return f"{self.data_stream_name}{MUTEX_KEY_SEP}{self.id_in_lbs}"

    @classmethod
    def from_mutex_key(cls, key: str) -> LBSInfo:
        """Parse a lock key back into its data stream name and entry id.

        Raises:
            ValueError: *key* is not ``<name><MUTEX_KEY_SEP><entry id>``.
        """
        name, sep, entry_id = key.partition(MUTEX_KEY_SEP)
        if not sep or not name or not entry_id or MUTEX_KEY_SEP in entry_id:
            msg = f"{key!r} is not a lock key"
            raise ValueError(msg)
        return cls(data_stream_name=name, id_in_lbs=entry_id)


class LBSMessage(BaseModel):
    """The JSON object an LBS entry carries in its ``lbs-input`` field."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    data_stream_name: str = Field(alias="DataStreamName", min_length=1)
    info: dict[str, Any] = Field(default_factory=dict, alias="Info")

    def to_json(self) -> str:
        """Serialise as the protocol's JSON object."""
        return json.dumps(
            {"DataStreamName": self.data_stream_name, "Info": self.info},
            separators=(",", ":"),
        )

    @classmethod
    def from_entry(cls, entry_id: str, fields: Mapping[Any, Any] | None) -> LBSMessage:
        """Parse the fields of one LBS entry.

        Raises:
            InvalidLBSMessageError: the entry does not follow the protocol; its
                ``reason`` says how.
        """
        raw = _raw_lbs_input(fields)
        if raw is None:
            raise InvalidLBSMessageError(entry_id, f"no {LBS_FIELD!r} field")
        try:
            # A name is used as a key as it is: bytes that are not text cannot
            # name a data stream faithfully.
            text = raw.decode() if isinstance(raw, bytes) else raw
        except UnicodeDecodeError:
            raise InvalidLBSMessageError(entry_id, "value is not UTF-8 text") from None
        try:
            value = json.loads(text)
        except (ValueError, RecursionError):
            # Deeply nested JSON exhausts the decoder's recursion limit.
            raise InvalidLBSMessageError(entry_id, "value is not JSON") from None
        if not isinstance(value, dict):
            raise InvalidLBSMessageError(entry_id, "value is not a JSON object")
        name = value.get("DataStreamName")
        if not isinstance(name, str) or not name:
            raise InvalidLBSMessageError(entry_id, "no DataStreamName, or it is empty")
        if MUTEX_KEY_SEP in name:
            reason = f"DataStreamName {name!r} contains {MUTEX_KEY_SEP}"
            raise InvalidLBSMessageError(entry_id, reason)
        info = value.get("Info")
        if info is None:
            info = {}
        if not isinstance(info, dict):
            raise InvalidLBSMessageError(entry_id, "Info is not a JSON object")
        try:
            return cls(data_stream_name=name, info=info)
        except ValidationError:
            # JSON escapes can spell lone surrogates ("\ud800"), which no Redis
            # key or reply can carry.
            reason = "DataStreamName or Info is not valid Unicode text"
            raise InvalidLBSMessageError(entry_id, reason) from None


def lbs_input(fields: Mapping[Any, Any] | None) -> str | None:
    """Return the ``lbs-input`` value of an entry's fields as text, if it has one."""
    raw = _raw_lbs_input(fields)
    return None if raw is None else decode(raw)


def _raw_lbs_input(fields: Mapping[Any, Any] | None) -> bytes | str | None:
    for key, value in (fields or {}).items():
        if decode(key) == LBS_FIELD:
            return value  # type: ignore[no-any-return]
    return None


class NotificationType(str, enum.Enum):
    """What happened to a data stream."""

    STREAM_ADDED = "StreamAdded"
    STREAM_EXPIRED = "StreamExpired"
    STREAM_DISOWNED = "StreamDisowned"
    STREAM_TERMINATED = "StreamTerminated"


class _Base(BaseModel):
    model_config = ConfigDict(frozen=True)

    additional_info: dict[str, Any] = Field(default_factory=dict)


class StreamAdded(_Base):
    """A data stream was assigned to this consumer; it holds its lock.

    ``fencing_token`` grows with every lock taken in the service: pass it with
    each write about this stream so that the store can refuse writes from an
    older holder.
    """

    type: Literal[NotificationType.STREAM_ADDED] = NotificationType.STREAM_ADDED
    payload: LBSInfo
    fencing_token: int | None = None


class StreamExpired(_Base):
    """Another consumer's lock expired; the stream can be claimed."""

    type: Literal[NotificationType.STREAM_EXPIRED] = NotificationType.STREAM_EXPIRED
    payload: LBSInfo


class StreamDisowned(_Base):
    """This consumer lost the lock of a stream it held; stop working on it."""

    type: Literal[NotificationType.STREAM_DISOWNED] = NotificationType.STREAM_DISOWNED
    payload: LBSInfo
    fencing_token: int | None = None


class StreamTerminated(_Base):
    """The notifications end; ``additional_info["info"]`` says why."""

    type: Literal[NotificationType.STREAM_TERMINATED] = (
        NotificationType.STREAM_TERMINATED
    )
    payload: LBSInfo | None = None


Notification = Annotated[
    StreamAdded | StreamExpired | StreamDisowned | StreamTerminated,
    Field(discriminator="type"),
]
"""Any notification; ``type`` tells which."""

notification_adapter: TypeAdapter[Notification] = TypeAdapter(Notification)
