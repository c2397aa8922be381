"""A child process that holds K data streams and keeps their locks alive.

Two designs, chosen with ``--design``:

``library``
    a :class:`rsc_async.RedisStreamClient` takes K entries from the LBS and
    holds them with its one heartbeat. With ``--cluster`` its Redis is a
    Redis Cluster, reached through a ``RedisCluster`` client.
``tasks``
    the design of the Go library: one asyncio task per lock, each sending one
    compare-and-extend script call every half interval. It takes its locks
    with SET NX directly, under the same key names, without the LBS.

The process prints ``ready`` once it holds K streams, then obeys ``start``
(begin a measured window), ``stop`` (end it and print ``measured``) and
``exit``. The takeover benchmark SIGKILLs it instead.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from rsc_async import (
    MUTEX_KEY_SEP,
    NotificationType,
    RedisStreamClient,
)
from rsc_async._cluster import _KEYS_IN_ARGV, ClusterStore
from rsc_async._metrics import NoMetrics
from rsc_async._store import _EXTEND

from ._child import commands, emit, next_command

LOCK_VALUE_PREFIX = "redis-consumer-"
"""Lock values name the consumer, as the wire protocol says."""

TASKS_POOL_SIZE = 20
"""Connections shared by the per-lock tasks: go-redis's default pool of ten
per CPU on this two-core machine, the pool the Go library's locks share."""

SET_BATCH = 1000
"""Locks taken per round trip by the per-lock-task design's set-up."""

# Compare-and-extend of one lock, as redsync runs it per mutex.
EXTEND_ONE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


EXTEND_SHA = hashlib.sha1(_EXTEND.encode()).hexdigest()
"""The library's extension script, which only the heartbeat sends."""

HEARTBEAT_SHAS = {
    EXTEND_SHA,
    hashlib.sha1((_KEYS_IN_ARGV + _EXTEND).encode()).hexdigest(),
}
"""The extension script in both forms: keys declared, and keys in ARGV (the
form a cluster node gets)."""

NOTES_KEPT = 5
"""Warnings and errors of the library passed on to the parent, at most."""


@dataclass
class Counters:
    """What a design did; copied at the edges of the measured window."""

    ticks: int = 0
    round_trips: int = 0
    script_calls: int = 0
    lost: int = 0
    errors: int = 0
    warnings: int = 0

    def copy(self) -> Counters:
        """A snapshot of the counters."""
        return Counters(**vars(self))

    def since(self, before: Counters) -> dict[str, int]:
        """The increments since *before*."""
        return {
            name: value - getattr(before, name) for name, value in vars(self).items()
        }


class CountingPipeline(Pipeline):
    """A pipeline that counts its round trips when it carries the heartbeat.

    The heartbeat sends a tick's extension calls by SHA in one pipeline per
    server (per node of a cluster); each such pipeline is a round trip. A
    command sent on its own while the pipeline runs (redis-py checks a queued
    script object with SCRIPT EXISTS first) is one more, and counted too.
    Pipelines without the extension script are not counted: they are not
    the heartbeat's.
    """

    counters: Counters
    counting = False

    async def immediate_execute_command(self, *args: Any, **options: Any) -> Any:
        if self.counting:
            self.counters.round_trips += 1
        return await super().immediate_execute_command(  # type: ignore[no-untyped-call]
            *args, **options
        )

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        scripts = sum(
            1
            for command, _ in self.command_stack
            if command[0] == "EVALSHA" and command[1] in HEARTBEAT_SHAS
        )
        if scripts:
            self.counting = True
            self.counters.script_calls += scripts
            self.counters.round_trips += 1
        return await super().execute(raise_on_error)


class CountingRedis(aioredis.Redis):
    """A client whose pipelines count round trips into :attr:`counters`."""

    counters: Counters

    def pipeline(
        self, transaction: bool = True, shard_hint: str | None = None
    ) -> CountingPipeline:
        pipe = CountingPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.counters = self.counters
        return pipe


