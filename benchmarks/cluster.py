"""Redis Cluster: holding many streams, and taking over a dead consumer's.

The benchmark starts a local cluster of three primaries with a replica each,
and stops it after. Two measurements, each the cluster's version of another
benchmark:

- holding K streams, as :mod:`benchmarks.heartbeat` does: a holder process
  (:mod:`benchmarks._holder` with ``--cluster``) takes K streams and holds them
  for a measured window. Its heartbeat sends each node one pipeline of
  script calls over that node's locks, whatever their slots; the holder
  counts those pipelines and the ticks. Redis CPU comes from every node's
  INFO; how the locks spread over the primaries, from each primary's count
  of keys with a TTL (the locks are the only such keys).
- takeover, as :mod:`benchmarks.takeover` does, with cluster clients on both
  sides: a holder of H streams is SIGKILLed and a consumer in this process
  claims each stream when it hears ``StreamExpired``.

A case that fails is reported in the table with what failed and where, and
the benchmark goes on with the next.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from rsc_async._store import LOCK_CHUNK
from rsc_async.testing import RedisClusterServers

from . import takeover
from ._child import Child
from ._redis import Window, cluster, create_group, fill_lbs, snapshot, stream_names
from ._report import Line, Note, Row, Section, announce, number, ratio

SERVICE = "bench"
CONSUMER = "holder"

IDLE_SECONDS = 5.0
"""Seconds the cluster is measured with no client, at most."""

NOTE_CHARS = 600
"""A failure's message is cut to this in the table; stderr has all of it."""


@dataclass(frozen=True)
class Options:
    """Sizes of the cluster benchmark."""

    streams: Sequence[int] = (10_000, 50_000)
    seconds: float = 20.0
    hb_interval: float = 2.0
    held: int = 200
    ttls: Sequence[float] = (2.0, 0.5)
    rounds: int = 3
    claim_concurrency: int = takeover.CLAIM_CONCURRENCY
    primaries: int = 3
    replicas: int = 1
    redis_server: str | None = None


QUICK = {"streams": (1_000, 10_000), "seconds": 5.0, "held": 50, "rounds": 1}
"""Overrides of :class:`Options` for a smoke run."""


@dataclass(frozen=True)
class Node:
    """One node of the cluster, reached directly for its INFO."""

    name: str
    primary: bool
    redis: aioredis.Redis


@dataclass(frozen=True)
class Held:
    """A cluster client holding K streams over a measured window."""

    client_cpu_percent: float
    primaries: Window
    replicas: Window
    round_trips_per_tick: float
    script_calls_per_tick: float
    lost: int
    setup_seconds: float
    errors: int
    warnings: int
    locks_per_primary: Sequence[int]
    notes: Sequence[str] = field(default_factory=tuple)


progress = partial(announce, "cluster")
"""Say on stderr what runs now."""


def failure_note(case: str, exc: Exception) -> Note:
    """A note naming the case and the error, the whole error on stderr.

    A child's error ends with the tail of its stderr; the note keeps the
    error's first line and the last line of that tail.
    """
    text = f"{case}: {type(exc).__name__}: {exc}"
    progress(text)
    # Lines of only ^ and ~ mark a traceback's columns: nothing to read alone.
    lines = [line.strip() for line in text.splitlines() if line.strip(" ^~")]
    short = lines[0] if len(lines) < 2 else f"{lines[0]} ... {lines[-1]}"
    if len(short) > NOTE_CHARS:
        short = f"{short[:NOTE_CHARS]}..."
    return Note(short)


async def open_nodes(servers: RedisClusterServers) -> list[Node]:
    """A client of every node, primaries first, each knowing its role."""
    nodes = []
    for server in servers.nodes:
        redis = aioredis.Redis.from_url(server.url)
        replication = await redis.info("replication")
        primary = replication.get("role") == "master"
        nodes.append(Node(f"127.0.0.1:{server.port}", primary, redis))
    return sorted(nodes, key=lambda node: not node.primary)


