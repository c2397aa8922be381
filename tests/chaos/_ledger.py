"""What the chaos consumers record in Redis, and how the checker reads it back.

Every record is keyed so that writing it twice is harmless: the server may
restart between a command and its reply, and the record is then sent again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
from redis import exceptions as redis_errors

T = TypeVar("T")

RETRY_FOR = 60.0
"""Seconds a record is retried while the server is down or loading."""

# A fenced write, as a user of fencing tokens would make it: refuse the write
# when a higher token was already used for the stream. KEYS: highest token
# per stream (hash), the stream's accepted writes (hash: message -> token),
# the log of accepted writes (list), the rejected writes (set). ARGV: stream,
# message id, token, consumer. Returns 1 when accepted, 0 when refused. The log
# lets the checker replay the order of acceptance on its own.
FENCED_WRITE = """
local token = tonumber(ARGV[3])
local record = ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3] .. ' ' .. ARGV[4]
local highest = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if token < highest then
  redis.call('SADD', KEYS[4], record)
  return 0
end
if redis.call('HGET', KEYS[2], ARGV[2]) == ARGV[3] then
  return 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
redis.call('RPUSH', KEYS[3], record)
return 1
"""


@dataclass(frozen=True)
class Holding:
    """One holding of a data stream: who held it under which token, and when."""

    stream: str
    token: int
    consumer: str
    at: float
    how: str = ""

    def to_json(self) -> str:
        """Serialise for a ledger hash."""
        return json.dumps(self.__dict__, sort_keys=True)

    @classmethod
    def from_json(cls, raw: str) -> Holding:
        """Read back what :meth:`to_json` wrote."""
        value: dict[str, Any] = json.loads(raw)
        return cls(**value)


@dataclass(frozen=True)
class Write:
    """One write of a message under a fencing token."""

    stream: str
    message: str
    token: int
    consumer: str

    @classmethod
    def parse(cls, record: str) -> Write:
        """Read a record of the fenced-write script."""
        stream, message, token, consumer = record.split(" ")
        return cls(stream, message, int(token), consumer)


def text(value: object) -> str:
    """A reply as text, whether or not the client decodes responses."""
    return value.decode() if isinstance(value, bytes) else str(value)


async def retrying(operation: Callable[[], Awaitable[T]]) -> T:
    """Run *operation* until the server answers, for at most ``RETRY_FOR`` s.

    Raises:
        redis.exceptions.ConnectionError: the server stayed away.
    """
    deadline = time.monotonic() + RETRY_FOR
    while True:
        try:
            return await operation()
        except (redis_errors.ConnectionError, redis_errors.TimeoutError):
            # BusyLoadingError is a ConnectionError: the restarted server is
            # still reading its AOF.
            if time.monotonic() > deadline:
                raise
        await anyio.sleep(0.05)


class Ledger:
    """The records of one chaos run, under ``<service>:ledger:``.

    Args:
        redis: a client that decodes responses.
        service: the service under test.
    """

    def __init__(self, redis: aioredis.Redis, service: str) -> None:
        self.redis = redis
        self.service = service
        self._base = f"{service}:ledger"
        self.highest = f"{self._base}:highest"
        self.writes = f"{self._base}:writes"
        self.rejected = f"{self._base}:rejected"
        self.claims = f"{self._base}:claims"
        self.finishing = f"{self._base}:finishing"
        self.finished = f"{self._base}:finished"
        self.unknown = f"{self._base}:unknown"
        self.stats = f"{self._base}:stats"
        self.anomalies = f"{self._base}:anomalies"
        self.ready = f"{self._base}:ready"
        self._fenced_write = redis.register_script(FENCED_WRITE)

    def data_stream(self, index: int) -> str:
        """The name, and key, of the *index*-th data stream of the run."""
        return f"{self.service}:data:{index:06d}"

    def accepted(self, stream: str) -> str:
        """The hash of accepted writes of *stream*: message id -> token."""
        return f"{self._base}:accepted:{stream}"

    async def fenced_write(
        self, stream: str, message: str, token: int, consumer: str
    ) -> bool:
        """Write *message* of *stream* under *token*; False when fenced out."""
        keys = [self.highest, self.accepted(stream), self.writes, self.rejected]
        args: list[str | int] = [stream, message, token, consumer]
        accepted = await retrying(lambda: self._fenced_write(keys, args))
        return bool(accepted)

    async def _record(self, key: str, holding: Holding) -> None:
        await retrying(
            lambda: self.redis.hset(key, str(holding.token), holding.to_json())
        )

    async def claimed(self, holding: Holding) -> None:
        """Record that a consumer took a stream under a token.

        A token given twice is an anomaly: tokens are unique per service.
        """
        raw = holding.to_json()
        fresh = await retrying(
            lambda: self.redis.hsetnx(self.claims, str(holding.token), raw)
        )
        if fresh:
            return
        before = await retrying(
            lambda: self.redis.hget(self.claims, str(holding.token))
        )
        if before is not None and Holding.from_json(text(before)) != holding:
            await self.anomaly(
                f"token {holding.token} given twice: {text(before)} and {raw}"
            )

    async def finishing_started(self, holding: Holding) -> None:
        """Record that done_stream is about to be called for a holding."""
        await self._record(self.finishing, holding)

    async def finished_stream(self, holding: Holding) -> None:
        """Record that done_stream returned for a holding."""
        await self._record(self.finished, holding)

    async def outcome_unknown(self, holding: Holding) -> None:
        """Record a done_stream whose effect is unknown (Redis failed)."""
        await self._record(self.unknown, holding)

    async def count(self, what: str, by: int = 1) -> None:
        """Add to a counter of things that happened to the consumers."""
        await retrying(lambda: self.redis.hincrby(self.stats, what, by))

    async def anomaly(self, text: str) -> None:
        """Record something that must never happen."""
        await retrying(lambda: self.redis.rpush(self.anomalies, text))

    async def mark_ready(self, consumer: str, pid: int) -> None:
        """Record that a consumer process is running its client."""
        await retrying(lambda: self.redis.hset(self.ready, consumer, str(pid)))

    async def holdings(self, key: str) -> list[Holding]:
        """Every holding recorded under *key* (claims, finished, ...)."""
        raw = await retrying(lambda: self.redis.hgetall(key))
        return [Holding.from_json(text(value)) for value in raw.values()]

    async def accepted_writes(self) -> list[Write]:
        """The accepted writes, in the order the server accepted them."""
        raw = await retrying(lambda: self.redis.lrange(self.writes, 0, -1))
        return [Write.parse(text(record)) for record in raw]

    async def rejected_writes(self) -> list[Write]:
        """The writes that were fenced out."""
        raw = await retrying(lambda: self.redis.smembers(self.rejected))
        return [Write.parse(record) for record in sorted(map(text, raw))]

    async def counters(self) -> dict[str, int]:
        """The counters of :meth:`count`."""
        raw = await retrying(lambda: self.redis.hgetall(self.stats))
        return {text(key): int(value) for key, value in raw.items()}

    async def anomaly_list(self) -> list[str]:
        """Everything recorded with :meth:`anomaly`."""
        raw = await retrying(lambda: self.redis.lrange(self.anomalies, 0, -1))
        return [text(record) for record in raw]
