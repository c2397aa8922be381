"""One chaos consumer: a process that works through data streams until told to stop.

Run by the chaos driver as ``python -m tests.chaos.consumer --url ... --name ...``.
For each stream it is given (``StreamAdded``) or wins (``StreamExpired`` then
``claim()``), it reads the stream's messages, writes each one through the
ledger's fenced write under its fencing token, taking a little time per
message so that kills land mid-work, then calls ``done_stream``. A write that
is fenced out means another consumer took the stream over: the work stops
there. ``StreamDisowned`` stops the work at once.

SIGTERM (or the parent going away) stops it: it waits for the work in hand,
hands back whatever it still holds and exits 0; 1 if its notifications ended
on their own.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
import time
from collections.abc import Awaitable, Callable

import anyio
import redis.asyncio as aioredis
from anyio.abc import TaskGroup

from rsc_async import (
    AlreadyClaimedError,
    DataStreamNotFoundError,
    InvalidLBSMessageError,
    LBSInfo,
    LockLostError,
    Notifications,
    PoisonStreamError,
    RedisCommandError,
    RedisStreamClient,
    RetryConfig,
    RSCError,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    StreamTerminated,
)

from ._ledger import Holding, Ledger, retrying, text

log = logging.getLogger("chaos.consumer")

START_TIMEOUT = 60.0
"""Seconds to keep trying ``init()`` while the server restarts."""

DRAIN_TIMEOUT = 15.0
"""Seconds a stopping consumer waits for the work in hand."""

DONE_ATTEMPTS = 20
"""done_stream calls made while Redis fails, before the outcome is unknown."""


class ChaosConsumer:
    """Turns notifications into work on data streams and records every step.

    Args:
        client: the running client.
        ledger: where claims, writes and finishes are recorded.
        rng: times the work per message.
        work_s: the longest time spent on one message, in seconds.
    """

    def __init__(
        self,
        client: RedisStreamClient,
        ledger: Ledger,
        rng: random.Random,
        work_s: float,
    ) -> None:
        self._client = client
        self._ledger = ledger
        self._rng = rng
        self._work_s = work_s
        self.name = client.id
        self.terminated = False
        # Keyed by (stream, token): after losing a stream and winning it back,
        # the stale work must stop, not the fresh one.
        self._working: dict[tuple[str, int], anyio.CancelScope] = {}
        self._tasks = 0
        self._quiet = anyio.Event()
        self._quiet.set()

    async def consume(self, notifications: Notifications, works: TaskGroup) -> None:
        """Read notifications until they end, starting work in *works*."""
        async for notification in notifications:
            if isinstance(notification, StreamAdded):
                token = notification.fencing_token
                if token is None:
                    await self._ledger.anomaly(f"{notification!r} has no token")
                    continue
                name = notification.payload.data_stream_name
                self._spawn(works, self._work, name, token, "added")
            elif isinstance(notification, StreamExpired):
                self._spawn(works, self._claim, notification.payload)
            elif isinstance(notification, StreamDisowned):
                self._disowned(notification)
            elif isinstance(notification, StreamTerminated):
                self.terminated = True
                await self._ledger.anomaly(
                    f"{self.name}: notifications ended: {notification!r}"
                )
                return

    async def wait_quiet(self) -> None:
        """Return once no work or claim is in flight."""
        await self._quiet.wait()

    def _spawn(
        self, works: TaskGroup, func: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        self._tasks += 1
        if self._quiet.is_set():
            self._quiet = anyio.Event()
        works.start_soon(self._counted, func, *args)

    async def _counted(
        self, func: Callable[..., Awaitable[None]], *args: object
    ) -> None:
        try:
            await func(*args)
        finally:
            self._tasks -= 1
            if not self._tasks:
                self._quiet.set()

    def _disowned(self, notification: StreamDisowned) -> None:
        name = notification.payload.data_stream_name
        scope = self._working.get((name, notification.fencing_token or 0))
        log.info(
            "%s: disowned %s (token %s)", self.name, name, notification.fencing_token
        )
        if scope is not None:
            scope.cancel()

    async def _claim(self, info: LBSInfo) -> None:
        try:
            token = await self._client.claim(info)
        except AlreadyClaimedError:
            return
        except (PoisonStreamError, InvalidLBSMessageError) as exc:
            await self._ledger.anomaly(f"{self.name}: claim set aside: {exc}")
            return
        except RedisCommandError as exc:
            # The entry stays pending without a lock: the sweep announces it.
            log.warning("%s: claim of %s failed: %s", self.name, info, exc)
            await self._ledger.count("claim_failed")
            return
        except RSCError as exc:
            log.info("%s: claim while stopping: %s", self.name, exc)
            return
        await self._work(info.data_stream_name, token, "claimed")

    async def _work(self, name: str, token: int, how: str) -> None:
        holding = Holding(name, token, self.name, time.time(), how)
        with anyio.CancelScope() as scope:
            self._working[(name, token)] = scope
            try:
                if await self._process(holding):
                    # Once done_stream is sent, its outcome must be recorded
                    # whatever happens to this task.
                    with anyio.CancelScope(shield=True):
                        await self._finish(holding)
            finally:
                del self._working[(name, token)]
        if scope.cancelled_caught:
            await self._ledger.count("work_stopped_by_disown")

    async def _process(self, holding: Holding) -> bool:
        """Write every message of the stream; False when fenced out or gone."""
        name, token = holding.stream, holding.token
        await self._ledger.claimed(holding)
        try:
            current = self._client.fencing_token(name)
        except DataStreamNotFoundError:
            return False
        if current != token:
            # A newer holding of this consumer replaced this one already.
            if current < token:
                await self._ledger.anomaly(
                    f"{self.name}: fencing_token({name!r}) is {current}, "
                    f"older than the notified {token}"
                )
            return False
        messages = await retrying(lambda: self._ledger.redis.xrange(name))
        for message_id, _fields in messages or ():
            assert message_id is not None
            await anyio.sleep(self._rng.uniform(self._work_s / 10, self._work_s))
            write = text(message_id), token, self.name
            if not await self._ledger.fenced_write(name, *write):
                log.info(
                    "%s: write to %s fenced out (token %d)", self.name, name, token
                )
                await self._ledger.count("fenced_out")
                return False
        return True

    async def _finish(self, holding: Holding) -> None:
        await self._ledger.finishing_started(holding)
        failures = 0
        while True:
            try:
                await self._client.done_stream(holding.stream)
                break
            except (LockLostError, DataStreamNotFoundError) as exc:
                log.info("%s: done_stream: %s", self.name, exc)
                await self._ledger.count(type(exc).__name__)
                if failures:
                    await self._ledger.outcome_unknown(holding)
                return
            except RedisCommandError as exc:
                failures += 1
                log.warning("%s: done_stream failed: %s", self.name, exc)
                await self._ledger.count("done_failed")
                if failures >= DONE_ATTEMPTS:
                    await self._ledger.outcome_unknown(holding)
                    return
                await anyio.sleep(0.1)
        finished = Holding(holding.stream, holding.token, self.name, time.time())
        await self._ledger.finished_stream(finished)


async def _start_client(
    connection: aioredis.Redis, options: argparse.Namespace
) -> tuple[RedisStreamClient, Notifications]:
    """A started client; a fresh one per attempt while the server is away."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        client = RedisStreamClient(
            connection,
            options.service,
            consumer_id=options.name,
            hb_interval=options.hb_interval,
            lbs_idle_time=options.lbs_idle_time,
            reconcile_interval=options.reconcile_interval,
            max_deliveries=options.max_deliveries,
            retry=RetryConfig(max_retries=-1, initial_delay=0.05, max_delay=0.5),
        )
        try:
            return client, await client.init()
        except RedisCommandError as exc:
            await client.done()
            if time.monotonic() > deadline:
                raise
            log.warning("%s: init failed, trying again: %s", options.name, exc)
        await anyio.sleep(0.2)


