"""Holding many streams: what the heartbeat costs the client and the server.

A holder process (:mod:`benchmarks._holder`) takes K streams and keeps them
for a measured window; the benchmark process stays idle meanwhile, so the
holder's own CPU time is the client's cost and nothing else's. The same is
done with one asyncio task per lock (the Go library's design) as a baseline.

Two in-process measurements explain the numbers: the server time of one
extension script call by chunk size, and the Lua batch against a pipeline of
one script call per lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import math
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import redis.asyncio as aioredis

from rsc_async import MUTEX_KEY_SEP, LBSMessage
from rsc_async._leases import Lease, Leases
from rsc_async._log import EventLog
from rsc_async._reconcile import Reconciler
from rsc_async._store import _EXTEND, LOCK_CHUNK, Fields, Store

from ._child import Child
from ._holder import EXTEND_ONE, EXTEND_SHA, LOCK_VALUE_PREFIX, Holding, keep_lock
from ._redis import (
    create_group,
    fill_lbs,
    lbs_payload,
    server,
    snapshot,
    stream_names,
)
from ._report import Line, Row, Section, announce, number, ratio

SERVICE = "bench"
CONSUMER = "holder"
TASKS = "task per lock"
"""What the baseline rows are called in the table."""

TASKS_LOST = "tasks (lost)"
"""Their name where they lost locks: their costs are then for fewer locks."""

SWEEP_EVERY = 40.0
"""Seconds between reconciliation sweeps by default (``lbs_idle_time``)."""


@dataclass(frozen=True)
class Options:
    """Sizes and durations of the heartbeat benchmark."""

    streams: Sequence[int] = (1_000, 10_000, 50_000)
    seconds: float = 20.0
    hb_interval: float = 2.0
    chunk_locks: int = 50_000
    chunk_sizes: Sequence[int] = (500, 1_000, 5_000, 50_000)
    compare_locks: int = 10_000
    repeats: int = 10
    redis_server: str | None = None


QUICK = {
    "streams": (1_000, 10_000),
    "seconds": 5.0,
    "chunk_locks": 10_000,
    "chunk_sizes": (500, 1_000, 5_000, 10_000),
    "repeats": 3,
}
"""Overrides of :class:`Options` for a smoke run."""


@dataclass(frozen=True)
class Held:
    """One design holding K streams over a measured window."""

    client_cpu_percent: float
    redis_cpu_percent: float
    commands_per_second: float
    round_trips_per_tick: float
    script_exists_per_tick: float
    script_calls_per_tick: float
    lost: int
    setup_seconds: float
    errors: int
    warnings: int


async def measure_holder(design: str, streams: int, options: Options) -> Held:
    """Start a fresh server and a holder of *streams*; measure one window."""
    with server(options.redis_server) as url:
        redis = aioredis.Redis.from_url(url)
        # Both designs run with expiry events on, as a consumer's server does.
        await redis.config_set("notify-keyspace-events", "KEx")
        if design == "library":
            await create_group(redis, SERVICE)
            await fill_lbs(redis, SERVICE, stream_names(streams))
        child = await Child.start(
            "_holder",
            f"--url={url}",
            f"--service={SERVICE}",
            f"--streams={streams}",
            f"--hb-interval={options.hb_interval}",
            f"--design={design}",
            f"--consumer={CONSUMER}",
        )
        try:
            ready = await child.expect("ready")
            # One period first, so that taking the locks is over and every
            # lock has been extended at least once before the window.
            await asyncio.sleep(options.hb_interval / 2)
            before = await snapshot(redis)
            await child.send("start")
            await asyncio.sleep(options.seconds)
            await child.send("stop")
            after = await snapshot(redis)
            measured = await child.expect("measured")
        finally:
            await child.close()
            await redis.aclose()

    window = after - before
    period = options.hb_interval / 2
    # The library's ticks are counted as they happen; the tasks have none,
    # so theirs is the number of periods the window spans.
    ticks = measured["ticks"] or measured["seconds"] / period
    return Held(
        client_cpu_percent=100 * measured["cpu_seconds"] / measured["seconds"],
        redis_cpu_percent=window.cpu_percent,
        commands_per_second=window.commands_per_second,
        round_trips_per_tick=measured["round_trips"] / ticks,
        # Counted by the server: the client-side count above cannot tell
        # which of a tick's round trips is the script check.
        script_exists_per_tick=window.calls.get("script|exists", 0) / ticks,
        script_calls_per_tick=measured["script_calls"] / ticks,
        lost=measured["lost"],
        setup_seconds=ready["seconds"],
        errors=measured["errors"],
        warnings=measured["warnings"],
    )


@contextlib.contextmanager
def traced() -> Iterator[list[int]]:
    """Yield a list that receives the bytes allocated and kept inside the block."""
    result: list[int] = []
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield result
        gc.collect()
        result.append(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


def lease_bytes(streams: int) -> float:
    """Bytes the client keeps per held stream: its Lease, in its Leases.

    Each lease is built the way the LBS reader builds it, from the raw fields
    of an entry, so the strings it keeps are its own.
    """
    raw = [
        (f"{1_700_000_000_000 + n}-0".encode(), lbs_payload(name)["lbs-input"].encode())
        for n, name in enumerate(stream_names(streams))
    ]
    with traced() as kept:
        leases = Leases()
        for raw_id, raw_value in raw:
            entry_id = raw_id.decode()
            message = LBSMessage.from_entry(entry_id, {b"lbs-input": raw_value})
            leases.add(Lease(message.data_stream_name, entry_id, message.info))
    assert len(leases) == streams
    return kept[0] / streams


async def task_bytes(streams: int) -> float:
    """Bytes the per-lock design keeps per lock: its task, coroutine and timer."""
    redis = aioredis.Redis()  # never connects: every task is still asleep
    script = redis.register_script(EXTEND_ONE)
    value = f"{LOCK_VALUE_PREFIX}{CONSUMER}"
    names = stream_names(streams)
    holding = Holding()
    with traced() as kept:
        tasks = [
            asyncio.create_task(
                keep_lock(
                    script,
                    f"{name}{MUTEX_KEY_SEP}{n}-0",
                    value,
                    2000,
                    # An hour: no task reaches Redis while memory is measured.
                    3600.0,
                    holding,
                )
            )
            for n, name in enumerate(names)
        ]
        await asyncio.sleep(0)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await redis.aclose()
    return kept[0] / streams


async def set_locks(redis: aioredis.Redis, keys: Sequence[str], value: str) -> None:
    """Take every lock for ten minutes, pipelined."""
    for start in range(0, len(keys), 1000):
        async with redis.pipeline(transaction=False) as pipe:
            for key in keys[start : start + 1000]:
                pipe.set(key, value, px=600_000)
            await pipe.execute()


def lock_keys(count: int) -> list[str]:
    """*count* lock keys shaped like the library's."""
    return [f"{name}{MUTEX_KEY_SEP}{n}-0" for n, name in enumerate(stream_names(count))]


