"""Waiting for a condition with a deadline, instead of sleeping."""

# Each call names its own deadline, so the helpers take a timeout argument.
# ruff: noqa: ASYNC109

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from rsc_async import Notification


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]],
    timeout: float = 5.0,
    interval: float = 0.01,
) -> None:
    """Return as soon as *predicate* is true; poll it every *interval* seconds.

    Args:
        predicate: a function returning a bool, or an awaitable of one.
        timeout: seconds before giving up.
        interval: seconds between two checks.

    Raises:
        AssertionError: *predicate* was still false after *timeout* seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            name = getattr(predicate, "__name__", repr(predicate))
            msg = f"{name} was still false after {timeout} s"
            raise AssertionError(msg)
        await asyncio.sleep(interval)


async def next_notification(
    notifications: AsyncIterator[Notification], timeout: float = 5.0
) -> Notification:
    """Return the next notification, waiting at most *timeout* seconds.

    Raises:
        AssertionError: nothing arrived within *timeout* seconds.
        StopAsyncIteration: the notifications ended.
    """
    with anyio.move_on_after(timeout):
        return await notifications.__anext__()
    msg = f"no notification arrived within {timeout} s"
    raise AssertionError(msg)
