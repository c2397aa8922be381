"""Running clients in tests, and LBS entries held by a consumer that is gone.

A test starts a client with :func:`running`, which keeps every notification
the client yields in order, so the test can wait for one and later check what
else arrived. :func:`ghost_entry` makes an entry pending for a consumer that
runs no client, the raw material of expiries, orphans and poison entries.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, TypeVar

import redis.asyncio
from _wait import wait_for

from rsc_async import (
    LBSInfo,
    LBSMessage,
    Notification,
    Notifications,
    RedisStreamClient,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
)

GHOST = "redis-consumer-ghost"
"""The consumer name of entries delivered to no running client."""

LBS_FIELD = "lbs-input"
"""The one field of an LBS entry, as the protocol names it."""

About = TypeVar("About", StreamAdded, StreamExpired, StreamDisowned)


class Recorded:
    """A running client and every notification it has yielded so far, in order."""

    def __init__(self, client: RedisStreamClient) -> None:
        self.client = client
        self.seen: list[Notification] = []
        self.arrived: list[float] = []
        """The ``time.monotonic()`` of each notification in :attr:`seen`."""

    async def read(self, notifications: Notifications) -> None:
        """Keep every notification until the client stops."""
        async for notification in notifications:
            self.seen.append(notification)
            self.arrived.append(time.monotonic())

    def times(self, kind: type[About], name: str) -> list[float]:
        """When each notification of *kind* about *name* arrived."""
        return [
            arrived
            for notification, arrived in zip(self.seen, self.arrived, strict=True)
            if isinstance(notification, kind)
            and name == notification.payload.data_stream_name
        ]

    def of(self, kind: type[About], name: str | None = None) -> list[About]:
        """The notifications of *kind*, about *name* if given."""
        return [
            notification
            for notification in self.seen
            if isinstance(notification, kind)
            and (name is None or name == notification.payload.data_stream_name)
        ]

    async def wait(self, kind: type[About], name: str, timeout: float = 5.0) -> About:
        """The first notification of *kind* about *name*, waiting for it.

        Raises:
            AssertionError: none arrived within *timeout* seconds.
        """

        def arrived() -> bool:
            return bool(self.of(kind, name))

        arrived.__name__ = f"{kind.__name__} about {name!r} arrived"
        await wait_for(arrived, timeout)
        return self.of(kind, name)[0]


@contextlib.asynccontextmanager
async def running(client: RedisStreamClient) -> AsyncIterator[Recorded]:
    """Start *client*, record its notifications, and stop it on exit."""
    recorded = Recorded(client)
    async with client:
        notifications = await client.init()
        reader = asyncio.create_task(recorded.read(notifications))
        try:
            yield recorded
        finally:
            await client.done()
            await asyncio.wait_for(reader, timeout=10.0)


@contextlib.asynccontextmanager
async def connected(url: str, **options: Any) -> AsyncIterator[redis.asyncio.Redis]:
    """A Redis client on *url*, closed on exit."""
    client = redis.asyncio.Redis.from_url(url, **options)
    try:
        yield client
    finally:
        await client.aclose()


async def ghost_entry(
    r: redis.asyncio.Redis,
    service: str,
    name: str,
    info: dict[str, Any] | None = None,
) -> LBSInfo:
    """Add an LBS entry for *name* and deliver it to a consumer that runs no client.

    Adding and delivering happen in one transaction, so a running client's
    reader cannot take the entry in between. No lock is taken.
    """
    lbs, group = f"{service}-input", f"{service}-group"
    with contextlib.suppress(redis.ResponseError):
        await r.xgroup_create(lbs, group, id="$", mkstream=True)
    message = LBSMessage(data_stream_name=name, info=info or {}).to_json()
    async with r.pipeline(transaction=True) as pipe:
        pipe.xadd(lbs, {LBS_FIELD: message})
        pipe.xreadgroup(group, GHOST, {lbs: ">"}, count=1)
        added, reply = await pipe.execute()
    [[_, [(delivered, _)]]] = reply
    assert _text(added) == _text(delivered)
    return LBSInfo(data_stream_name=name, id_in_lbs=_text(added))


async def expire_ghost_lock(r: redis.asyncio.Redis, service: str, name: str) -> LBSInfo:
    """Make a ghost's lock on a new entry expire now: every client hears it.

    Keyspace events reach each subscriber in order, so once a client has told
    of this expiry it has also handled every expiry published before it.
    """
    info = await ghost_entry(r, service, name)
    await r.set(info.mutex_key, GHOST, px=1)
    return info


async def lock_holder(r: redis.asyncio.Redis, info: LBSInfo) -> str | None:
    """The consumer whose name is the value of the lock of *info*, if any."""
    value = await r.get(info.mutex_key)
    return None if value is None else _text(value)


async def pending_owner(
    r: redis.asyncio.Redis, service: str, entry_id: str
) -> str | None:
    """The consumer an LBS entry is pending for, or None if it is not pending."""
    rows = await r.xpending_range(
        f"{service}-input", f"{service}-group", entry_id, entry_id, 1
    )
    if not rows:
        return None
    consumer = rows[0]["consumer"]
    assert isinstance(consumer, (bytes, str))
    return _text(consumer)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
