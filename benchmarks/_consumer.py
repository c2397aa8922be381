"""Consuming as fast as the library allows: assign, then finish at once.

:func:`consume` is shared by the in-process throughput run and by this
module's ``main``, a child process that is one of several consumers sharing
an LBS. The child starts its client, prints ``ready`` once it waits for
entries, and on ``stop`` prints ``counted``: how many streams it finished,
and when the last one was (system-wide monotonic clock).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from rsc_async import NotificationType, RedisStreamClient, RSCError

from ._child import commands, emit, next_command


@dataclass
class Tally:
    """Streams finished by one consumer, and when the last one was."""

    target: int | None = None
    finished: int = 0
    failed: int = 0
    last: float = 0.0
    last_cpu: float = 0.0
    complete: asyncio.Event = field(default_factory=asyncio.Event)


async def consume(client: RedisStreamClient, concurrency: int, tally: Tally) -> None:
    """Finish every stream the client is given, *concurrency* at a time.

    Each ``done_stream`` runs as a task of its own, so that calls made while
    one is in flight share the next round trip; the semaphore bounds them.
    """
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()

    async def finish(name: str) -> None:
        try:
            await client.done_stream(name)
            tally.finished += 1
            tally.last, tally.last_cpu = time.monotonic(), time.process_time()
        except RSCError:
            tally.failed += 1
        finally:
            slots.release()
        if tally.target is not None and tally.finished + tally.failed >= tally.target:
            tally.complete.set()

    async for notification in client.init():
        if notification.type is NotificationType.STREAM_ADDED:
            await slots.acquire()
            task = asyncio.create_task(finish(notification.payload.data_stream_name))
            running.add(task)
            task.add_done_callback(running.discard)


async def main(args: argparse.Namespace) -> None:
    """Start a client, say ``ready``, consume until ``stop``, report the tally."""
    redis = aioredis.Redis.from_url(args.url)
    client = RedisStreamClient(redis, args.service, consumer_id=args.consumer)
    stdin = await commands()
    await client.init()
    tally = Tally()
    consumer = asyncio.create_task(consume(client, args.concurrency, tally))
    emit("ready")
    while await next_command(stdin) not in ("stop", "exit"):
        pass
    emit("counted", finished=tally.finished, failed=tally.failed, last=tally.last)
    consumer.cancel()
    await asyncio.gather(consumer, return_exceptions=True)
    await client.done()
    await redis.aclose()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The consumer's arguments."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks._consumer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--consumer", required=True)
    parser.add_argument("--concurrency", type=int, default=500)
    return parser.parse_args(argv)


if __name__ == "__main__":
    try:
        asyncio.run(main(parse()))
    except Exception as exc:
        emit("error", error=repr(exc))
        raise