async def _watch_parent(parent: int, stop: anyio.Event) -> None:
    # A driver that dies without stopping its consumers must not leave them
    # running forever.
    while True:
        await anyio.sleep(0.5)
        if os.getppid() != parent:
            stop.set()
            return


async def run(options: argparse.Namespace) -> int:
    """Consume until SIGTERM; the process's exit status."""
    parent = os.getppid()
    stop = anyio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    connection = aioredis.Redis.from_url(options.url)
    ledger = Ledger(
        aioredis.Redis.from_url(options.url, decode_responses=True), options.service
    )
    try:
        client, notifications = await _start_client(connection, options)
        consumer = ChaosConsumer(
            client, ledger, random.Random(options.seed), options.work_ms / 1000
        )
        await ledger.mark_ready(client.id, os.getpid())
        log.info("%s: ready", client.id)
        async with anyio.create_task_group() as works:
            async with anyio.create_task_group() as reading:

                async def consume() -> None:
                    await consumer.consume(notifications, works)
                    stop.set()

                reading.start_soon(consume)
                reading.start_soon(_watch_parent, parent, stop)
                await stop.wait()
                reading.cancel_scope.cancel()
            with anyio.move_on_after(DRAIN_TIMEOUT):
                await consumer.wait_quiet()
            works.cancel_scope.cancel()
        await client.done(release=True)
        log.info("%s: stopped", client.id)
        return 1 if consumer.terminated else 0
    finally:
        await connection.aclose()
        await ledger.redis.aclose()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The consumer's options."""
    parser = argparse.ArgumentParser(prog="python -m tests.chaos.consumer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-ms", type=float, default=200.0)
    parser.add_argument("--hb-interval", type=float, default=0.5)
    parser.add_argument("--lbs-idle-time", type=float, default=1.0)
    parser.add_argument("--reconcile-interval", type=float, default=1.0)
    parser.add_argument("--max-deliveries", type=int, default=50)
    return parser.parse_args(argv)


def main() -> None:
    """Entry point: log to stderr, run, exit with the status."""
    options = parse_args()
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(process)d %(name)s %(levelname)s %(message)s",
    )
    sys.exit(asyncio.run(run(options)))


if __name__ == "__main__":
    main()
