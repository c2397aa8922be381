"""Every Redis command the client sends, and the one place Redis errors are met.

Methods raise :class:`RedisCommandError` (chained to the Redis error) when Redis
cannot be reached or refuses a command; nothing outside this module catches
``redis.exceptions``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from ._errors import RedisCommandError
from ._models import LBS_FIELD, decode

Fields = Mapping[Any, Any]
Entry = tuple[str, Fields | None]

T = TypeVar("T")

LOCK_CHUNK = 1000
"""Locks per script call: bounds how long one call holds the server."""

# Compare-and-extend a batch of locks; one flag per key, 1 when still ours.
_EXTEND = """
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""

# Compare-and-delete a batch of locks and finish their entries. KEYS: the lock
# keys, then the LBS. ARGV: holder, group, then one entry id per lock. One
# result per lock: 1 when finished, else the name of the other holder.
_FINISH = """
local lbs = KEYS[#KEYS]
local out = {}
for i = 1, #KEYS - 1 do
  local holder = redis.call('GET', KEYS[i])
  if holder and holder ~= ARGV[1] then
    out[i] = holder
  else
    if holder then
      redis.call('DEL', KEYS[i])
    end
    redis.call('XACK', lbs, ARGV[2], ARGV[i + 2])
    redis.call('XDEL', lbs, ARGV[i + 2])
    out[i] = 1
  end
end
return out
"""

# Compare-and-delete one lock; 1 when deleted.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class ConfigRefusedError(RedisCommandError):
    """The server refused a CONFIG command (managed Redis, ACL)."""


async def _call(command: Awaitable[T], what: str) -> T:
    try:
        return await command
    except redis_errors.RedisError as exc:
        if _is_refusal(exc) and what.startswith("CONFIG"):
            raise ConfigRefusedError(f"{what} was refused: {exc}") from exc
        raise RedisCommandError(f"{what} failed: {exc}") from exc


def _is_refusal(exc: redis_errors.RedisError) -> bool:
    if isinstance(exc, redis_errors.NoPermissionError):
        return True
    text = str(exc).lower()
    return isinstance(exc, redis_errors.ResponseError) and (
        "unknown command" in text or "noperm" in text or "not allowed" in text
    )


def _chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _entries(raw: Iterable[Any]) -> list[Entry]:
    return [(decode(entry_id), fields) for entry_id, fields in raw]


