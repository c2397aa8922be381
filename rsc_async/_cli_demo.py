"""``rsc-async demo``: three consumers share six data streams; one crashes.

The consumers are child processes (``python -m rsc_async._cli_demo``) so that
one of them can really die: SIGKILL leaves its locks to expire, as a crash
would, and the others hear of it and take its streams over. Each child reports
what happens to it as one JSON object per line on its stdout; the parent
prints those reports with the time since the demo started.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO
from uuid import uuid4

import anyio
import redis.asyncio as aioredis

from ._cli_connection import Connection, connection_flags
from ._cli_render import MAX_WIDTH
from ._cli_table import truncate
from ._client import RedisStreamClient
from ._errors import AlreadyClaimedError
from ._models import NotificationType
from ._outbox import Notifications
from ._producer import add_stream

CONSUMERS = ("ann", "bob", "cyd")
STREAM_COUNT = 6
STAMP_WIDTH = 9
"""Columns of the ``  1.26s  `` before each line the demo prints."""
STEP_TIMEOUT = 20.0
"""Seconds one step may take, beyond a few lock lifetimes, before giving up."""


class DemoError(Exception):
    """A step of the demo did not happen in time."""


@dataclass(frozen=True)
class Report:
    """One line a consumer printed, and when the demo read it."""

    at: float
    consumer: str
    event: str
    stream: str | None = None
    detail: str = ""


class Demo:
    """Runs the consumers, the producer and the crash, and narrates them."""

    def __init__(self, connection: Connection, hb_interval: float, out: TextIO) -> None:
        self.connection = connection
        self.hb_interval = hb_interval
        self.out = out
        self.service = f"rsc-demo-{uuid4().hex[:8]}"
        self.started = time.monotonic()
        self.crashed_at: float | None = None
        self.holders: dict[str, str] = {}
        self.ready: set[str] = set()
        self.outcomes: dict[tuple[str, str], str] = {}
        self.children: dict[str, asyncio.subprocess.Process] = {}
        self.reports: asyncio.Queue[Report] = asyncio.Queue()
        self.timeout = STEP_TIMEOUT + 5 * hb_interval

    def say(self, text: str, at: float | None = None) -> None:
        """Print *text* after the seconds since the start, wrapped to 80 columns."""
        elapsed = (time.monotonic() if at is None else at) - self.started
        stamp = f"{elapsed:6.2f}s  "
        lines = textwrap.wrap(
            text,
            MAX_WIDTH,
            initial_indent=stamp,
            subsequent_indent=" " * len(stamp),
            break_on_hyphens=False,
        )
        print("\n".join(lines), file=self.out, flush=True)

    async def run(self) -> None:
        """The whole demo; the consumers are stopped and the keys removed after.

        Raises:
            DemoError: a step did not happen in time.
        """
        redis = self.connection.redis()
        listeners: list[asyncio.Task[None]] = []
        try:
            where = f"service {self.service} on "
            room = MAX_WIDTH - STAMP_WIDTH - len(where)
            self.say(where + truncate(self.connection.address, room, cut_end=False))
            self.say(
                f"a lock lives {self.hb_interval:g}s and is renewed every "
                f"{self.hb_interval / 2:g}s"
            )
            await self._start_consumers(listeners)
            await self._produce(redis)
            victim = await self._crash()
            await self._take_over(victim)
            await self._stop_consumers()
        finally:
            for child in self.children.values():
                if child.returncode is None:
                    child.kill()
                    await child.wait()
            for listener in listeners:
                listener.cancel()
            await asyncio.gather(*listeners, return_exceptions=True)
            await self._remove_keys(redis)
            await redis.aclose()

    async def _start_consumers(self, listeners: list[asyncio.Task[None]]) -> None:
        self.say(f"starting consumers {', '.join(CONSUMERS)} (one process each)")
        for name in CONSUMERS:
            child = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "rsc_async._cli_demo",
                *self.connection.argv(),
                "--service",
                self.service,
                "--name",
                name,
                "--hb-interval",
                str(self.hb_interval),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=self.connection.environment(),
            )
            self.children[name] = child
            listeners.append(asyncio.create_task(self._listen(name, child)))
        await self._until(lambda: self.ready == set(CONSUMERS), "consumers ready")

    async def _listen(self, name: str, child: asyncio.subprocess.Process) -> None:
        assert child.stdout is not None
        async for line in child.stdout:
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                await self.reports.put(
                    Report(
                        time.monotonic(),
                        name,
                        str(report.get("event")),
                        report.get("stream"),
                        str(report.get("detail", "")),
                    )
                )
        await self.reports.put(Report(time.monotonic(), name, "exit"))

    async def _produce(self, redis: aioredis.Redis) -> None:
        self.say(f"producer adds session-1 .. session-{STREAM_COUNT} to the LBS")
        for number in range(1, STREAM_COUNT + 1):
            await add_stream(redis, self.service, f"session-{number}")
        await self._until(
            lambda: len(self.holders) == STREAM_COUNT, "every stream assigned"
        )

    async def _crash(self) -> str:
        held = self._held_by()
        for name in CONSUMERS:
            self.say(f"{name} holds {', '.join(held.get(name, [])) or 'nothing'}")
        victim = max(CONSUMERS, key=lambda name: len(held.get(name, [])))
        child = self.children[victim]
        child.kill()
        await child.wait()
        self.crashed_at = time.monotonic()
        self.say(
            f"{victim} crashes (SIGKILL); its locks expire in "
            f"{self.hb_interval:g}s + Redis's expiry lag"
        )
        return victim

    async def _take_over(self, victim: str) -> None:
        orphans = self._held_by()[victim]
        survivors = {name for name in CONSUMERS if name != victim}
        await self._until(
            lambda: victim not in self.holders.values(), f"{victim}'s streams taken"
        )
        assert self.crashed_at is not None
        took = time.monotonic() - self.crashed_at
        # The losers of each race report a moment later; wait for them briefly.
        with anyio.move_on_after(self.hb_interval / 2):
            await self._until(
                lambda: all(
                    self.outcomes.get((name, stream))
                    for name in survivors
                    for stream in orphans
                ),
                "every claim answered",
            )
        self.say(f"every data stream is held again, {took:.2f}s after the crash:")
        for name, streams in sorted(self._held_by().items()):
            self.say(f"{name} holds {', '.join(streams)}")

    async def _stop_consumers(self) -> None:
        survivors = [n for n, c in self.children.items() if c.returncode is None]
        for name in survivors:
            stdin = self.children[name].stdin
            assert stdin is not None
            stdin.close()
        self.say(f"stopping {' and '.join(survivors)}: they finish their streams")
        with anyio.fail_after(self.timeout):
            for name in survivors:
                await self.children[name].wait()
        self.say("done")

    async def _until(self, condition: Callable[[], bool], what: str) -> None:
        try:
            with anyio.fail_after(self.timeout):
                while not condition():
                    self._narrate(await self.reports.get())
        except TimeoutError:
            msg = f"{what}: did not happen within {self.timeout:g}s"
            raise DemoError(msg) from None

    def _narrate(self, report: Report) -> None:
        name, stream, at = report.consumer, report.stream, report.at
        if report.event == "ready":
            self.ready.add(name)
            self.say(f"{name} is ready", at)
        elif report.event == "added" and stream is not None:
            self.holders[stream] = name
            self.say(f"{name} was assigned {stream}", at)
        elif report.event == "expired":
            self.say(f"{name} heard that the lock of {stream} expired", at)
        elif report.event == "claimed" and stream is not None:
            self.holders[stream] = name
            self.outcomes[name, stream] = report.event
            self.say(f"{name} took over {stream}", at)
        elif report.event == "beaten" and stream is not None:
            self.outcomes[name, stream] = report.event
            self.say(f"{name} lost the race for {stream}; one claim wins", at)
        elif report.event == "exit" and self.crashed_at is None:
            raise DemoError(f"consumer {name} exited unexpectedly")
        elif report.event not in ("exit", "stopped"):
            self.say(f"{name}: {report.event} {stream or ''} {report.detail}", at)

    def _held_by(self) -> dict[str, list[str]]:
        held: dict[str, list[str]] = {}
        for stream, name in sorted(self.holders.items()):
            held.setdefault(name, []).append(stream)
        return held

    async def _remove_keys(self, redis: aioredis.Redis) -> None:
        with contextlib.suppress(Exception):
            keys = [key async for key in redis.scan_iter(f"{self.service}-*")]
            if keys:
                await redis.delete(*keys)


async def run_demo(connection: Connection, hb_interval: float, out: TextIO) -> None:
    """Run the demo on the server of *connection*, narrating to *out*.

    Raises:
        DemoError: a step did not happen in time.
    """
    await Demo(connection, hb_interval, out).run()


def _report(event: str, stream: str | None = None, detail: str = "") -> None:
    record: dict[str, Any] = {"event": event, "stream": stream, "detail": detail}
    print(json.dumps(record), flush=True)


async def _react(client: RedisStreamClient, notifications: Notifications) -> None:
    async for notification in notifications:
        if notification.payload is None:
            detail = str(notification.additional_info.get("info", ""))
            _report(notification.type.value, detail=detail)
            continue
        stream = notification.payload.data_stream_name
        if notification.type is NotificationType.STREAM_ADDED:
            _report("added", stream)
        elif notification.type is NotificationType.STREAM_EXPIRED:
            _report("expired", stream)
            try:
                await client.claim(notification.payload)
            except AlreadyClaimedError:
                _report("beaten", stream)
            else:
                _report("claimed", stream)
        else:
            _report(notification.type.value, stream)


async def _stdin_closed() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    await reader.read()


async def consume(
    connection: Connection, service: str, name: str, hb_interval: float
) -> None:
    """One consumer of the demo: report, claim what expires, stop at stdin EOF."""
    redis = connection.redis()
    client = RedisStreamClient(
        redis, service, consumer_id=name, hb_interval=hb_interval
    )
    try:
        notifications = await client.init()
        _report("ready")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_react, client, notifications)
            await _stdin_closed()
            await client.done()
        _report("stopped")
    finally:
        await client.done()
        await redis.aclose()


def consumer_main(argv: Sequence[str] | None = None) -> None:
    """The entry point of one demo consumer process."""
    parser = argparse.ArgumentParser(
        prog="python -m rsc_async._cli_demo",
        parents=[connection_flags()],
        add_help=False,
    )
    parser.add_argument("--service", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--hb-interval", type=float, required=True)
    args = parser.parse_args(argv)
    connection = Connection.from_args(args)
    asyncio.run(consume(connection, args.service, args.name, args.hb_interval))


if __name__ == "__main__":
    consumer_main()
