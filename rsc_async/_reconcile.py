"""The reconciliation sweep: finding streams whose expiry nobody heard."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from ._errors import InvalidLBSMessageError, RedisCommandError
from ._lbs import too_many_deliveries
from ._log import EventLog
from ._models import MUTEX_KEY_SEP, LBSMessage
from ._store import Fields, Store

SWEEP_PAGE = 500
"""Pending entries examined per round of the sweep."""


class Reconciler:
    """Announces orphans: pending entries whose lock is gone.

    Keyspace events are fire-and-forget, so an expiry that happens while a
    consumer's subscription is down is never heard. Every interval one
    consumer of the service (whoever takes the short ``<service>-reconcile``
    lock) scans the group's pending entries; an entry idle longer than two
    heartbeat intervals whose lock is missing is an orphan, and the sweep makes
    its lock key expire at once, so every consumer hears ``expired`` as if the
    holder's lock had just run out. An orphan that nobody claims is announced
    again at the next sweep.
    """

    def __init__(
        self,
        store: Store,
        *,
        interval: float,
        hb_interval: float,
        max_deliveries: int,
        set_aside: Callable[[str, Fields, str], Awaitable[None]],
        log: EventLog,
    ) -> None:
        self._store = store
        self._interval = interval
        self._min_idle_ms = round(2 * hb_interval * 1000)
        self._hb_ms = max(1, round(hb_interval * 1000))
        self._max_deliveries = max_deliveries
        self._set_aside = set_aside
        self._log = log
        self._now = anyio.Event()

    def trigger(self) -> None:
        """Sweep as soon as possible, whoever swept last.

        Of the consumers asking within one heartbeat interval (a server
        restart drops every subscription at once), one sweeps.
        """
        self._now.set()

    async def run(self, stopping: anyio.Event) -> None:
        """Sweep every interval until *stopping*."""
        while not stopping.is_set():
            with anyio.move_on_after(self._interval):
                await self._now.wait()
            if stopping.is_set():
                return
            forced = self._now.is_set()
            self._now = anyio.Event()
            try:
                if forced:
                    leads = await self._store.lead_sweep(self._hb_ms, at_once=True)
                else:
                    interval_ms = max(1, round(self._interval * 1000))
                    leads = await self._store.lead_sweep(interval_ms)
                if leads:
                    await self.sweep()
            except RedisCommandError as exc:
                self._log.warning("reconciliation sweep failed: %s", exc)

    async def sweep(self) -> int:
        """Scan every pending entry once; return how many orphans were announced."""
        announced = 0
        after = None
        while True:
            page = await self._store.pending_page(self._min_idle_ms, after, SWEEP_PAGE)
            if not page:
                break
            after = page[-1][0]
            announced += await self._sweep_page(page)
            if len(page) < SWEEP_PAGE:
                break
        if announced:
            self._log.info("announced %d orphaned data streams", announced)
        return announced

    async def _sweep_page(self, page: list[tuple[str, int]]) -> int:
        # Finished entries are deleted, so the LBS between the first and the
        # last pending id of a page holds little but the page: one XRANGE
        # reads them all, and the few it missed are read one by one.
        found = await self._store.entries_between(
            page[0][0], page[-1][0], 2 * len(page)
        )
        missed = [entry_id for entry_id, _ in page if entry_id not in found]
        found.update(await self._store.entries(missed))
        candidates: list[tuple[str, Fields, int, str]] = []
        for entry_id, deliveries in page:
            fields = found.get(entry_id)
            if fields is None:
                # Deleted while pending: nothing left to hand out.
                await self._store.ack(entry_id)
                continue
            try:
                name = LBSMessage.from_entry(entry_id, fields).data_stream_name
            except InvalidLBSMessageError as exc:
                await self._set_aside(entry_id, fields, exc.reason)
                continue
            key = f"{name}{MUTEX_KEY_SEP}{entry_id}"
            candidates.append((entry_id, fields, deliveries, key))
        held = await self._store.locks_exist([c[3] for c in candidates])
        orphans = []
        for (entry_id, fields, deliveries, key), is_held in zip(
            candidates, held, strict=True
        ):
            if is_held:
                continue
            if deliveries > self._max_deliveries:
                reason = too_many_deliveries(deliveries, self._max_deliveries)
                await self._set_aside(entry_id, fields, reason)
                continue
            orphans.append(key)
        return sum(await self._store.announce_orphans(orphans))