class Store:
    """The keys of one service in one Redis, seen by one consumer."""

    def __init__(self, redis: aioredis.Redis, service: str, consumer: str) -> None:
        self.redis = redis
        self.service = service
        self.consumer = consumer
        self.lbs = f"{service}-input"
        self.group = f"{service}-group"
        self.dead = f"{service}-dead"
        self._extend = redis.register_script(_EXTEND)
        self._finish = redis.register_script(_FINISH)
        self._release = redis.register_script(_RELEASE)

    @property
    def db(self) -> int:
        """The database number the client talks to."""
        return int(self.redis.connection_pool.connection_kwargs.get("db", 0) or 0)

    def subscription(self, pattern: str) -> Subscription:
        """A new subscription to *pattern*, not yet subscribed."""
        return Subscription(self.redis, pattern)

    async def ensure_group(self) -> None:
        """Create the consumer group, and the LBS with it, unless it exists."""
        try:
            await self.redis.xgroup_create(self.lbs, self.group, id="$", mkstream=True)
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise RedisCommandError(
                    f"XGROUP CREATE {self.lbs} failed: {exc}"
                ) from exc
        except redis_errors.RedisError as exc:
            raise RedisCommandError(f"XGROUP CREATE {self.lbs} failed: {exc}") from exc

    async def notify_config(self) -> str:
        """The server's ``notify-keyspace-events``.

        Raises:
            ConfigRefusedError: CONFIG GET is not allowed.
        """
        reply = await _call(
            self.redis.config_get("notify-keyspace-events"),
            "CONFIG GET notify-keyspace-events",
        )
        return decode(next(iter(reply.values()), None) or "")

    async def set_notify_config(self, flags: str) -> None:
        """Set the server's ``notify-keyspace-events``.

        Raises:
            ConfigRefusedError: CONFIG SET is not allowed.
        """
        await _call(
            self.redis.config_set("notify-keyspace-events", flags),
            "CONFIG SET notify-keyspace-events",
        )

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Read up to *count* new LBS entries for this consumer, blocking a while."""
        reply = await _call(
            self.redis.xreadgroup(
                self.group,
                self.consumer,
                {self.lbs: ">"},
                count=count,
                block=block_ms,
            ),
            f"XREADGROUP {self.lbs}",
        )
        # RESP2 answers [[stream, entries]]; RESP3 {stream: [entries]}.
        if isinstance(reply, dict):
            batches = [batch for value in reply.values() for batch in value]
        else:
            batches = [batch for _, batch in reply or ()]
        entries = [entry for batch in batches for entry in _entries(batch)]
        return entries

    async def autoclaim(
        self, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry]]:
        """One page of XAUTOCLAIM: the next cursor and the entries taken."""
        reply = await _call(
            self.redis.xautoclaim(
                self.lbs, self.group, self.consumer, min_idle_ms, cursor, count
            ),
            f"XAUTOCLAIM {self.lbs}",
        )
        return decode(reply[0]), _entries(reply[1])

    async def claim_entry(self, entry_id: str, min_idle_ms: int) -> Entry | None:
        """XCLAIM one entry for this consumer; None when it was not pending."""
        reply = await _call(
            self.redis.xclaim(
                self.lbs, self.group, self.consumer, min_idle_ms, [entry_id]
            ),
            f"XCLAIM {self.lbs} {entry_id}",
        )
        entries = _entries(reply)
        return entries[0] if entries else None

    async def acquire_locks(self, keys: Sequence[str], ttl_ms: int) -> list[bool]:
        """SET NX each lock with this consumer's name; True where taken."""
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, self.consumer, nx=True, px=ttl_ms)
            replies = await _call(pipe.execute(), "SET NX of locks")
        return [bool(reply) for reply in replies]

    async def extend_locks(self, keys: Sequence[str], ttl_ms: int) -> list[bool]:
        """Compare-and-extend every lock; True where it is still ours.

        Keys go in chunks of :data:`LOCK_CHUNK` so that no script call holds
        the server long, all chunks in one round trip.
        """
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in _chunks(keys, LOCK_CHUNK):
                await self._extend(list(chunk), [self.consumer, ttl_ms], client=pipe)
            replies = await _call(pipe.execute(), "lock extension")
        return [bool(flag) for reply in replies for flag in reply]

    async def release_lock(self, key: str) -> bool:
        """Compare-and-delete one lock; True when it was ours."""
        reply = await _call(
            self._release([key], [self.consumer]), f"release of lock {key}"
        )
        return bool(reply)

    async def finish(self, locks: Sequence[tuple[str, str]]) -> list[str | None]:
        """Release locks and XACK and XDEL their entries, in one round trip.

        Args:
            locks: (lock key, entry id) pairs.

        Returns:
            Per pair, None when finished, else the consumer now holding the lock
            (its entry is left untouched).
        """
        if not locks:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for chunk in _chunks(locks, LOCK_CHUNK):
                keys = [key for key, _ in chunk] + [self.lbs]
                args = [self.consumer, self.group] + [entry for _, entry in chunk]
                await self._finish(keys, args, client=pipe)
            replies = await _call(pipe.execute(), "finishing streams")
        return [
            None if result == 1 else decode(result)
            for reply in replies
            for result in reply
        ]

    async def ack(self, entry_id: str) -> None:
        """XACK one entry."""
        await _call(self.redis.xack(self.lbs, self.group, entry_id), f"XACK {entry_id}")

    async def dead_letter(
        self, entry_id: str, fields: Fields | None, reason: str
    ) -> None:
        """Move an entry to the dead-letter stream with *reason*."""
        record = {"reason": reason, "entry_id": entry_id, "consumer": self.consumer}
        for key, value in (fields or {}).items():
            if decode(key) == LBS_FIELD:
                record[LBS_FIELD] = decode(value)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.dead, record)  # type: ignore[arg-type]
            pipe.xack(self.lbs, self.group, entry_id)
            pipe.xdel(self.lbs, entry_id)
            await _call(pipe.execute(), f"dead-lettering {entry_id}")

    async def entries(self, entry_ids: Sequence[str]) -> dict[str, Fields]:
        """The fields of those of *entry_ids* still in the LBS."""
        if not entry_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xrange(self.lbs, entry_id, entry_id)
            replies = await _call(pipe.execute(), "XRANGE of expired entries")
        found: dict[str, Fields] = {}
        for reply in replies:
            for entry_id, fields in _entries(reply):
                found[entry_id] = fields or {}
        return found


class Subscription:
    """A pattern subscription on its own connection, errors translated."""

    def __init__(self, redis: aioredis.Redis, pattern: str) -> None:
        self._pubsub = redis.pubsub()
        self._pattern = pattern

    @property
    def active(self) -> bool:
        """Whether the pattern is subscribed."""
        return bool(self._pubsub.subscribed)

    async def subscribe(self) -> None:
        """Subscribe and wait for the server's confirmation."""
        await _call(self._pubsub.psubscribe(self._pattern), "PSUBSCRIBE")
        await _call(self._pubsub.get_message(timeout=1.0), "PSUBSCRIBE")

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next published message, or None after *timeout* seconds."""
        message: dict[str, Any] | None = await _call(
            self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout),
            "reading keyspace events",
        )
        return message

    async def reset(self) -> None:
        """Drop the connection and the subscription; subscribe again after."""
        await self._pubsub.reset()

    async def close(self) -> None:
        """Release the connection."""
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]