def count_node_pipelines(counters: Counters) -> None:
    """Make the pipelines the library sends to single cluster nodes count.

    On a cluster the heartbeat sends one pipeline per node through plain
    clients of single nodes that the library opens itself
    (``ClusterStore.node_client``). Each is paired here with a counting
    client on the same connection pool, so that the commands go exactly as
    before and only the counting is added.
    """
    node_client = ClusterStore.node_client
    wrappers: dict[int, CountingRedis] = {}

    def counting(store: ClusterStore, host: str, port: int) -> aioredis.Redis:
        client = node_client(store, host, port)
        wrapper = wrappers.get(id(client))
        if wrapper is None or wrapper.connection_pool is not client.connection_pool:
            wrapper = CountingRedis(connection_pool=client.connection_pool)
            wrapper.counters = counters
            wrappers[id(client)] = wrapper
        return wrapper

    ClusterStore.node_client = counting  # type: ignore[method-assign,assignment]


class TickCounter(NoMetrics):
    """Counts the heartbeat's ticks through the library's metrics hook.

    After each tick the heartbeat reports every lock it extended, in one step
    of the event loop; the first report of a step starts a tick. A tick on a
    cluster is several pipelines, so pipelines cannot stand for ticks.
    """

    def __init__(self, counters: Counters) -> None:
        self.counters = counters
        self._in_tick = False

    def record_lock_extension_attempt(self, stream: str, success: bool) -> None:
        if not self._in_tick:
            self._in_tick = True
            self.counters.ticks += 1
            asyncio.get_running_loop().call_soon(self._end_tick)

    def _end_tick(self) -> None:
        self._in_tick = False


class WarningCounter(logging.Handler):
    """Counts the library's warnings (slow ticks, lost locks) into *counters*.

    The first few are kept as text in *notes*, so the parent can say what
    went wrong.
    """

    def __init__(self, counters: Counters, notes: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.counters = counters
        self.notes = notes

    def emit(self, record: logging.LogRecord) -> None:
        self.counters.warnings += 1
        if len(self.notes) < NOTES_KEPT:
            self.notes.append(f"{record.levelname}: {record.getMessage()}")


@dataclass
class Holding:
    """A design that holds the streams, its counters and what it logged."""

    counters: Counters = field(default_factory=Counters)
    notes: list[str] = field(default_factory=list)
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    client: RedisStreamClient | None = None
    """The library's client, for the parent's ``release`` command."""


def library_redis(
    args: argparse.Namespace, counters: Counters
) -> aioredis.Redis | RedisCluster:
    """The Redis client the library holds with, its heartbeat counted."""
    if args.cluster:
        count_node_pipelines(counters)
        return RedisCluster.from_url(args.url)
    redis = CountingRedis.from_url(args.url)
    assert isinstance(redis, CountingRedis)
    redis.counters = counters
    return redis


async def hold_with_library(args: argparse.Namespace, holding: Holding) -> None:
    """Let a client take ``args.streams`` entries and hold them until cancelled.

    Reconciliation sweeps are off: the heartbeat benchmark times one sweep
    apart, and one falling inside a window would be counted as the
    heartbeat's cost.
    """
    redis = library_redis(args, holding.counters)
    logging.getLogger("rsc_async").addHandler(
        WarningCounter(holding.counters, holding.notes)
    )
    client = RedisStreamClient(
        redis,
        args.service,
        consumer_id=args.consumer,
        hb_interval=args.hb_interval,
        read_batch=1000,
        output_buffer_size=1000,
        reconcile_interval=0,
        metrics=TickCounter(holding.counters),
    )
    holding.client = client
    added = 0
    try:
        async for notification in client.init():
            if notification.type is NotificationType.STREAM_ADDED:
                added += 1
                if added == args.streams:
                    holding.ready.set()
            elif notification.type is NotificationType.STREAM_DISOWNED:
                holding.counters.lost += 1
            elif notification.type is NotificationType.STREAM_TERMINATED:
                holding.counters.errors += 1
                if len(holding.notes) < NOTES_KEPT:
                    holding.notes.append(f"terminated: {notification.additional_info}")
    finally:
        await client.done()
        await redis.aclose()


async def hold_with_tasks(args: argparse.Namespace, holding: Holding) -> None:
    """Take ``args.streams`` locks and keep each alive with a task of its own."""
    pool = aioredis.BlockingConnectionPool.from_url(
        args.url, max_connections=TASKS_POOL_SIZE
    )
    redis = aioredis.Redis(connection_pool=pool)
    value = f"{LOCK_VALUE_PREFIX}{args.consumer}"
    ttl_ms = round(args.hb_interval * 1000)
    keys = [f"stream-{n:06d}{MUTEX_KEY_SEP}{n}-0" for n in range(args.streams)]
    for start in range(0, len(keys), SET_BATCH):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[start : start + SET_BATCH]:
                pipe.set(key, value, nx=True, px=ttl_ms)
            await pipe.execute()
    script = redis.register_script(EXTEND_ONE)
    period = args.hb_interval / 2
    tasks = [
        asyncio.create_task(keep_lock(script, key, value, ttl_ms, period, holding))
        for key in keys
    ]
    holding.ready.set()
    try:
        await asyncio.gather(*tasks)
        await asyncio.Event().wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await redis.aclose()
        await pool.disconnect()


async def keep_lock(
    script: AsyncScript,
    key: str,
    value: str,
    ttl_ms: int,
    period: float,
    holding: Holding,
) -> None:
    """Extend one lock every *period* seconds until it is found lost."""
    counters = holding.counters
    # Phases spread evenly over the period: the kindest load for this design,
    # with no burst of extensions at one instant.
    deadline = time.monotonic() + random.uniform(0, period)
    while True:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))
        try:
            extended = await script([key], [value, ttl_ms])
        except redis_errors.RedisError:
            counters.errors += 1
            extended = 1
        counters.round_trips += 1
        counters.script_calls += 1
        if not extended:
            counters.lost += 1
            return
        deadline += period
        if deadline < time.monotonic():
            # Like Go's time.Ticker: ticks missed while busy are dropped.
            deadline = time.monotonic()


