"""Every Redis command the client sends, and the one place Redis errors are met.

Methods raise :class:`RedisCommandError` (chained to the Redis error) when Redis
cannot be reached or refuses a command; nothing outside this module catches
``redis.exceptions``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import anyio
import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.client import NEVER_DECODE
from redis.commands.core import AsyncScript

from ._errors import RedisCommandError
from ._models import LBS_FIELD, decode

Fields = Mapping[Any, Any]
Entry = tuple[str, Fields | None]

T = TypeVar("T")

RAW = {NEVER_DECODE: True}
"""Read a reply as bytes, whatever the client's ``decode_responses``: LBS
entries are written by producers and may hold bytes that are not UTF-8."""

LOCK_CHUNK = 1000
"""Locks per script call: bounds how long one call holds the server."""

HAND_BACK_TTL_MS = 20
"""What is left of a handed-back lock's life. Not 1 ms: PEXPIRE can judge so
short a TTL already past as it sets it (the server's clock counts whole
milliseconds), and then deletes the key on the spot, which raises ``del``,
not ``expired``: nobody hears of it. On Redis 7.0, 12 of 100,000 PEXPIREs of
1 ms did so. (``SET ... PX 1``, which the sweep uses, never did.)"""

KEPT, TAKEN, GONE = 1, 0, -1
"""What extending a lock found: ours (now extended), another's, or none."""

# Take a batch of locks, each with a fencing token from the service's counter.
# KEYS: the lock keys, then the counter. ARGV: holder, TTL in ms. One result
# per lock: its token, or 0 when someone holds it.
_ACQUIRE = """
local counter = KEYS[#KEYS]
local out = {}
for i = 1, #KEYS - 1 do
  if redis.call('SET', KEYS[i], ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = redis.call('INCR', counter)
  else
    out[i] = 0
  end
end
return out
"""

# Compare-and-extend a batch of locks. One result per key: 1 when still ours
# (extended), 0 when another consumer holds it, -1 when there is no lock.
_EXTEND = """
local out = {}
for i = 1, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    out[i] = 1
  elseif holder then
    out[i] = 0
  else
    out[i] = -1
  end
end
return out
"""

# Compare-and-delete a batch of locks and finish their entries. KEYS: the lock
# keys, then the LBS. ARGV: holder, group, then one entry id per lock. One
# result per lock: 1 when finished, else the name of the other holder ("" when
# the entry is no longer pending: another consumer finished it). A lock that
# ran out still lets its old holder finish, unless another consumer claimed the
# entry since (it is pending under that consumer, or no longer pending).
_FINISH = """
local lbs = KEYS[#KEYS]
local out = {}
for i = 1, #KEYS - 1 do
  local holder = redis.call('GET', KEYS[i])
  if not holder then
    local id = ARGV[i + 2]
    local row = redis.call('XPENDING', lbs, ARGV[2], id, id, 1)[1]
    if not row then
      holder = ''
    elseif row[2] ~= ARGV[1] then
      holder = row[2]
    end
  end
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

# End a batch of locks on purpose by making them expire in ARGV[2] ms, so every
# consumer hears the same `expired` event. One result per lock: 1 when it was
# ours, else the other holder's name (or false when there is no lock).
_HAND_BACK = """
local out = {}
for i = 1, #KEYS do
  local holder = redis.call('GET', KEYS[i])
  if holder == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    out[i] = 1
  else
    out[i] = holder
  end
