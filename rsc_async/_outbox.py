"""The bounded buffer between the client's tasks and the user's iterator."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Generator
from typing import Any

from ._models import Notification


class Outbox:
    """Notifications waiting for the user, in order.

    :meth:`send` waits while the buffer is full, so a slow reader holds back
    the LBS reader instead of growing memory. :meth:`post` never waits: it is
    for notifications that must not stall their task (lost locks found by the
    heartbeat, startup recovery); their number is bounded by the streams held.
    """

    def __init__(self, size: int) -> None:
        self._items: deque[Notification] = deque()
        self._size = size
        self._closed = False
        self._changed = asyncio.Event()

    @property
    def closed(self) -> bool:
        """Whether the outbox takes no more notifications."""
        return self._closed

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def send(self, notification: Notification) -> None:
        """Queue *notification*, waiting for room; dropped once closed."""
        while len(self._items) >= self._size and not self._closed:
            await self._changed.wait()
        self.post(notification)

    def post(self, notification: Notification) -> None:
        """Queue *notification* now, past the bound if need be."""
        if not self._closed:
            self._items.append(notification)
            self._wake()

    def close(self) -> None:
        """Take no more; the iterator ends once what is queued is read."""
        self._closed = True
        self._wake()

    async def receive(self) -> Notification:
        """The next notification.

        Raises:
            StopAsyncIteration: closed and empty.
        """
        while not self._items:
            if self._closed:
                raise StopAsyncIteration
            await self._changed.wait()
        item = self._items.popleft()
        self._wake()
        return item


class Notifications:
    """What ``init()`` returns: await it to start the client, iterate it to read.

    ``await client.init()`` returns once the client runs; ``async for`` over it
    (awaited or not) starts the client first if need be, then yields every
    notification until the client stops.
    """

    def __init__(self, start: Callable[[], Awaitable[None]], outbox: Outbox) -> None:
        self._start = start
        self._outbox = outbox

    async def _started(self) -> Notifications:
        await self._start()
        return self

    def __await__(self) -> Generator[Any, None, Notifications]:
        return self._started().__await__()

    def __aiter__(self) -> Notifications:
        return self

    async def __anext__(self) -> Notification:
        await self._start()
        return await self._outbox.receive()
