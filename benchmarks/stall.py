"""How long the event loop may be blocked before a consumer loses its locks.

The README says a handler that blocks the loop for longer than half of
``hb_interval`` risks its locks, and for longer than ``hb_interval`` loses
them; ``heartbeat_thread=True`` is the way out. For each block duration and
each heartbeat mode, R rounds: a fresh client per round holds S streams
handed out with :func:`rsc_async.add_stream`, the loop is blocked with
``time.sleep`` (as CPU-bound code would block it), and two heartbeat periods
later the round counts as kept when no ``StreamDisowned`` came and every lock
key still names the consumer.

The R rounds of a case run at once, each client on its own connections and
service, and share one block: a blocked loop stops every client on it alike.
Each client starts at a seeded random offset within the heartbeat period, so
the block falls at a random phase of each one's heartbeat; the lock TTL left
when the block starts is read, which says what a heartbeat that stops during
the block would keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial

import anyio
import redis.asyncio as aioredis

from rsc_async import MUTEX_KEY_SEP, NotificationType, RedisStreamClient, add_stream

from ._redis import server, stream_names
from ._report import Line, Note, Row, Section, announce

SERVICE = "stall"

AFTER_PERIODS = 2
"""Heartbeat periods waited after the block before the locks are checked: the
tick missed during the block, then one more, have both run by then."""

HOLD_TIMEOUT = 10.0
"""Seconds a round may take to start and hold its streams."""

LIBRARY_LOG = logging.getLogger("benchmarks.stall.rsc_async")
"""The clients' logger. Lost locks are what this benchmark counts; a warning
per lost lock would bury the progress lines on stderr."""
LIBRARY_LOG.setLevel(logging.ERROR)


@dataclass(frozen=True)
class Options:
    """Sizes of the stall benchmark."""

    hb_interval: float = 1.0
    blocks: Sequence[float] = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)
    streams: int = 20
    rounds: int = 10
    seed: int = 1
    redis_server: str | None = None


QUICK = {"rounds": 3}
"""Overrides of :class:`Options` for a smoke run."""

MODES = (("loop", False), ("thread", True))
"""Each heartbeat mode: its name in the table, and ``heartbeat_thread``."""


@dataclass
class Round:
    """One client, the locks it should hold, and what it was told."""

    client: RedisStreamClient
    keys: list[str] = field(default_factory=list)
    added: int = 0
    disowned: int = 0
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    ttl_left: float = 0.0
    listener: asyncio.Task[None] | None = None

    async def listen(self, streams: int) -> None:
        """Count the notifications until the client stops."""
        async for notification in self.client.init():
            if notification.type is NotificationType.STREAM_ADDED:
                self.added += 1
                if self.added == streams:
                    self.holding.set()
            elif notification.type is NotificationType.STREAM_DISOWNED:
                self.disowned += 1

    async def close(self) -> None:
        """Stop the client, then its listener, which its end of notifications ends."""
        await self.client.done()
        if self.listener is not None:
            await asyncio.gather(self.listener, return_exceptions=True)


@dataclass(frozen=True)
class Outcome:
    """What the rounds of one case came to."""

    block: float
    kept: int
    predicted: int
    rounds: int


def block_loop(seconds: float) -> None:
    """Hold the event loop for *seconds*, as a CPU-bound handler would.

    A sleep rather than a busy loop: it blocks the loop just the same, and it
    leaves the CPU to the heartbeat thread and the server, so the figures do
    not depend on how many cores are free.
    """
    time.sleep(seconds)


async def start_round(
    cleanup: contextlib.AsyncExitStack,
    url: str,
    index: int,
    delay: float,
    heartbeat_thread: bool,
    options: Options,
) -> Round:
    """After *delay* seconds, start a client and hand it its streams."""
    await asyncio.sleep(delay)
    redis = aioredis.Redis.from_url(url)
    cleanup.push_async_callback(redis.aclose)
    service = f"{SERVICE}-{index}"
    client = RedisStreamClient(
        redis,
        service,
        consumer_id=service,
        hb_interval=options.hb_interval,
        lbs_idle_time=max(40.0, 2 * options.hb_interval),
        reconcile_interval=0,
        heartbeat_thread=heartbeat_thread,
        logger=LIBRARY_LOG,
    )
    stall_round = Round(client)
    cleanup.push_async_callback(stall_round.close)
    await client.init()
    stall_round.listener = asyncio.create_task(stall_round.listen(options.streams))
    for name in stream_names(options.streams, prefix=service):
        entry_id = await add_stream(redis, service, name)
        stall_round.keys.append(f"{name}{MUTEX_KEY_SEP}{entry_id}")
    await stall_round.holding.wait()
    return stall_round


async def ttls_left(redis: aioredis.Redis, rounds: Sequence[Round]) -> None:
    """Set each round's shortest lock TTL left, in seconds, in one round trip."""
    async with redis.pipeline(transaction=False) as pipe:
        for stall_round in rounds:
            for key in stall_round.keys:
                pipe.pttl(key)
        replies = await pipe.execute()
    start = 0
    for stall_round in rounds:
        ttls = replies[start : start + len(stall_round.keys)]
        start += len(stall_round.keys)
        stall_round.ttl_left = min(ttls) / 1000