async def extend_tick(
    redis: aioredis.Redis, keys: Sequence[str], value: str, chunk: int
) -> None:
    """One heartbeat tick as the library sends it, *chunk* locks per call.

    The library's own script, every call by its SHA in one pipeline (the
    script is loaded beforehand). Written out here rather than called through
    the private Store, whose signature is not meant to be stable.
    """
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            pipe.evalsha(EXTEND_SHA, len(part), *part, value, 600_000)
        await pipe.execute()


@dataclass(frozen=True)
class Tick:
    """Per-tick figures of repeated extensions of one set of locks."""

    usec_per_call: float
    redis_cpu_ms: float
    client_cpu_ms: float
    wall_ms: float


async def repeat_ticks(
    redis: aioredis.Redis,
    tick: Callable[[], Awaitable[object]],
    repeats: int,
    command: str = "evalsha",
) -> Tick:
    """Run ``await tick()`` *repeats* times; what one took, on both sides."""
    await tick()  # warms the connection
    before = await snapshot(redis)
    cpu, wall = time.process_time(), time.monotonic()
    for _ in range(repeats):
        await tick()
    cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    window = await snapshot(redis) - before
    return Tick(
        usec_per_call=window.usec_per_call(command),
        redis_cpu_ms=1000 * window.cpu_seconds / repeats,
        client_cpu_ms=1000 * cpu / repeats,
        wall_ms=1000 * wall / repeats,
    )


