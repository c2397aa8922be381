"""A heartbeat on a thread of its own, for event loops that block.

A handler that does CPU-bound work on the event loop stops the ordinary
heartbeat, and every lock lapses although the process is alive. This one
runs on its own thread, event loop and connection, so locks are kept while
the loop is busy. The loop still proves it is alive: it pulses every half
heartbeat interval, and when no pulse came for ``progress_deadline`` seconds
the thread stops extending, so a consumer that is truly stuck lets its
streams go to the others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import anyio
import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool, ConnectionPool

from ._errors import InvalidOptionError
from ._leases import Heartbeat, Lease, Leases
from ._log import EventLog
from ._metrics import MetricsRecorder
from ._store import Store

JOIN_TIMEOUT = 5.0
"""Seconds the client waits for the heartbeat thread to end."""


def check_cloneable(redis: object) -> None:
    """Make sure a client like *redis* can be made for another event loop.

    Raises:
        InvalidOptionError: *redis* is not a ``redis.asyncio.Redis`` on a plain
            connection pool (a cluster or Sentinel client, say).
    """
    pool = getattr(redis, "connection_pool", None)
    if not isinstance(redis, aioredis.Redis) or type(pool) not in (
        ConnectionPool,
        BlockingConnectionPool,
    ):
        raise InvalidOptionError(
            "heartbeat_thread",
            True,
            "needs a redis.asyncio.Redis on a plain connection pool "
            "(not a cluster or Sentinel client)",
        )


def clone_client(redis: aioredis.Redis) -> aioredis.Redis:
    """A new client with the settings of *redis*, for another event loop."""
    pool = redis.connection_pool
    clone_pool = ConnectionPool(
        connection_class=pool.connection_class, **pool.connection_kwargs
    )
    return aioredis.Redis.from_pool(clone_pool)


class HeartbeatThread:
    """Runs a :class:`Heartbeat` on a thread, guarded by the loop's pulse."""

    def __init__(
        self,
        store: Store,
        leases: Leases,
        ttl: float,
        lost: Callable[[Lease, bool], None],
        metrics: MetricsRecorder,
        log: EventLog,
        progress_deadline: float,
    ) -> None:
        self._store = store
        self._leases = leases
        self._ttl = ttl
        self._lost = lost
        self._metrics = metrics
        self._log = log
        self._progress_deadline = progress_deadline
        self._pulse = time.monotonic()
        self._stalled = False
        self._lock = threading.Lock()
        self._stop_requested = False
        self._thread_stop: tuple[asyncio.AbstractEventLoop, anyio.Event] | None = None

    async def run(self, stopping: anyio.Event) -> None:
        """Pulse on this loop while the thread extends the locks."""
        loop = asyncio.get_running_loop()

        def lost(lease: Lease, gone: bool) -> None:
            loop.call_soon_threadsafe(self._lost, lease, gone)

        thread = threading.Thread(
            target=self._thread_main,
            args=(lost,),
            name=f"rsc_async heartbeat {self._store.consumer}",
            daemon=True,
        )
        thread.start()
        try:
            while not stopping.is_set():
                self._pulse = time.monotonic()
                with anyio.move_on_after(self._ttl / 4):
                    await stopping.wait()
        finally:
            self._stop_thread()
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(thread.join, JOIN_TIMEOUT)

    def _stop_thread(self) -> None:
        with self._lock:
            self._stop_requested = True
            if self._thread_stop is not None:
                loop, event = self._thread_stop
                loop.call_soon_threadsafe(event.set)

    def _may_extend(self) -> bool:
        silent = time.monotonic() - self._pulse
        stalled = silent > self._progress_deadline
        if stalled and not self._stalled:
            self._log.error(
                "the event loop made no progress for %.1f s, past "
                "progress_deadline; letting every lock lapse",
                silent,
            )
        elif self._stalled and not stalled:
            self._log.warning("the event loop is making progress again")
        self._stalled = stalled
        return not stalled

    def _thread_main(self, lost: Callable[[Lease, bool], None]) -> None:
        asyncio.run(self._thread_loop(lost))

    async def _thread_loop(self, lost: Callable[[Lease, bool], None]) -> None:
        client = clone_client(self._store.redis)
        store = Store(client, self._store.service, self._store.consumer)
        heartbeat = Heartbeat(
            store,
            self._leases,
            self._ttl,
            lost,
            self._metrics,
            self._log,
            may_extend=self._may_extend,
        )
        stopping = anyio.Event()
        with self._lock:
            self._thread_stop = (asyncio.get_running_loop(), stopping)
            if self._stop_requested:
                stopping.set()
        try:
            await heartbeat.run(stopping)
        finally:
            await client.aclose()