def combined(windows: Sequence[Window]) -> Window:
    """The windows of several nodes as one: counts and CPU time summed.

    Each node's window is read a few milliseconds apart; their mean length
    stands for all of them.
    """
    if not windows:
        return Window(math.nan, 0, math.nan, {}, {})
    calls: dict[str, int] = {}
    usec: dict[str, int] = {}
    for window in windows:
        for name, count in window.calls.items():
            calls[name] = calls.get(name, 0) + count
        for name, total in window.usec.items():
            usec[name] = usec.get(name, 0) + total
    return Window(
        seconds=sum(window.seconds for window in windows) / len(windows),
        commands=sum(window.commands for window in windows),
        cpu_seconds=sum(window.cpu_seconds for window in windows),
        calls=calls,
        usec=usec,
    )


async def idle_rows(nodes: Sequence[Node], seconds: float) -> list[Line]:
    """What the nodes cost with no client at all: the floor under every figure."""
    before = [await snapshot(node.redis) for node in nodes]
    await asyncio.sleep(seconds)
    after = [await snapshot(node.redis) for node in nodes]
    windows = [end - start for start, end in zip(before, after, strict=True)]
    primaries = combined(
        [w for w, node in zip(windows, nodes, strict=True) if node.primary]
    )
    replicas = combined(
        [w for w, node in zip(windows, nodes, strict=True) if not node.primary]
    )
    case = "no client"
    return [
        Row(case, "Redis CPU %, primaries", number(primaries.cpu_percent, 1)),
        Row(case, "Redis CPU %, replicas", number(replicas.cpu_percent, 1)),
    ]


async def locks_held(node: Node) -> int:
    """Keys with a TTL on *node*: the locks, the only keys that expire here."""
    keyspace = await node.redis.info("keyspace")
    db0 = keyspace.get("db0", {})
    return int(db0.get("expires", 0)) if isinstance(db0, dict) else 0


async def measure_holder(
    servers: RedisClusterServers, nodes: Sequence[Node], streams: int, options: Options
) -> Held:
    """Empty the cluster, fill the LBS, start a holder of *streams*; one window."""
    redis = RedisCluster.from_url(servers.url)
    try:
        await redis.flushall()
        await create_group(redis, SERVICE)
        await fill_lbs(redis, SERVICE, stream_names(streams))
    finally:
        await redis.aclose()
    child = await Child.start(
        "_holder",
        f"--url={servers.url}",
        f"--service={SERVICE}",
        f"--streams={streams}",
        f"--hb-interval={options.hb_interval}",
        f"--consumer={CONSUMER}",
        "--cluster",
    )
    try:
        ready = await child.expect("ready")
        # One period first, so that taking the locks is over and every lock
        # has been extended at least once before the window.
        await asyncio.sleep(options.hb_interval / 2)
        before = [await snapshot(node.redis) for node in nodes]
        await child.send("start")
        await asyncio.sleep(options.seconds)
        await child.send("stop")
        after = [await snapshot(node.redis) for node in nodes]
        measured = await child.expect("measured")
        locks = [await locks_held(node) for node in nodes if node.primary]
    finally:
        await child.close()

    windows = [end - start for start, end in zip(before, after, strict=True)]
    ticks = measured["ticks"] or math.nan
    return Held(
        client_cpu_percent=100 * measured["cpu_seconds"] / measured["seconds"],
        primaries=combined(
            [w for w, node in zip(windows, nodes, strict=True) if node.primary]
        ),
        replicas=combined(
            [w for w, node in zip(windows, nodes, strict=True) if not node.primary]
        ),
        round_trips_per_tick=measured["round_trips"] / ticks,
        script_calls_per_tick=measured["script_calls"] / ticks,
        lost=measured["lost"],
        setup_seconds=ready["seconds"],
        errors=measured["errors"],
        warnings=measured["warnings"],
        locks_per_primary=locks,
        notes=measured["notes"],
    )


