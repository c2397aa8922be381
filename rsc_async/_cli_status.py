"""``rsc-async status`` and ``dead``: what Redis says about a service.

Redis errors are left to the caller; a missing LBS or consumer group reads as
an empty service.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from ._errors import InvalidLBSMessageError
from ._models import MUTEX_KEY_SEP, LBSMessage, decode, lbs_input


@dataclass(frozen=True)
class StreamRow:
    """One LBS entry: its data stream, the lock's holder and the group's view."""

    entry_id: str
    data_stream: str | None
    owner: str | None
    lock_ttl_ms: int | None
    idle_ms: int | None
    deliveries: int | None
    consumer: str | None


@dataclass(frozen=True)
class ConsumerRow:
    """One consumer of the group."""

    name: str
    pending: int
    held: int
    idle_ms: int


@dataclass(frozen=True)
class DeadRow:
    """One entry of the dead-letter stream."""

    id: str
    data_stream: str | None
    reason: str
    entry_id: str | None
    consumer: str | None
    lbs_input: str | None = field(repr=False)


@dataclass(frozen=True)
class Status:
    """A snapshot of one service."""

    service: str
    lbs_length: int
    streams: list[StreamRow]
    consumers: list[ConsumerRow]
    dead: list[DeadRow]

    def to_json(self) -> dict[str, Any]:
        """The snapshot as plain JSON values."""
        return asdict(self)


def data_stream_of(entry_id: str, fields: Mapping[Any, Any] | None) -> str | None:
    """The data stream an entry's ``lbs-input`` names, if it parses."""
    try:
        return LBSMessage.from_entry(entry_id, fields).data_stream_name
    except InvalidLBSMessageError:
        return None


async def read_status(redis: aioredis.Redis, service: str, limit: int) -> Status:
    """Read the LBS, the locks, the group and the dead letters of *service*.

    Args:
        redis: the service's Redis.
        service: the service name.
        limit: at most this many LBS entries and dead letters are read.
    """
    lbs, group = f"{service}-input", f"{service}-group"
    async with redis.pipeline(transaction=False) as pipe:
        pipe.xlen(lbs)
        pipe.xrange(lbs, count=limit)
        length, raw_entries = await pipe.execute()
    entries = [(decode(entry_id), fields) for entry_id, fields in raw_entries]
    names = {entry_id: data_stream_of(entry_id, fields) for entry_id, fields in entries}
    locks = await _read_locks(redis, names)
    pending = await _read_pending(redis, lbs, group, limit)

    streams = []
    for entry_id, name in names.items():
        owner, ttl = locks.get(entry_id, (None, None))
        consumer, idle, deliveries = pending.get(entry_id, (None, None, None))
        streams.append(
            StreamRow(entry_id, name, owner, ttl, idle, deliveries, consumer)
        )
    held = Counter(row.owner for row in streams if row.owner is not None)
    consumers = [
        ConsumerRow(name, pending_count, held[name], idle)
        for name, pending_count, idle in await _read_consumers(redis, lbs, group)
    ]
    dead = await read_dead(redis, service, limit)
    return Status(service, int(length), streams, consumers, dead)


async def read_dead(redis: aioredis.Redis, service: str, limit: int) -> list[DeadRow]:
    """Read up to *limit* entries of ``<service>-dead``, oldest first."""
    raw = await redis.xrange(f"{service}-dead", count=limit)
    return [dead_row(text_of(dead_id), fields) for dead_id, fields in raw or ()]


def text_of(value: object) -> str:
    """A reply value as text, whatever the client's ``decode_responses``."""
    return decode(value) if isinstance(value, bytes | str) else str(value)


def dead_row(dead_id: str, fields: Mapping[Any, Any] | None) -> DeadRow:
    """One dead letter from its stream entry's fields."""
    values = {decode(key): decode(value) for key, value in (fields or {}).items()}
    return DeadRow(
        id=dead_id,
        data_stream=data_stream_of(dead_id, fields),
        reason=values.get("reason", ""),
        entry_id=values.get("entry_id"),
        consumer=values.get("consumer"),
        lbs_input=lbs_input(fields),
    )


async def _read_locks(
    redis: aioredis.Redis, names: Mapping[str, str | None]
) -> dict[str, tuple[str | None, int | None]]:
    keys = {
        entry_id: f"{name}{MUTEX_KEY_SEP}{entry_id}"
        for entry_id, name in names.items()
        if name is not None
    }
    if not keys:
        return {}
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys.values():
            pipe.get(key)
            pipe.pttl(key)
        replies = await pipe.execute()
    locks = {}
    for index, entry_id in enumerate(keys):
        value, ttl = replies[2 * index], int(replies[2 * index + 1])
        # PTTL is -2 for a missing key and -1 for a key without expiry.
        locks[entry_id] = (
            None if value is None else decode(value),
            None if ttl == -2 else ttl,
        )
    return locks


async def _read_pending(
    redis: aioredis.Redis, lbs: str, group: str, limit: int
) -> dict[str, tuple[str, int, int]]:
    try:
        rows = await redis.xpending_range(lbs, group, "-", "+", limit)
    except redis_errors.ResponseError as exc:
        if _is_missing(exc):
            return {}
        raise
    return {
        text_of(row["message_id"]): (
            text_of(row["consumer"]),
            int(row["time_since_delivered"]),
            int(row["times_delivered"]),
        )
        for row in rows
    }


async def _read_consumers(
    redis: aioredis.Redis, lbs: str, group: str
) -> list[tuple[str, int, int]]:
    try:
        rows = await redis.xinfo_consumers(lbs, group)
    except redis_errors.ResponseError as exc:
        if _is_missing(exc):
            return []
        raise
    consumers = []
    for row in rows:
        values = {text_of(key): value for key, value in row.items()}
        consumers.append(
            (text_of(values["name"]), int(values["pending"]), int(values["idle"]))
        )
    return consumers


def _is_missing(exc: redis_errors.ResponseError) -> bool:
    text = str(exc)
    return "NOGROUP" in text or "no such key" in text