async def locks_kept(redis: aioredis.Redis, stall_round: Round) -> bool:
    """Whether the round was told of no lost lock and every lock names it."""
    holders = await redis.mget(stall_round.keys)
    owner = stall_round.client.id.encode()
    return stall_round.disowned == 0 and all(value == owner for value in holders)


async def stall_case(
    url: str,
    heartbeat_thread: bool,
    block: float,
    options: Options,
    rng: random.Random,
) -> Outcome:
    """Start the rounds of one case, block the loop once, count who kept."""
    period = options.hb_interval / 2
    delays = [rng.uniform(0, period) for _ in range(options.rounds)]
    async with contextlib.AsyncExitStack() as cleanup:
        redis = aioredis.Redis.from_url(url)
        cleanup.push_async_callback(redis.aclose)
        await redis.flushall()
        with anyio.fail_after(HOLD_TIMEOUT):
            rounds = await asyncio.gather(
                *(
                    start_round(cleanup, url, index, delay, heartbeat_thread, options)
                    for index, delay in enumerate(delays)
                )
            )

        # A period more, so that every lock was extended by a tick since it
        # was taken: the heartbeat's phase alone then sets its TTL.
        await asyncio.sleep(period)
        await ttls_left(redis, rounds)
        block_loop(block)
        await asyncio.sleep(AFTER_PERIODS * period)

        kept = [await locks_kept(redis, stall_round) for stall_round in rounds]
        predicted = sum(block < stall_round.ttl_left for stall_round in rounds)
        # Stopped side by side rather than one by one in the clean-up, where
        # ten clients' done() would add up; done() again there returns at once.
        await asyncio.gather(*(stall_round.close() for stall_round in rounds))
        return Outcome(block, sum(kept), predicted, len(rounds))


def longest_always_kept(outcomes: Sequence[Outcome]) -> float | None:
    """The longest block kept in every round, every shorter one kept too."""
    longest = None
    for outcome in sorted(outcomes, key=lambda outcome: outcome.block):
        if outcome.kept < outcome.rounds:
            break
        longest = outcome.block
    return longest


def shortest_always_lost(outcomes: Sequence[Outcome]) -> float | None:
    """The shortest block lost in every round, every longer one lost too."""
    shortest = None
    for outcome in sorted(outcomes, key=lambda outcome: -outcome.block):
        if outcome.kept > 0:
            break
        shortest = outcome.block
    return shortest


def seconds(value: float | None) -> str:
    """*value* in seconds, two decimals; ``none`` when there is no such block."""
    return "none" if value is None else f"{value:.2f} s"


def rows(mode: str, outcomes: Sequence[Outcome], options: Options) -> list[Line]:
    """The table rows of one heartbeat mode."""
    hb = options.hb_interval
    lines: list[Line] = [
        Row(
            f"{mode}, block {outcome.block:.2f} s ({outcome.block / hb:g}x hb)",
            "rounds with no lock lost",
            f"kept {outcome.kept}/{outcome.rounds}",
            "heartbeat stopped",
            f"{outcome.predicted}/{outcome.rounds}",
        )
        for outcome in outcomes
    ]
    longest = longest_always_kept(outcomes)
    shortest = shortest_always_lost(outcomes)
    if mode == "loop":
        lines.append(
            Row(
                mode,
                "longest block always kept",
                seconds(longest),
                "hb_interval / 2",
                seconds(hb / 2),
            )
        )
        lines.append(
            Row(
                mode,
                "shortest block always lost",
                seconds(shortest),
                "hb_interval",
                seconds(hb),
            )
        )
    else:
        tried = max(outcome.block for outcome in outcomes)
        lines.append(
            Row(
                mode,
                "longest block always kept",
                seconds(longest),
                "longest tried",
                seconds(tried),
            )
        )
        lines.append(Row(mode, "shortest block always lost", seconds(shortest)))
    return lines


progress = partial(announce, "stall")
"""Say on stderr what runs now."""


async def run(options: Options) -> list[Line]:
    """Run the whole stall benchmark; the table rows."""
    hb = options.hb_interval
    lines: list[Line] = [
        Section(
            f"stall: loop blocked by time.sleep; hb_interval {hb:g} s, "
            f"{options.streams} streams a client, {options.rounds} rounds a case"
        )
    ]
    rng = random.Random(options.seed)
    with server(options.redis_server) as url:
        for mode, heartbeat_thread in MODES:
            outcomes = []
            for multiple in options.blocks:
                block = multiple * hb
                progress(f"{mode} heartbeat, block {block:.2f} s")
                outcomes.append(
                    await stall_case(url, heartbeat_thread, block, options, rng)
                )
            lines.extend(rows(mode, outcomes, options))
    lines.append(
        Note(
            "loop: the default heartbeat, on the event loop; thread: "
            "heartbeat_thread=True. 'heartbeat stopped' counts the rounds whose "
            "lock TTL left at the block's start was longer than the block."
        )
    )
    return lines
