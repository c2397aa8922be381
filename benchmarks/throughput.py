"""Assigning and finishing LBS entries: entries per second end to end.

N entries wait in the LBS; a consumer takes each (XREADGROUP, its lock taken,
a StreamAdded notification) and finishes it at once (``done_stream``:
compare-and-delete of the lock, XACK, XDEL). Beside the library run the same
Redis commands from a plain ``redis.asyncio`` loop, pipelined per batch (the
practical limit) and one command per round trip (a naive client), and the
library again with several consumer processes sharing the N entries.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import redis.asyncio as aioredis

from rsc_async import MUTEX_KEY_SEP, RedisStreamClient

from ._child import Child
from ._consumer import Tally, consume
from ._redis import (
    ServerStats,
    Window,
    create_group,
    fill_lbs,
    parse_lbs_name,
    server,
    snapshot,
    stream_names,
)
from ._report import Line, Row, Section, announce, number, ratio

SERVICE = "bench"
LBS = f"{SERVICE}-input"
GROUP = f"{SERVICE}-group"
RAW_CONSUMER = "redis-consumer-raw"
TTL_MS = 2000
POLL_SECONDS = 0.01
"""How often the LBS is checked for emptiness while child consumers work."""


@dataclass(frozen=True)
class Options:
    """Sizes of the throughput benchmark."""

    entries: int = 20_000
    workers: int = 4
    concurrency: int = 500
    read_count: int = 100
    redis_server: str | None = None


QUICK = {"entries": 2_000}
"""Overrides of :class:`Options` for a smoke run."""


@dataclass(frozen=True)
class Rate:
    """How fast one way of consuming got through the entries, and at what cost."""

    entries: int
    seconds: float
    client_cpu_seconds: float
    server: Window

    @property
    def per_second(self) -> float:
        """Entries assigned and finished per second."""
        return self.entries / self.seconds

    @property
    def client_usec_per_entry(self) -> float:
        """Client CPU microseconds per entry (this process only)."""
        return 1e6 * self.client_cpu_seconds / self.entries

    @property
    def server_usec_per_entry(self) -> float:
        """Redis CPU microseconds per entry."""
        return 1e6 * self.server.cpu_seconds / self.entries


class Producer:
    """Puts the N entries in the LBS in one transaction; the clock starts then.

    A consumer that is already waiting sees them all at once, so its start-up
    is not timed, and neither is the producer.
    """

    def __init__(self, redis: aioredis.Redis, entries: int) -> None:
        self.redis = redis
        self.entries = entries
        self.filled_at = 0.0
        self.cpu_at = 0.0
        self.before: ServerStats | None = None

    async def fill(self) -> None:
        """Add every entry, then note the time and the server's counters."""
        await fill_lbs(self.redis, SERVICE, stream_names(self.entries), at_once=True)
        self.filled_at, self.cpu_at = time.monotonic(), time.process_time()
        self.before = await snapshot(self.redis)


Consumer = Callable[[str, Producer], Awaitable[tuple[int, float, float]]]
"""Fills the LBS through the producer when ready, empties it; returns how many
entries it finished, and the wall clock and process CPU time at the last."""


async def timed(options: Options, consumer: Consumer) -> Rate:
    """Time *consumer* emptying a fresh server's LBS of N entries."""
    with server(options.redis_server) as url:
        redis = aioredis.Redis.from_url(url)
        await create_group(redis, SERVICE)
        producer = Producer(redis, options.entries)
        entries, last, last_cpu = await consumer(url, producer)
        assert producer.before is not None
        window = await snapshot(redis) - producer.before
        left = await redis.xlen(LBS)
        await redis.aclose()
    if left or entries != options.entries:
        msg = f"{entries} of {options.entries} entries finished, {left} left in the LBS"
        raise RuntimeError(msg)
    return Rate(entries, last - producer.filled_at, last_cpu - producer.cpu_at, window)


def library(options: Options) -> Consumer:
    """One RedisStreamClient in this process, finishing concurrently."""

    async def run(url: str, producer: Producer) -> tuple[int, float, float]:
        redis = aioredis.Redis.from_url(url)
        client = RedisStreamClient(
            redis, SERVICE, consumer_id="library", read_batch=options.read_count
        )
        await client.init()
        tally = Tally(target=options.entries)
        consumer = asyncio.create_task(consume(client, options.concurrency, tally))
        await producer.fill()
        complete = asyncio.create_task(tally.complete.wait())
        await asyncio.wait({consumer, complete}, return_when=asyncio.FIRST_COMPLETED)
        consumer.cancel()
        await asyncio.gather(consumer, return_exceptions=True)
        complete.cancel()
        await client.done()
        await redis.aclose()
        return tally.finished, tally.last, tally.last_cpu

    return run


async def read_batch(redis: aioredis.Redis, count: int) -> list[tuple[str, str]]:
    """XREADGROUP up to *count* new entries: (entry id, lock key) pairs."""
    reply: Any = await redis.xreadgroup(
        GROUP, RAW_CONSUMER, {LBS: ">"}, count=count, block=1000
    )
    batch = []
    for _, entries in reply or ():
        for raw_id, fields in entries:
            entry_id = raw_id.decode()
            # A consumer must parse the entry to know the name of its lock.
            name = parse_lbs_name(fields)
            batch.append((entry_id, f"{name}{MUTEX_KEY_SEP}{entry_id}"))
    return batch


