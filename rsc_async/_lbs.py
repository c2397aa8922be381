"""The LBS reader: assignment of new entries and startup recovery."""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from ._config import RetryConfig
from ._errors import InvalidLBSMessageError, RedisCommandError
from ._leases import Lease, Leases
from ._log import EventLog
from ._metrics import MetricsRecorder
from ._models import LBSMessage, StreamAdded
from ._outbox import Outbox
from ._store import Entry, Fields, Store


class LBSReader:
    """Takes entries from the LBS, locks their streams and announces them."""

    def __init__(
        self,
        store: Store,
        leases: Leases,
        outbox: Outbox,
        *,
        ttl: float,
        read_batch: int,
        block_ms: int,
        retry: RetryConfig,
        metrics: MetricsRecorder,
        log: EventLog,
    ) -> None:
        self._store = store
        self._leases = leases
        self._outbox = outbox
        self._ttl_ms = max(1, round(ttl * 1000))
        self._read_batch = read_batch
        self._block_ms = block_ms
        self._retry = retry
        self._metrics = metrics
        self._log = log

    async def run(self, stopping: anyio.Event, give_up: Callable[[str], None]) -> None:
        """Read and assign new entries until *stopping*, backing off on errors."""
        failures = 0
        while not stopping.is_set():
            try:
                entries = await self._store.read_new(self._read_batch, self._block_ms)
                added = await self.assign(entries)
            except RedisCommandError as exc:
                failures += 1
                if self._retry.gives_up_after(failures):
                    give_up(f"reading the LBS failed {failures} times: {exc}")
                    return
                delay = self._retry.delay(failures)
                self._log.warning(
                    "reading the LBS failed (%s); retry %d in %.2f s",
                    exc,
                    failures,
                    delay,
                )
                await anyio.sleep(delay)
                continue
            failures = 0
            for notification in added:
                await self._outbox.send(notification)

    async def recover(self, min_idle_ms: int, page_size: int) -> list[StreamAdded]:
        """Take over pending entries idle over *min_idle_ms* whose lock is gone.

        Follows the XAUTOCLAIM cursor to its end. Entries whose lock is still
        held stay with their holder: a heartbeat does not reset an entry's idle
        time, so a long-held entry of a live consumer looks idle.
        """
        added: list[StreamAdded] = []
        cursor = "0-0"
        while True:
            cursor, entries = await self._store.autoclaim(
                min_idle_ms, cursor, page_size
            )
            added.extend(await self.assign(entries, recovered=True))
            if cursor == "0-0":
                return added

    async def assign(
        self, entries: list[Entry], *, recovered: bool = False
    ) -> list[StreamAdded]:
        """Lock the streams of *entries* in one round trip; set bad ones aside."""
        leases: list[Lease] = []
        for entry_id, fields in entries:
            if fields is None:
                # Deleted from the LBS while pending: nothing is left to do.
                await self._store.ack(entry_id)
                continue
            lease = await self._lease_for(entry_id, fields)
            if lease is not None:
                leases.append(lease)
        started = time.monotonic()
        taken = await self._store.acquire_locks(
            [lease.key for lease in leases], self._ttl_ms
        )
        duration = time.monotonic() - started
        added = []
        for lease, ok in zip(leases, taken, strict=True):
            self._metrics.record_lock_acquisition_attempt(lease.name, ok, duration)
            if not ok:
                self._log.debug(
                    "lock is held by another consumer; left with it",
                    stream=lease.name,
                    entry_id=lease.entry_id,
                )
                continue
            self._leases.add(lease)
            self._metrics.record_stream_processing_start(lease.name, lease.started)
            self._log.info(
                "recovered data stream" if recovered else "assigned data stream",
                stream=lease.name,
                entry_id=lease.entry_id,
            )
            added.append(
                StreamAdded(payload=lease.lbs_info, additional_info=lease.info)
            )
        return added

    async def _lease_for(self, entry_id: str, fields: Fields) -> Lease | None:
        try:
            message = LBSMessage.from_entry(entry_id, fields)
        except InvalidLBSMessageError as exc:
            await self._set_aside(entry_id, fields, exc.reason)
            return None
        held = self._leases.get(message.data_stream_name)
        if held is not None and held.entry_id != entry_id:
            reason = (
                f"data stream {message.data_stream_name!r} is already held by this "
                f"consumer under LBS entry {held.entry_id}"
            )
            await self._set_aside(entry_id, fields, reason)
            return None
        return Lease(message.data_stream_name, entry_id, message.info)

    async def _set_aside(self, entry_id: str, fields: Fields, reason: str) -> None:
        self._log.warning(
            "LBS entry %s is invalid (%s); moved to %s",
            entry_id,
            reason,
            self._store.dead,
        )
        await self._store.dead_letter(entry_id, fields, reason)