async def chunk_rows(options: Options) -> list[Line]:
    """Server time of one extension call at each chunk size."""
    locks = options.chunk_locks
    shipped = LOCK_CHUNK
    lines: list[Line] = [
        Section(
            f"heartbeat: a tick of {locks:,} locks by locks per script call "
            f"(shipped {shipped:,}); {options.repeats} ticks each"
        )
    ]
    with server(options.redis_server) as url:
        redis = aioredis.Redis.from_url(url)
        keys = lock_keys(locks)
        value = f"{LOCK_VALUE_PREFIX}{CONSUMER}"
        await set_locks(redis, keys, value)
        await redis.script_load(_EXTEND)
        ticks: dict[int, Tick] = {}
        for size in options.chunk_sizes:
            ticks[size] = await repeat_ticks(
                redis,
                functools.partial(extend_tick, redis, keys, value, size),
                options.repeats,
            )
        await redis.aclose()

    reference = ticks.get(shipped)
    for size, tick in ticks.items():
        calls = math.ceil(locks / size)
        case = f"chunk {size:,}, {calls} call{'s' if calls > 1 else ''}"
        lines.append(
            Row(case, "Redis ms per script call", number(tick.usec_per_call / 1000, 2))
        )
        versus = f"chunk {shipped:,}" if reference and size != shipped else ""
        lines.append(
            Row(
                case,
                "Redis CPU ms per tick",
                number(tick.redis_cpu_ms, 1),
                versus,
                number(reference.redis_cpu_ms, 1) if versus and reference else "",
                ratio(tick.redis_cpu_ms, reference.redis_cpu_ms)
                if versus and reference
                else "",
            )
        )
    return lines


async def compare_rows(options: Options) -> list[Line]:
    """The library's Lua batch against one script call per lock, pipelined."""
    locks = options.compare_locks
    lines: list[Line] = [
        Section(
            f"heartbeat: a tick of {locks:,} locks, Lua batch vs pipelined "
            f"call per lock; {options.repeats} ticks"
        )
    ]
    with server(options.redis_server) as url:
        redis = aioredis.Redis.from_url(url)
        keys = lock_keys(locks)
        value = f"{LOCK_VALUE_PREFIX}{CONSUMER}"
        await set_locks(redis, keys, value)
        await redis.script_load(_EXTEND)
        extend_one: str = await redis.script_load(EXTEND_ONE)

        async def per_key() -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.evalsha(extend_one, 1, key, value, 600_000)
                await pipe.execute()

        batch = await repeat_ticks(
            redis, lambda: extend_tick(redis, keys, value, LOCK_CHUNK), options.repeats
        )
        single = await repeat_ticks(redis, per_key, options.repeats)
        await redis.aclose()

    versus = "call per lock"
    case = f"{locks:,} locks"
    for metric, ours, theirs in (
        ("Redis CPU ms per tick", batch.redis_cpu_ms, single.redis_cpu_ms),
        ("client CPU ms per tick", batch.client_cpu_ms, single.client_cpu_ms),
        ("tick wall ms", batch.wall_ms, single.wall_ms),
    ):
        lines.append(
            Row(
                case,
                metric,
                number(ours, 1),
                versus,
                number(theirs, 1),
                ratio(ours, theirs),
            )
        )
    return lines


@dataclass(frozen=True)
class Sweep:
    """One reconciliation sweep over K pending entries whose locks are held."""

    client_cpu_ms: float
    redis_cpu_ms: float
    wall_ms: float


async def sweep_cost(streams: int, options: Options) -> Sweep:
    """Time one sweep of the library's reconciler over *streams* held entries.

    The sweep is not in the heartbeat's window: by default it first runs
    ``lbs_idle_time`` (40 s) after the start, and then every 40 s, by one
    consumer of the service, over every pending entry of the service.
    """
    with server(options.redis_server) as url:
        redis = aioredis.Redis.from_url(url)
        await create_group(redis, SERVICE)
        names = stream_names(streams)
        ids = await fill_lbs(redis, SERVICE, names)
        # Delivered to a holder, so pending; their locks held, so no orphans.
        while await redis.xreadgroup(
            f"{SERVICE}-group", CONSUMER, {f"{SERVICE}-input": ">"}, count=10_000
        ):
            pass
        keys = [
            f"{name}{MUTEX_KEY_SEP}{entry_id}"
            for name, entry_id in zip(names, ids, strict=True)
        ]
        await set_locks(redis, keys, f"{LOCK_VALUE_PREFIX}{CONSUMER}")

        async def set_aside(entry_id: str, fields: Fields, reason: str) -> None:
            msg = f"the sweep set aside {entry_id}: {reason}"
            raise RuntimeError(msg)

        # The sweep looks at entries idle two intervals; a short interval
        # here saves waiting for the entries to age.
        hb_interval = 0.05
        reconciler = Reconciler(
            Store(redis, SERVICE, f"{LOCK_VALUE_PREFIX}sweeper"),
            interval=SWEEP_EVERY,
            hb_interval=hb_interval,
            max_deliveries=10,
            set_aside=set_aside,
            log=EventLog(logging.getLogger("rsc_async"), "sweeper"),
        )
        await asyncio.sleep(4 * hb_interval)
        before = await snapshot(redis)
        cpu, wall = time.process_time(), time.monotonic()
        announced = await reconciler.sweep()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        window = await snapshot(redis) - before
        await redis.aclose()
    if announced:
        msg = f"the sweep announced {announced} orphans of {streams} held streams"
        raise RuntimeError(msg)
    return Sweep(1000 * cpu, 1000 * window.cpu_seconds, 1000 * wall)


