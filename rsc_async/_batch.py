"""Sharing round trips between calls made at the same time."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Coalescer(Generic[Item, Result]):
    """Runs concurrent calls of one operation in shared batches.

    A call that finds nothing in flight goes out at once; calls made while a
    batch is in flight wait for it and go out together in the next one. The
    batches run in a task of their own, so a caller that is cancelled does not
    abort the round trip others are waiting on.
    """

    def __init__(
        self, run_batch: Callable[[list[Item]], Awaitable[list[Result]]]
    ) -> None:
        self._run_batch = run_batch
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._in_flight: list[tuple[Item, asyncio.Future[Result]]] = []
        self._drainer: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        """Run *item* in the next batch and return its result."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def wait_idle(self) -> None:
        """Return once no batch is in flight."""
        if self._drainer is not None:
            await asyncio.wait({self._drainer})

    async def abandon(self, error: Exception) -> None:
        """Cancel the batch in flight and drop the queued calls.

        Their callers get *error*; the outcome of the cancelled round trip is
        unknown.
        """
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
            await asyncio.wait({self._drainer})
        waiting = self._in_flight + self._queue
        self._in_flight, self._queue = [], []
        for _, future in waiting:
            if not future.done():
                future.set_exception(error)

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            self._in_flight = batch
            try:
                results = await self._run_batch([item for item, _ in batch])
            except Exception as exc:
                self._in_flight = []
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self._in_flight = []
            for (_, future), result in zip(batch, results, strict=True):
                if not future.done():
                    future.set_result(result)