def held_rows(streams: int, held: Held, primaries: int) -> Iterator[Line]:
    """The table rows of one K."""
    case = f"K={streams:,}"
    yield Row(case, "client CPU % of a core", number(held.client_cpu_percent, 1))
    yield Row(case, "Redis CPU %, primaries", number(held.primaries.cpu_percent, 1))
    yield Row(case, "Redis CPU %, replicas", number(held.replicas.cpu_percent, 1))
    yield Row(case, "commands/s, primaries", number(held.primaries.commands_per_second))
    yield Row(
        case,
        "round trips per tick",
        number(held.round_trips_per_tick, 1),
        "primaries",
        number(primaries),
        ratio(held.round_trips_per_tick, primaries),
    )
    one_server = math.ceil(streams / LOCK_CHUNK)
    yield Row(
        case,
        "script calls per tick",
        number(held.script_calls_per_tick),
        "one server",
        number(one_server),
        ratio(held.script_calls_per_tick, one_server),
    )
    yield Row(case, "seconds to hold all K", number(held.setup_seconds, 1))
    yield Row(case, "locks lost", number(held.lost))
    yield Row(case, "errors / warnings logged", f"{held.errors} / {held.warnings}")
    even = streams / primaries
    for index, count in enumerate(held.locks_per_primary, start=1):
        yield Row(
            case,
            f"locks on primary {index}",
            number(count),
            "even split",
            number(even),
            ratio(count, even),
        )
    for note in held.notes:
        yield Note(f"{case}, the holder logged: {note}")


async def held_case(
    servers: RedisClusterServers, nodes: Sequence[Node], streams: int, options: Options
) -> list[Line]:
    """Hold *streams* and report it, or report what failed."""
    try:
        held = await measure_holder(servers, nodes, streams, options)
    except Exception as exc:
        return [
            Row(f"K={streams:,}", "failed", "see note"),
            failure_note(f"K={streams:,}, holding", exc),
        ]
    return list(held_rows(streams, held, options.primaries))


async def takeover_rows(servers: RedisClusterServers, options: Options) -> list[Line]:
    """Kill a holder of H streams; time a cluster client claiming them."""
    settings = takeover.Options(
        streams=options.held,
        ttls=options.ttls,
        rounds=options.rounds,
        claim_concurrency=options.claim_concurrency,
    )
    lines: list[Line] = []
    for ttl in options.ttls:
        progress(f"takeover, TTL {ttl:g} s")
        case = f"TTL {ttl:g} s, hz 10"
        delays = takeover.Delays()
        notes: list[Line] = []
        for attempt in range(options.rounds):
            try:
                await takeover.takeover_round(
                    servers.url, ttl, settings, delays, cluster=True
                )
            except Exception as exc:
                where = f"{case}, takeover round {attempt + 1}"
                notes.append(failure_note(where, exc))
        tried = options.held * options.rounds
        lines.extend(takeover.rows(case, ttl, delays, tried))
        lines.extend(notes)
    return lines


async def run(options: Options) -> list[Line]:
    """Run the whole cluster benchmark; the table rows."""
    shape = f"{options.primaries} primaries + {options.primaries * options.replicas}"
    lines: list[Line] = [
        Section(
            f"cluster ({shape} replicas): hold K streams {options.seconds:g} s, "
            f"hb_interval {options.hb_interval:g} s"
        )
    ]
    progress(f"starting a cluster of {shape} replicas")
    with cluster(
        options.redis_server, primaries=options.primaries, replicas=options.replicas
    ) as servers:
        nodes = await open_nodes(servers)
        try:
            progress("no client")
            lines.extend(await idle_rows(nodes, min(IDLE_SECONDS, options.seconds)))
            for streams in options.streams:
                progress(f"K={streams:,}")
                lines.extend(await held_case(servers, nodes, streams, options))
            kills = f"{options.rounds} kill{'s' if options.rounds > 1 else ''}"
            lines.append(
                Section(
                    f"cluster takeover: ms from SIGKILL of a holder of "
                    f"{options.held:,} streams; {kills} per case, "
                    f"{options.claim_concurrency} claims at a time"
                )
            )
            lines.extend(await takeover_rows(servers, options))
        finally:
            for node in nodes:
                await node.redis.aclose()
    return lines