def pipelined(options: Options) -> Consumer:
    """Plain redis.asyncio: three round trips per batch of entries."""

    async def run(_: str, producer: Producer) -> tuple[int, float, float]:
        redis = producer.redis
        await producer.fill()
        finished = 0
        while finished < options.entries:
            batch = await read_batch(redis, options.read_count)
            async with redis.pipeline(transaction=False) as pipe:
                for _, key in batch:
                    pipe.set(key, RAW_CONSUMER, nx=True, px=TTL_MS)
                await pipe.execute()
            async with redis.pipeline(transaction=False) as pipe:
                for entry_id, key in batch:
                    pipe.delete(key)
                    pipe.xack(LBS, GROUP, entry_id)
                    pipe.xdel(LBS, entry_id)
                await pipe.execute()
            finished += len(batch)
        return finished, time.monotonic(), time.process_time()

    return run


def naive(options: Options) -> Consumer:
    """Plain redis.asyncio, one command per round trip."""

    async def run(_: str, producer: Producer) -> tuple[int, float, float]:
        redis = producer.redis
        await producer.fill()
        finished = 0
        while finished < options.entries:
            batch = await read_batch(redis, options.read_count)
            for _, key in batch:
                await redis.set(key, RAW_CONSUMER, nx=True, px=TTL_MS)
            for entry_id, key in batch:
                await redis.delete(key)
                await redis.xack(LBS, GROUP, entry_id)
                await redis.xdel(LBS, entry_id)
            finished += len(batch)
        return finished, time.monotonic(), time.process_time()

    return run


@dataclass(frozen=True)
class Shared:
    """Several consumer processes emptying one LBS."""

    rate: Rate
    per_worker: list[int]


async def workers(options: Options) -> Shared:
    """W child processes, each a RedisStreamClient, timed from fill to empty."""
    with server(options.redis_server) as url:
        redis = aioredis.Redis.from_url(url)
        await create_group(redis, SERVICE)
        children = [
            await Child.start(
                "_consumer",
                f"--url={url}",
                f"--service={SERVICE}",
                f"--consumer=worker-{n}",
                f"--concurrency={options.concurrency}",
            )
            for n in range(options.workers)
        ]
        try:
            for child in children:
                await child.expect("ready")
            producer = Producer(redis, options.entries)
            await producer.fill()
            # The LBS empties in other processes: there is no event to wait
            # on here, only its length to poll.
            while await redis.xlen(LBS):  # noqa: ASYNC110
                await asyncio.sleep(POLL_SECONDS)
            assert producer.before is not None
            window = await snapshot(redis) - producer.before
            counts = []
            for child in children:
                await child.send("stop")
                counts.append(await child.expect("counted"))
        finally:
            for child in children:
                await child.close()
            await redis.aclose()
    # Each child stamps its last finish with the system-wide monotonic clock.
    last = max(count["last"] for count in counts)
    finished = [int(count["finished"]) for count in counts]
    rate = Rate(sum(finished), last - producer.filled_at, 0.0, window)
    return Shared(rate, finished)


progress = partial(announce, "throughput")
"""Say on stderr what runs now."""


async def run(options: Options) -> list[Line]:
    """Run the whole throughput benchmark; the table rows."""
    progress("library, one consumer")
    ours = await timed(options, library(options))
    progress("raw redis.asyncio, pipelined")
    batched = await timed(options, pipelined(options))
    progress("raw redis.asyncio, one command per round trip")
    single = await timed(options, naive(options))
    progress(f"library, {options.workers} consumer processes")
    shared = await workers(options)

    n = f"N={options.entries:,}"
    one = f"{n}, 1 consumer"
    many = f"{n}, {options.workers} processes"
    lines: list[Line] = [
        Section(
            f"throughput: assign + finish, XREADGROUP COUNT {options.read_count}, "
            f"done_stream {options.concurrency} at a time"
        ),
        Row(
            one,
            "entries/s",
            number(ours.per_second),
            "pipelined raw",
            number(batched.per_second),
            ratio(ours.per_second, batched.per_second),
        ),
        Row(
            one,
            "entries/s",
            number(ours.per_second),
            "naive raw",
            number(single.per_second),
            ratio(ours.per_second, single.per_second),
        ),
        Row(
            one,
            "client CPU us per entry",
            number(ours.client_usec_per_entry, 1),
            "pipelined raw",
            number(batched.client_usec_per_entry, 1),
            ratio(ours.client_usec_per_entry, batched.client_usec_per_entry),
        ),
        Row(
            one,
            "Redis CPU us per entry",
            number(ours.server_usec_per_entry, 1),
            "pipelined raw",
            number(batched.server_usec_per_entry, 1),
            ratio(ours.server_usec_per_entry, batched.server_usec_per_entry),
        ),
        Row(
            many,
            "entries/s, all processes",
            number(shared.rate.per_second),
            "1 consumer",
            number(ours.per_second),
            ratio(shared.rate.per_second, ours.per_second),
        ),
        Row(
            many,
            "entries per process",
            f"{min(shared.per_worker):,}-{max(shared.per_worker):,}",
        ),
        Row(
            many,
            "Redis CPU us per entry",
            number(shared.rate.server_usec_per_entry, 1),
            "1 consumer",
            number(ours.server_usec_per_entry, 1),
            ratio(shared.rate.server_usec_per_entry, ours.server_usec_per_entry),
        ),
    ]
    return lines
