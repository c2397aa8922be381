"""The streams this consumer holds, and the heartbeat that keeps their locks."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio

from ._config import RetryConfig
from ._errors import RedisCommandError
from ._log import EventLog
from ._metrics import MetricsRecorder
from ._models import MUTEX_KEY_SEP, LBSInfo
from ._outage import Outage
from ._store import GONE, KEPT, TAKEN, Store


class Lease:
    """One held data stream: what its notifications and its finish need."""

    __slots__ = ("entry_id", "finishing", "info", "key", "name", "started", "token")

    def __init__(self, name: str, entry_id: str, info: dict[str, Any]) -> None:
        self.name = name
        self.entry_id = entry_id
        self.key = f"{name}{MUTEX_KEY_SEP}{entry_id}"
        self.info = info
        self.token = 0
        self.started = time.time()
        # Set while done_stream deletes the lock, so the heartbeat does not
        # take the missing key for a lost lock.
        self.finishing = False

    @property
    def lbs_info(self) -> LBSInfo:
        """The public identity of this stream."""
        return LBSInfo(data_stream_name=self.name, id_in_lbs=self.entry_id)


class Leases:
    """The held streams by data stream name; one entry per name."""

    def __init__(self) -> None:
        self._by_name: dict[str, Lease] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Lease]:
        return iter(list(self._by_name.values()))

    def get(self, name: str) -> Lease | None:
        """The lease of *name*, if held."""
        return self._by_name.get(name)

    def add(self, lease: Lease) -> None:
        """Hold *lease*."""
        self._by_name[lease.name] = lease

    def drop(self, lease: Lease) -> bool:
        """Forget *lease*; False when it was no longer held (someone else won)."""
        if self._by_name.get(lease.name) is not lease:
            return False
        del self._by_name[lease.name]
        return True

    def by_key(self, key: str) -> Lease | None:
        """The lease whose lock key is *key*, if held."""
        try:
            info = LBSInfo.from_mutex_key(key)
        except ValueError:
            return None
        lease = self._by_name.get(info.data_stream_name)
        return lease if lease is not None and lease.key == key else None


RETRY_FRACTION = 0.2
"""After a tick Redis did not answer, the next comes this part of a period
later, not a whole period: the locks then have about half their TTL left, and a
dropped connection or a quick restart must not cost them."""


class Heartbeat:
    """Extends every held lock each half interval, in one round trip per tick.

    Ticks are scheduled by deadline: a slow tick shortens the wait for the
    next one instead of pushing every lock closer to expiry. A failed tick is
    tried again soon, while the locks still live. A lock found lost is passed
    to ``lost(lease, gone)``, *gone* telling a lock that ran out from one
    another consumer holds.
    """

    def __init__(
        self,
        store: Store,
        leases: Leases,
        ttl: float,
        lost: Callable[[Lease, bool], None],
        metrics: MetricsRecorder,
        log: EventLog,
        may_extend: Callable[[], bool] = lambda: True,
    ) -> None:
        self._store = store
        self._may_extend = may_extend
        self._leases = leases
        self._ttl_ms = max(1, round(ttl * 1000))
        self.period = ttl / 2
        self._lost = lost
        self._metrics = metrics
        self._log = log
        # The heartbeat never gives up: each tick is the next try.
        self._outage = Outage("the heartbeat", RetryConfig(max_retries=-1), log)

    async def run(self, stopping: anyio.Event) -> None:
        """Tick until *stopping* is set."""
        deadline = time.monotonic() + self.period
        while not stopping.is_set():
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                await stopping.wait()
            if stopping.is_set():
                return
            started = time.monotonic()
            answered = await self.tick() if self._may_extend() else True
            elapsed = time.monotonic() - started
            if elapsed > self.period:
                self._log.warning(
                    "heartbeat tick took %.3f s, longer than its period of %.3f s",
                    elapsed,
                    self.period,
                )
            if not answered:
                deadline = time.monotonic() + self.period * RETRY_FRACTION
                continue
            deadline += self.period
            if deadline < time.monotonic():
                # Ticks were missed; the next one goes now, not in a burst.
                deadline = time.monotonic()

    async def tick(self) -> bool:
        """Extend every held lock once; report those found lost.

        Returns:
            False when Redis failed, so the locks were not extended.
        """
        leases = [lease for lease in self._leases if not lease.finishing]
        if not leases:
            return True
        try:
            # Bounded by the period, so one slow server cannot hold back the
            # next tick, nor the locks kept on other nodes of a cluster.
            kept = await self._store.extend_locks(
                [lease.key for lease in leases], self._ttl_ms, self.period
            )
        except RedisCommandError as exc:
            self._outage.failed(exc)
            return False
        self._outage.recovered()
        for lease, found in zip(leases, kept, strict=True):
            if found is None:
                continue  # Unanswered: the next tick tries again.
            self._metrics.record_lock_extension_attempt(lease.name, found == KEPT)
            if found != KEPT and not lease.finishing:
                self._lost(lease, found == GONE)
        self._log.debug(
            "heartbeat extended %d locks, lost %d",
            kept.count(KEPT),
            kept.count(TAKEN) + kept.count(GONE),
        )
        return True
