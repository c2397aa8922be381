"""How soon a dead consumer's streams are claimed by another.

A holder process (:mod:`benchmarks._holder`) holds H streams and is SIGKILLed;
a consumer in this process, running before the kill, claims each stream when
it hears ``StreamExpired``. Per stream, two delays from the kill: until the
StreamExpired notification reached the claimer, and until its ``claim()``
returned. Each round kills at a random phase of the holder's heartbeat, so
the rounds together cover the whole interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

from rsc_async import LBSInfo, NotificationType, RedisStreamClient, RSCError

from ._child import Child
from ._redis import connect, create_group, fill_lbs, server, stream_names
from ._report import Line, Row, Section, announce, number, ratio

SERVICE = "bench"
TARGET_MARGIN_MS = 150.0
"""Kill-to-claim p99 should stay within the TTL plus this."""

CLAIM_CONCURRENCY = 50
"""Claims in flight at once: each holds a connection of the client's pool, and
redis-py's default pool refuses a connection past the hundredth."""

CLAIM_TIMEOUT = 10.0
"""Seconds past two TTLs after the kill before the round gives up waiting."""


@dataclass(frozen=True)
class Options:
    """Sizes of the takeover benchmark."""

    streams: int = 200
    ttls: Sequence[float] = (2.0, 0.5)
    hz: Sequence[int] = (10, 100)
    rounds: int = 5
    claim_concurrency: int = CLAIM_CONCURRENCY
    redis_server: str | None = None


QUICK = {"streams": 50, "rounds": 1, "hz": (10,)}
"""Overrides of :class:`Options` for a smoke run."""