end
return out
"""

# Give recovered entries whose lock another consumer holds back to that
# consumer, with the delivery count they had: XAUTOCLAIM takes idle entries
# whatever their lock, and a heartbeat does not keep an entry from idling.
# KEYS: the lock keys, then the LBS. ARGV: this consumer, group, then per
# lock its entry id and delivery count. One result per lock: the holder the
# entry went back to, or false where it stays here (no lock, or ours).
_GIVE_BACK = """
local lbs = KEYS[#KEYS]
local out = {}
for i = 1, #KEYS - 1 do
  local holder = redis.call('GET', KEYS[i])
  local id = ARGV[2 * i + 1]
  out[i] = false
  if holder and holder ~= ARGV[1] then
    local row = redis.call('XPENDING', lbs, ARGV[2], id, id, 1)[1]
    if row and row[2] == ARGV[1] then
      redis.call('XCLAIM', lbs, ARGV[2], holder, 0, id,
                 'RETRYCOUNT', ARGV[2 * i + 2], 'JUSTID')
      out[i] = holder
    end
  end
end
return out
"""

# Whether each of a batch of locks exists; one flag per key.
_EXISTS = """
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('EXISTS', KEYS[i])
end
return out
"""

# Compare-and-delete a batch of locks; one flag per key, 1 when deleted.
_RELEASE = """
local out = {}
for i = 1, #KEYS do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    out[i] = redis.call('DEL', KEYS[i])
  else
    out[i] = 0
  end
end
return out
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
    except UnicodeDecodeError as exc:
        # A client with decode_responses=True meets a reply that is not text,
        # such as the keyspace event of a key named in other bytes.
        raise RedisCommandError(f"{what} failed: the reply is not text") from exc


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


class NodeConfig:
    """The ``notify-keyspace-events`` setting of one server."""

    def __init__(self, redis: Any, name: str) -> None:
        self._redis = redis
        self.name = name

    async def get(self) -> str:
        """The current flags.

        Raises:
            ConfigRefusedError: CONFIG GET is not allowed.
        """
        reply = await _call(
            self._redis.config_get("notify-keyspace-events"),
            f"CONFIG GET notify-keyspace-events on {self.name}",
        )
        return decode(next(iter(reply.values()), None) or "")

    async def set(self, flags: str) -> None:
        """Set the flags.

        Raises:
            ConfigRefusedError: CONFIG SET is not allowed.
        """
        await _call(
            self._redis.config_set("notify-keyspace-events", flags),
            f"CONFIG SET notify-keyspace-events on {self.name}",
        )


class Store:
    """The keys of one service in one Redis, seen by one consumer."""

    def __init__(self, redis: aioredis.Redis, service: str, consumer: str) -> None:
        self.redis = redis
        self.service = service
        self.consumer = consumer
        self.lbs = f"{service}-input"
        self.group = f"{service}-group"
        self.dead = f"{service}-dead"
        self.fencing = f"{service}-fencing"
        self.reconcile = f"{service}-reconcile"
        self.reconcile_now = f"{service}-reconcile-now"
        self._acquire = redis.register_script(_ACQUIRE)
        self._hand_back = redis.register_script(_HAND_BACK)
        self._extend = redis.register_script(_EXTEND)
        self._finish = redis.register_script(_FINISH)
        self._release = redis.register_script(_RELEASE)
        self._exists = redis.register_script(_EXISTS)
        self._give_back = redis.register_script(_GIVE_BACK)

    @property
    def db(self) -> int:
        """The database number the client talks to."""
        return int(self._connection_kwargs.get("db", 0) or 0)

    @property
    def socket_timeout(self) -> float | None:
        """The client's socket timeout in seconds, if it has one."""
        timeout = self._connection_kwargs.get("socket_timeout")
        return float(timeout) if timeout else None

    @property
    def _connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self.redis.connection_pool.connection_kwargs
        return kwargs

    @property
    def command_retries(self) -> int:
        """How often the Redis client itself retries a failed command."""
        retry = getattr(self.redis, "retry", None) or self.redis.get_retry()
        return int(retry.get_retries()) if retry is not None else 0

    async def config_targets(self) -> list[NodeConfig]:
        """The servers whose ``notify-keyspace-events`` matter."""
        return [NodeConfig(self.redis, "the server")]

    async def prepare(self) -> None:
        """Get ready to send commands (a cluster client learns its nodes)."""

    async def close(self) -> None:
        """Release what the store opened besides the user's client."""

    def subscription(self, pattern: str) -> EventSource:
        """A new subscription to *pattern*, not yet subscribed."""
        return Subscription(self.redis, pattern)

    async def _raw(self, *command: Any) -> Any:
        """Run *command* with its reply read as bytes (see :data:`RAW`)."""
        execute = self.redis.execute_command
        return await execute(*command, **RAW)  # type: ignore[no-untyped-call]

    async def ensure_group(self, start: str = "$") -> None:
        """Create the consumer group, and the LBS with it, unless it exists.

        Args:
            start: the id after which the group hands out entries.
        """
        try:
            await self.redis.xgroup_create(
                self.lbs, self.group, id=start, mkstream=True
            )
        except redis_errors.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise RedisCommandError(
                    f"XGROUP CREATE {self.lbs} failed: {exc}"
                ) from exc
        except redis_errors.RedisError as exc:
            raise RedisCommandError(f"XGROUP CREATE {self.lbs} failed: {exc}") from exc

    async def read_new(self, count: int, block_ms: int) -> list[Entry]:
        """Read up to *count* new LBS entries for this consumer, blocking a while."""
        try:
            reply = await self._raw(
                *("XREADGROUP", "GROUP", self.group, self.consumer, "COUNT", count),
                *("BLOCK", block_ms, "STREAMS", self.lbs, ">"),
            )
        except redis_errors.RedisError as exc:
            if "NOGROUP" in str(exc):
                # The LBS was deleted, or the server restarted without it. The
                # group went with it, so no entry there now was ever handed
                # out, even one a producer added before this read: start at 0.
                await self.ensure_group(start="0")
                return []
            raise RedisCommandError(f"XREADGROUP {self.lbs} failed: {exc}") from exc
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
            self._raw(
                *("XAUTOCLAIM", self.lbs, self.group, self.consumer, min_idle_ms),
                *(cursor, "COUNT", count),
            ),
            f"XAUTOCLAIM {self.lbs}",
        )
        return decode(reply[0]), _entries(reply[1])

    async def claim_entries(
        self, entry_ids: Sequence[str]
    ) -> dict[str, tuple[Fields, int]]:
        """XCLAIM entries for this consumer, whatever their idle time.

        Returns:
            For each entry that was still pending, its fields and how many times
            it has been delivered now.
        """
        if not entry_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.execute_command(
                "XCLAIM", self.lbs, self.group, self.consumer, 0, *entry_ids, **RAW
            )
            for entry_id in entry_ids:
                pipe.xpending_range(self.lbs, self.group, entry_id, entry_id, 1)
            claimed, *pending = await _call(pipe.execute(), "XCLAIM of entries")
        counts = {
            decode(row["message_id"]): int(row["times_delivered"])
            for rows in pending
            for row in rows
        }
        return {
            entry_id: (fields, counts.get(entry_id, 1))
            for entry_id, fields in _entries(claimed)
            if fields is not None
        }

    async def deliveries(self, entry_ids: Sequence[str]) -> dict[str, int]:
        """How many times each of *entry_ids* has been delivered, if pending."""
        pending = await self.pending_entries(entry_ids)
        return {entry_id: count for entry_id, (_, count) in pending.items()}

    async def pending_entries(
        self, entry_ids: Sequence[str]
    ) -> dict[str, tuple[str, int]]:
        """Whom each of *entry_ids* is pending under, and its deliveries, if pending."""
        if not entry_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.xpending_range(self.lbs, self.group, entry_id, entry_id, 1)
            replies = await _call(pipe.execute(), "XPENDING of entries")
        return {
            decode(row["message_id"]): (
                decode(row["consumer"]),
                int(row["times_delivered"]),
            )
            for reply in replies
            for row in reply
        }

    async def pending_page(
        self, min_idle_ms: int, after: str | None, count: int
    ) -> list[tuple[str, int]]:
        """One page of the group's pending entries idle at least *min_idle_ms*.

        Returns:
            (entry id, deliveries) pairs in id order, after the id *after*.
        """
        start = "-" if after is None else f"({after}"
        rows: list[dict[str, Any]] = await _call(
            self.redis.xpending_range(
                self.lbs, self.group, start, "+", count, idle=min_idle_ms
            ),
            f"XPENDING {self.lbs}",
        )
        return [
            (decode(row["message_id"]), int(row["times_delivered"])) for row in rows
        ]

    async def acquire_locks(self, keys: Sequence[str], ttl_ms: int) -> list[int]:
        """Take each free lock for this consumer, with a fencing token.

        Returns:
            Per key, the new fencing token, or 0 where another holds the lock.
        """
        calls = [
            ([*chunk, self.fencing], [self.consumer, ttl_ms])
            for chunk in _chunks(keys, LOCK_CHUNK)
        ]
        replies = await self._scripted(self._acquire, calls, "taking locks")
        return [int(token) for reply in replies for token in reply]

    async def give_back_held(
        self, entries: Sequence[tuple[str, str, int]]
    ) -> list[str | None]:
        """Give recovered entries whose lock another consumer holds back to it.

        Args:
            entries: (lock key, entry id, deliveries before the recovery).

        Returns:
            Per entry, the holder it went back to, or None where it stays with
            this consumer.
        """
        calls: list[tuple[list[Any], list[Any]]] = [
            (
                [key for key, _, _ in chunk] + [self.lbs],
                [self.consumer, self.group]
                + [value for _, entry, count in chunk for value in (entry, count)],
            )
            for chunk in _chunks(entries, LOCK_CHUNK)
        ]
        replies = await self._scripted(self._give_back, calls, "giving entries back")
        return [
            None if holder is None else decode(holder)
            for reply in replies
            for holder in reply
        ]

    async def hand_back(self, keys: Sequence[str]) -> list[str | None]:
        """Make each of our locks expire now, so every consumer hears of it.

        The server finds an expired key on its own only in its periodic
        sweeps (every 100 ms at the default ``hz``), but at once when the key
        is read: the locks are read again once their time is up.

        Returns:
            Per key, None when it was ours, else its holder ("" when none).
        """
        results = await self._per_key(
            self._hand_back,
            keys,
            [self.consumer, HAND_BACK_TTL_MS],
            "handing back locks",
        )
        ours = [key for key, result in zip(keys, results, strict=True) if result == 1]
        if ours:
            await anyio.sleep((HAND_BACK_TTL_MS + 5) / 1000)
            # Failing, the locks expire all the same, only later.
            with contextlib.suppress(RedisCommandError):
                await self.locks_exist(ours)
        return [None if result == 1 else decode(result or b"") for result in results]

    async def announce_orphans(self, keys: Sequence[str]) -> list[bool]:
        """Raise an `expired` event for each lock key nobody holds."""
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                # A lock nobody holds, set to expire at once: every consumer
                # hears `expired` as if a holder had just died.
                pipe.set(key, self.consumer, nx=True, px=1)
            replies = await _call(pipe.execute(), "announcing orphans")
        return [bool(reply) for reply in replies]

    async def locks_exist(self, keys: Sequence[str]) -> list[bool]:
        """Whether each lock key exists."""
        flags = await self._per_key(self._exists, keys, [], "EXISTS of locks")
        return [bool(flag) for flag in flags]

    async def lead_sweep(self, interval_ms: int, *, at_once: bool = False) -> bool:
        """Whether this consumer sweeps this interval (one per service).

        With *at_once*, the sweep is one asked for out of turn (after a
        re-subscribe), and its own lock decides: the periodic one must not
        hold it back, but many consumers re-subscribing together need only
        one sweep between them.
        """
        key = self.reconcile_now if at_once else self.reconcile
        taken = await _call(
            self.redis.set(key, self.consumer, nx=True, px=interval_ms),
            "SET NX of the sweep lock",
        )
        return bool(taken)

    async def extend_locks(
        self, keys: Sequence[str], ttl_ms: int, answer_within: float
    ) -> list[int | None]:
        """Compare-and-extend every lock, giving up after *answer_within* seconds.

        Returns:
            Per key, :data:`KEPT` where it is still ours, :data:`TAKEN` where
            another consumer holds it, :data:`GONE` where there is no lock, None
            where the server did not answer in time (a cluster node that is
            failing over, say).
        """
        flags = await self._per_key(
            self._extend,
            keys,
            [self.consumer, ttl_ms],
            "lock extension",
            answer_within=answer_within,
        )
        return [None if flag is None else int(flag) for flag in flags]

    async def _per_key(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: list[Any],
        what: str,
        *,
        answer_within: float | None = None,
    ) -> list[Any]:
        """Run a script that answers one value per key over *keys*.

        Keys go in chunks of :data:`LOCK_CHUNK` so that no script call holds
        the server long, all chunks in one round trip. Past *answer_within* seconds
        the call fails with :class:`RedisCommandError`.
        """
        calls = [(list(chunk), args) for chunk in _chunks(keys, LOCK_CHUNK)]
        replies = await self._scripted(script, calls, what, answer_within=answer_within)
        return [value for reply in replies for value in reply]

    async def _scripted(
        self,
        script: AsyncScript,
        calls: Sequence[tuple[list[Any], list[Any]]],
        what: str,
        *,
        client: Any = None,
        answer_within: float | None = None,
    ) -> list[Any]:
        """Run *script* once per (keys, args) call, all in one round trip.

        Calls go by the script's SHA alone. A server that does not know it yet
        (a first call, a restart, a failover) answers NOSCRIPT to every call,
        so none ran: the script is loaded and the calls sent once more.
        Past *answer_within* seconds the round trip fails.

        Raises:
            RedisCommandError: Redis failed or did not answer in time.
        """
        if not calls:
            return []
        client = client or self.redis
        for attempt in range(2):
            async with client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                try:
                    with anyio.fail_after(answer_within):
                        replies: list[Any] = await pipe.execute()
                        return replies
                except redis_errors.NoScriptError:
                    if attempt:
                        msg = f"{what}: the server lost the script"
                        raise RedisCommandError(msg) from None
                except TimeoutError:
                    msg = f"{what} got no answer within {answer_within} s"
                    raise RedisCommandError(msg) from None
                except redis_errors.RedisError as exc:
                    raise RedisCommandError(f"{what} failed: {exc}") from exc
            await _call(client.script_load(script.script), "SCRIPT LOAD")
        raise AssertionError("unreachable")

    async def release_locks(self, keys: Sequence[str]) -> list[bool]:
        """Compare-and-delete locks; True where one was ours."""
        released = await self._per_key(
            self._release, keys, [self.consumer], "releasing locks"
        )
        return [bool(flag) for flag in released]

    async def finish(self, locks: Sequence[tuple[str, str]]) -> list[str | None]:
        """Release locks and XACK and XDEL their entries, in one round trip.

        Args:
            locks: (lock key, entry id) pairs.

        Returns:
            Per pair, None when finished, else the consumer now holding the lock
            or the entry ("" when another consumer finished it); the entry is
            then left untouched.
        """
        calls = [
            (
                [key for key, _ in chunk] + [self.lbs],
                [self.consumer, self.group] + [entry for _, entry in chunk],
            )
            for chunk in _chunks(locks, LOCK_CHUNK)
        ]
        replies = await self._scripted(self._finish, calls, "finishing streams")
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
                record[LBS_FIELD] = value
        # The copy is made before the entry goes: a crash in between leaves
        # the entry to be set aside again, never lost. (The two keys may live
        # on different nodes of a cluster, so this is two steps.)
        await _call(
            self.redis.xadd(self.dead, record),  # type: ignore[arg-type]
            f"XADD {self.dead}",
        )
        await self._forget(entry_id)

    async def _forget(self, *entry_ids: str) -> None:
        """XACK and XDEL entries of the LBS, in one round trip."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xack(self.lbs, self.group, *entry_ids)
            pipe.xdel(self.lbs, *entry_ids)
            await _call(pipe.execute(), f"XACK and XDEL of {len(entry_ids)} entries")

    async def entries_between(
        self, first: str, last: str, count: int
    ) -> dict[str, Fields]:
        """The fields of up to *count* LBS entries with ids from *first* to *last*."""
        reply = await _call(
            self._raw("XRANGE", self.lbs, first, last, "COUNT", count),
            "XRANGE of the LBS",
        )
        return {entry_id: fields or {} for entry_id, fields in _entries(reply or ())}

    async def entries(self, entry_ids: Sequence[str]) -> dict[str, Fields]:
        """The fields of those of *entry_ids* still in the LBS."""
        if not entry_ids:
            return {}
        async with self.redis.pipeline(transaction=False) as pipe:
            for entry_id in entry_ids:
                pipe.execute_command("XRANGE", self.lbs, entry_id, entry_id, **RAW)
            replies = await _call(pipe.execute(), "XRANGE of expired entries")
        found: dict[str, Fields] = {}
        for reply in replies:
            for entry_id, fields in _entries(reply):
                found[entry_id] = fields or {}
        return found


class EventSource(Protocol):
    """Where keyspace events come from: one connection, or one per node."""

    @property
    def active(self) -> bool:
        """Whether the pattern is subscribed."""

    async def subscribe(self) -> None:
        """Subscribe and wait for the confirmation."""

    async def next(self, wait: float) -> dict[str, Any] | None:
        """The next published message, or None after *wait* seconds."""

    async def refresh(self) -> None:
        """Follow changes of the servers' topology."""

    def resumed(self) -> bool:
        """Whether the subscription was made anew since the last call.

        Events published before it was (on a dropped connection that the
        Redis client re-made on its own, on a newly promoted primary) were
        never heard.
        """

    async def reset(self) -> None:
        """Drop the subscription; subscribe again after."""

    async def close(self) -> None:
        """Release the connections."""


