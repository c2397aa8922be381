"""Two consumers and a producer; one consumer crashes and the other takes over.

Run it with ``python examples/basic.py``. It uses the Redis at ``REDIS_URL``,
or starts a throwaway ``redis-server`` of its own. Consumer "alice" runs in a
child process so that it can really crash (SIGKILL); consumer "bob" runs here,
hears that alice's locks expired, and claims her streams.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import redis.asyncio as redis

from rsc_async import (
    AlreadyClaimedError,
    Notifications,
    NotificationType,
    RedisStreamClient,
    add_stream,
)
from rsc_async.testing import redis_url

SERVICE = "example"
SESSIONS = [f"session-{n}" for n in range(1, 5)]
HB_INTERVAL = 1.0


async def alice(url: str) -> None:
    """Consume until killed, printing the name of each stream taken."""
    client = RedisStreamClient(
        redis.Redis.from_url(url), SERVICE, consumer_id="alice", hb_interval=HB_INTERVAL
    )
    notifications = await client.init()
    print("ready", flush=True)
    async for notification in notifications:
        if notification.type is NotificationType.STREAM_ADDED:
            print(notification.payload.data_stream_name, flush=True)


class Board:
    """Who holds which session, printed as it changes."""

    def __init__(self) -> None:
        self.holders: dict[str, str] = {}
        self.changed = asyncio.Event()
        self.started = time.monotonic()

    def took(self, consumer: str, session: str, how: str = "took") -> None:
        self.holders[session] = consumer
        elapsed = time.monotonic() - self.started
        print(f"{elapsed:6.2f}s  {consumer:<5} {how} {session}")
        self.changed.set()

    async def until(self, condition: Callable[[], bool]) -> None:
        while not condition():
            self.changed.clear()
            await self.changed.wait()


async def watch_alice(child: asyncio.subprocess.Process, board: Board) -> None:
    assert child.stdout is not None
    async for line in child.stdout:
        board.took("alice", line.decode().strip())


async def run_bob(
    client: RedisStreamClient, notes: Notifications, board: Board
) -> None:
    async for notification in notes:
        if notification.payload is None:
            return
        session = notification.payload.data_stream_name
        if notification.type is NotificationType.STREAM_ADDED:
            board.took("bob", session)
        elif notification.type is NotificationType.STREAM_EXPIRED:
            print(f"{time.monotonic() - board.started:6.2f}s  alice's lock on "
                  f"{session} expired")  # fmt: skip
            try:
                await client.claim(notification.payload)
            except AlreadyClaimedError:
                continue
            board.took("bob", session, "took over")


async def main(url: str) -> None:
    """Start alice, add the sessions, kill alice, and let bob take over."""
    connection = redis.Redis.from_url(url)
    await connection.delete(f"{SERVICE}-input")
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--alice", url, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    await child.stdout.readline()  # "ready": alice reads the LBS now

    board = Board()
    async with RedisStreamClient(
        connection, SERVICE, consumer_id="bob", hb_interval=HB_INTERVAL
    ) as bob:
        notifications = await bob.init()
        tasks = [
            asyncio.create_task(watch_alice(child, board)),
            asyncio.create_task(run_bob(bob, notifications, board)),
        ]
        for session in SESSIONS:
            await add_stream(connection, SERVICE, session, info={"user": session})
        await board.until(lambda: len(board.holders) == len(SESSIONS))

        print(f"{time.monotonic() - board.started:6.2f}s  alice crashes (SIGKILL)")
        child.kill()
        await child.wait()
        await board.until(lambda: set(board.holders.values()) == {"bob"})

        for session in SESSIONS:
            await bob.done_stream(session)
        print(f"bob finished all {len(SESSIONS)} sessions; none was lost")
    for task in tasks:
        task.cancel()
    await connection.aclose()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--alice"]:
        asyncio.run(alice(sys.argv[2]))
    else:
        with redis_url() as url:
            asyncio.run(main(url))