@dataclass
class Delays:
    """Milliseconds from the kill, one per stream, over all rounds."""

    expired: list[float] = field(default_factory=list)
    claimed: list[float] = field(default_factory=list)
    failed: int = 0


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank *share* percentile of *values* (0 < share <= 1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def spread(values: Sequence[float]) -> str:
    """p50/p99/max, in whole milliseconds."""
    if not values:
        return "-"
    figures = (percentile(values, 0.5), percentile(values, 0.99), max(values))
    return "/".join(f"{figure:,.0f}" for figure in figures)


async def takeover_round(
    url: str,
    ttl: float,
    options: Options,
    delays: Delays,
    *,
    cluster: bool = False,
    hand_back: bool = False,
) -> None:
    """Hold *streams* in a child, kill it, and time this process claiming them.

    With *cluster*, *url* names a node of a Redis Cluster, and both the holder
    and the claimer use a cluster client. With *hand_back*, the holder is not
    killed but hands every stream back (``done(release=True)``), and the
    delays run from the moment it is told to.
    """
    async with contextlib.AsyncExitStack() as cleanup:
        redis = connect(url, cluster=cluster)
        cleanup.push_async_callback(redis.aclose)
        await redis.flushall()
        await create_group(redis, SERVICE)
        streams = options.streams
        await fill_lbs(redis, SERVICE, stream_names(streams))
        holder = await Child.start(
            "_holder",
            f"--url={url}",
            f"--service={SERVICE}",
            f"--streams={streams}",
            f"--hb-interval={ttl}",
            *(["--cluster"] if cluster else []),
        )
        cleanup.push_async_callback(holder.close)
        claimer_redis = connect(url, cluster=cluster)
        cleanup.push_async_callback(claimer_redis.aclose)
        claimer = RedisStreamClient(
            claimer_redis,
            SERVICE,
            consumer_id="claimer",
            hb_interval=ttl,
            lbs_idle_time=max(40.0, 2 * ttl),
        )
        cleanup.push_async_callback(claimer.done)
        await holder.expect("ready")
        await claimer.init()
        # Held a TTL first, as streams of a live consumer are (a claimer that
        # follows the protocol XCLAIMs with a min-idle of one TTL); the
        # random part puts the kill anywhere in the heartbeat's period.
        await asyncio.sleep(ttl + random.uniform(0, ttl / 2))
        killed = time.monotonic()
        if hand_back:
            await holder.send("release")
        else:
            holder.kill()
        await asyncio.wait_for(
            claim_all(claimer, killed, options, delays), 2 * ttl + CLAIM_TIMEOUT
        )


async def claim_all(
    client: RedisStreamClient, killed: float, options: Options, delays: Delays
) -> None:
    """Claim each stream on StreamExpired until every stream was tried."""
    tried = 0
    all_tried = asyncio.Event()
    running: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(options.claim_concurrency)

    async def claim(info: LBSInfo) -> None:
        nonlocal tried
        try:
            async with slots:
                await client.claim(info)
            delays.claimed.append(1000 * (time.monotonic() - killed))
        except RSCError:
            # Another claimer cannot exist here, so any failure is counted:
            # the row of streams claimed shows it.
            delays.failed += 1
        finally:
            tried += 1
            if tried == options.streams:
                all_tried.set()

    async def listen() -> None:
        async for notification in client.init():
            if notification.type is NotificationType.STREAM_EXPIRED:
                delays.expired.append(1000 * (time.monotonic() - killed))
                task = asyncio.create_task(claim(notification.payload))
                running.add(task)
                task.add_done_callback(running.discard)

    listener = asyncio.create_task(listen())
    try:
        await all_tried.wait()
    finally:
        listener.cancel()
        await asyncio.gather(listener, *running, return_exceptions=True)


progress = partial(announce, "takeover")
"""Say on stderr what runs now."""


def handoff_rows(ttl: float, delays: Delays, tried: int) -> list[Line]:
    """The rows of a hand-back at one TTL, against that TTL."""
    case = f"release_stream, TTL {ttl:g} s"
    ttl_ms = 1000 * ttl
    claimed_p99 = percentile(delays.claimed, 0.99) if delays.claimed else math.nan
    return [
        Row(case, "ms to expiry p50/p99/max", spread(delays.expired)),
        Row(
            case,
            "ms to claim p50/p99/max",
            spread(delays.claimed),
            "TTL",
            number(ttl_ms),
            ratio(claimed_p99, ttl_ms),
        ),
        Row(case, "streams claimed", f"{len(delays.claimed):,}/{tried:,}"),
    ]


def rows(case: str, ttl: float, delays: Delays, tried: int) -> list[Line]:
    """The table rows of one TTL, under the name *case*."""
    ttl_ms = 1000 * ttl
    target = ttl_ms + TARGET_MARGIN_MS
    expired_p99 = percentile(delays.expired, 0.99) if delays.expired else math.nan
    claimed_p99 = percentile(delays.claimed, 0.99) if delays.claimed else math.nan
    return [
        Row(
            case,
            "ms to expiry p50/p99/max",
            spread(delays.expired),
            "TTL",
            number(ttl_ms),
            ratio(expired_p99, ttl_ms),
        ),
        Row(
            case,
            "ms to claim p50/p99/max",
            spread(delays.claimed),
            "TTL + 150 ms",
            number(target),
            ratio(claimed_p99, target),
        ),
        Row(case, "streams claimed", f"{len(delays.claimed):,}/{tried:,}"),
    ]


async def run(options: Options) -> list[Line]:
    """Run the whole takeover benchmark; the table rows."""
    lines: list[Line] = [
        Section(
            f"takeover: ms from SIGKILL of a holder of {options.streams:,} streams; "
            f"{options.rounds} kill{'s' if options.rounds > 1 else ''} per case, "
            f"{options.claim_concurrency} claims at a time"
        )
    ]
    for hz in options.hz:
        with server(options.redis_server, hz=hz) as url:
            for ttl in options.ttls:
                progress(f"TTL {ttl:g} s, hz {hz}")
                delays = Delays()
                for _ in range(options.rounds):
                    await takeover_round(url, ttl, options, delays)
                tried = options.streams * options.rounds
                lines.extend(rows(f"TTL {ttl:g} s, hz {hz}", ttl, delays, tried))
    lines.append(
        Section(
            f"handoff: ms from telling a holder of {options.streams:,} streams to "
            f"hand them back to their claim; hz {options.hz[0]}"
        )
    )
    with server(options.redis_server, hz=options.hz[0]) as url:
        for ttl in options.ttls:
            progress(f"hand-back, TTL {ttl:g} s")
            delays = Delays()
            for _ in range(options.rounds):
                await takeover_round(url, ttl, options, delays, hand_back=True)
            tried = options.streams * options.rounds
            lines.extend(handoff_rows(ttl, delays, tried))
    return lines