class Subscription:
    """A pattern subscription on its own connection, errors translated."""

    def __init__(self, redis: aioredis.Redis, pattern: str) -> None:
        self._redis = redis
        self._pubsub = redis.pubsub()
        self._pattern = pattern
        self._primary: tuple[str, int] | None = None
        self._reconnects = ReconnectWatch()

    @property
    def active(self) -> bool:
        """Whether the pattern is subscribed."""
        return bool(self._pubsub.subscribed)

    async def subscribe(self) -> None:
        """Subscribe and wait for the server's confirmation."""
        await _call(self._pubsub.psubscribe(self._pattern), "PSUBSCRIBE")
        await _call(self._pubsub.get_message(timeout=1.0), "PSUBSCRIBE")
        self._reconnects.watch(self._pubsub)

    def resumed(self) -> bool:
        """Whether the Redis client re-made the connection since the last call."""
        return self._reconnects.seen()

    async def next(self, wait: float) -> dict[str, Any] | None:
        """The next published message, or None after *wait* seconds."""
        message: dict[str, Any] | None = await _call(
            self._pubsub.get_message(ignore_subscribe_messages=True, timeout=wait),
            "reading keyspace events",
        )
        return message

    async def refresh(self) -> None:
        """Follow a Sentinel failover; nothing to do on a plain server.

        After a failover the old primary goes on answering until Sentinel
        demotes it, seconds later, and what is written there meanwhile is
        lost. So when the sentinels name a new primary, every connection of
        the pool is dropped at once, and this subscription fails so that it is
        made again on the new primary.

        Raises:
            RedisCommandError: the primary moved.
        """
        pool = self._redis.connection_pool
        if not isinstance(pool, SentinelConnectionPool):
            return
        asking = pool.get_master_address()  # type: ignore[no-untyped-call]
        address = await _call(asking, "asking the sentinels")
        moved = self._primary is not None and address != self._primary
        self._primary = address
        if moved:
            await pool.disconnect(inuse_connections=True)
            raise RedisCommandError(f"the primary moved to {address[0]}:{address[1]}")

    async def reset(self) -> None:
        """Drop the connection and the subscription; subscribe again after."""
        # aclose() leaves the PubSub reusable; reset() is its deprecated alias,
        # whose warning escapes as an error where warnings are errors.
        self._reconnects.forget(self._pubsub)
        await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Release the connection."""
        await self.reset()


class ReconnectWatch:
    """Notices when the Redis client re-makes a subscription's connection.

    redis-py reconnects a dropped pub/sub connection and subscribes again by
    itself when its retry policy allows, and says nothing: the events
    published in between are lost all the same.
    """

    def __init__(self) -> None:
        self._reconnected = False

    def watch(self, pubsub: Any) -> None:
        """Hear of every later reconnect of *pubsub*'s connection.

        What came before is forgotten: a subscription just made needs no
        telling that it was made. (redis-py reconnects even when it may not
        retry, before it raises the error that leads to a new subscription.)
        """
        self._reconnected = False
        if pubsub.connection is not None:
            pubsub.connection.register_connect_callback(self._on_connect)

    def forget(self, pubsub: Any) -> None:
        """Stop hearing of *pubsub*'s connection, before it goes to the pool."""
        if pubsub.connection is not None:
            pubsub.connection.deregister_connect_callback(self._on_connect)

    def seen(self) -> bool:
        """Whether a reconnect happened since the last call."""
        reconnected, self._reconnected = self._reconnected, False
        return reconnected

    def _on_connect(self, connection: Any) -> None:
        self._reconnected = True