def held_rows(
    streams: int,
    library: Held,
    tasks: Held,
    bytes_per_stream: tuple[float, float],
    sweep: Sweep,
) -> list[Line]:
    """The table rows of one K, library beside the per-lock tasks."""
    case = f"K={streams:,}"
    versus = TASKS_LOST if tasks.lost else TASKS
    figures = (
        ("client CPU % of a core", "client_cpu_percent", 1),
        ("Redis CPU %", "redis_cpu_percent", 1),
        ("Redis commands/s", "commands_per_second", 0),
        ("round trips per tick", "round_trips_per_tick", 1),
        ("SCRIPT EXISTS per tick", "script_exists_per_tick", 1),
        ("script calls per tick", "script_calls_per_tick", 1),
        ("seconds to hold all K", "setup_seconds", 1),
    )
    lines: list[Line] = []
    for metric, name, digits in figures:
        ours, theirs = getattr(library, name), getattr(tasks, name)
        lines.append(
            Row(
                case,
                metric,
                number(ours, digits),
                versus,
                number(theirs, digits),
                ratio(ours, theirs),
            )
        )
    ours, theirs = bytes_per_stream
    lines += [
        Row(case, "locks lost", number(library.lost), TASKS, number(tasks.lost)),
        Row(
            case,
            "errors / warnings logged",
            f"{library.errors} / {library.warnings}",
            versus,
            # The tasks log nothing: only their Redis errors are counted.
            f"{tasks.errors} / -",
        ),
        Row(
            case,
            "bytes per held stream",
            number(ours),
            # Measured apart from the window: untouched by lost locks.
            TASKS,
            number(theirs),
            ratio(ours, theirs),
        ),
        Row(case, "sweep: client CPU ms", number(sweep.client_cpu_ms)),
        Row(case, "sweep: Redis CPU ms", number(sweep.redis_cpu_ms)),
        Row(
            case,
            "client CPU % with sweep",
            number(
                library.client_cpu_percent + sweep.client_cpu_ms / SWEEP_EVERY / 10, 1
            ),
            versus,
            number(tasks.client_cpu_percent, 1),
            ratio(
                library.client_cpu_percent + sweep.client_cpu_ms / SWEEP_EVERY / 10,
                tasks.client_cpu_percent,
            ),
        ),
    ]
    return lines


progress = partial(announce, "heartbeat")
"""Say on stderr what runs now."""


async def run(options: Options) -> list[Line]:
    """Run the whole heartbeat benchmark; the table rows."""
    lines: list[Line] = [
        Section(
            f"heartbeat: hold K streams {options.seconds:g} s, hb_interval "
            f"{options.hb_interval:g} s; vs a task per lock (Go design)"
        )
    ]
    for streams in options.streams:
        progress(f"K={streams:,}: library")
        library = await measure_holder("library", streams, options)
        progress(f"K={streams:,}: {TASKS}")
        tasks = await measure_holder("tasks", streams, options)
        progress(f"K={streams:,}: memory and sweep")
        bytes_per_stream = (lease_bytes(streams), await task_bytes(streams))
        sweep = await sweep_cost(streams, options)
        lines.extend(held_rows(streams, library, tasks, bytes_per_stream, sweep))
    progress("chunk sizes")
    lines.extend(await chunk_rows(options))
    progress("Lua batch vs call per lock")
    lines.extend(await compare_rows(options))
    return lines