async def main(args: argparse.Namespace) -> None:
    """Hold the streams, then measure windows as the parent commands."""
    holding = Holding()
    design = hold_with_library if args.design == "library" else hold_with_tasks
    started = time.monotonic()
    holder = asyncio.create_task(design(args, holding))
    stdin = await commands()
    ready = asyncio.create_task(holding.ready.wait())
    await asyncio.wait({holder, ready}, return_when=asyncio.FIRST_COMPLETED)
    if holder.done():
        ready.cancel()
        await holder
        msg = "the holder stopped before it held every stream"
        raise RuntimeError(msg)
    emit("ready", seconds=time.monotonic() - started)

    before = holding.counters.copy()
    cpu = wall = 0.0
    while (command := await next_command(stdin)) != "exit":
        if command == "start":
            before = holding.counters.copy()
            cpu, wall = time.process_time(), time.monotonic()
        elif command == "release":
            # Hand every stream back, as a consumer leaving in a deploy does.
            assert holding.client is not None, "only the library hands back"
            await holding.client.done(release=True)
            emit("released")
        elif command == "stop":
            emit(
                "measured",
                cpu_seconds=time.process_time() - cpu,
                seconds=time.monotonic() - wall,
                notes=holding.notes,
                **holding.counters.since(before),
            )
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The holder's arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._holder")
    parser.add_argument("--url", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--hb-interval", type=float, default=2.0)
    parser.add_argument("--design", choices=("library", "tasks"), default="library")
    parser.add_argument("--consumer", default="holder")
    parser.add_argument(
        "--cluster", action="store_true", help="--url names a Redis Cluster node"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse()))
    except Exception as exc:
        emit("error", error=repr(exc))
        raise
