"""The LBS reader: assignment of new entries and startup recovery."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import anyio

from ._config import RetryConfig
from ._errors import InvalidLBSMessageError, RedisCommandError
from ._leases import Lease, Leases
from ._log import EventLog
from ._metrics import MetricsRecorder
from ._models import LBSInfo, LBSMessage, StreamAdded
from ._outage import Outage
from ._outbox import Outbox
from ._store import Entry, Fields, Store


def too_many_deliveries(deliveries: int, max_deliveries: int) -> str:
    """The dead-letter reason of an entry delivered too often."""
    return f"delivered {deliveries} times, more than max_deliveries={max_deliveries}"


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
        max_deliveries: int,
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
        self._max_deliveries = max_deliveries
        self._retry = retry
        self._metrics = metrics
        self._log = log

    async def run(self, stopping: anyio.Event, give_up: Callable[[str], None]) -> None:
        """Read and assign new entries until *stopping*, backing off on errors."""
        outage = Outage("reading the LBS", self._retry, self._log)
        while not stopping.is_set():
            sent = time.monotonic()
            try:
                entries = await self._store.read_new(self._read_batch, self._block_ms)
                added = await self.assign(entries)
            except RedisCommandError as exc:
                delay = outage.failed(exc)
                if delay is None:
                    give_up(f"reading the LBS failed {outage.failures} times: {exc}")
                    return
                await anyio.sleep(delay)
                continue
            # The read blocks until entries come: Redis answered when it began.
            outage.recovered(sent)
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
            deliveries = await self._store.deliveries([i for i, _ in entries])
            entries = await self._give_back_held(entries, deliveries)
            added.extend(await self.assign(entries, deliveries))
            if cursor == "0-0":
                return added

    async def _give_back_held(
        self, entries: list[Entry], deliveries: Mapping[str, int]
    ) -> list[Entry]:
        """The recovered entries nobody holds; the held go back to their holders.

        XAUTOCLAIM took them and counted a delivery; giving them back undoes
        both, so a live holder's entry is neither moved nor, after enough
        restarts of other consumers, taken for a poison stream.
        """
        keyed: list[tuple[str, str, int]] = []
        for entry_id, fields in entries:
            try:
                message = LBSMessage.from_entry(entry_id, fields)
            except InvalidLBSMessageError:
                continue  # assign() sets it aside, or acks it when deleted
            info = LBSInfo(
                data_stream_name=message.data_stream_name, id_in_lbs=entry_id
            )
            count = max(deliveries.get(entry_id, 1) - 1, 0)
            keyed.append((info.mutex_key, entry_id, count))
        holders = await self._store.give_back_held(keyed)
        given = {}
        for (_, entry_id, _), holder in zip(keyed, holders, strict=True):
            if holder is not None:
                given[entry_id] = holder
                self._log.debug(
                    "recovered entry is held by %r; given back",
                    holder,
                    entry_id=entry_id,
                )
        return [entry for entry in entries if entry[0] not in given]

    async def assign(
        self, entries: list[Entry], deliveries: Mapping[str, int] | None = None
    ) -> list[StreamAdded]:
        """Lock the streams of *entries* in one round trip; set bad ones aside.

        Args:
            entries: read or recovered LBS entries.
            deliveries: delivery counts of recovered entries; new ones have 1.
        """
        leases: list[Lease] = []
        for entry_id, fields in entries:
            if fields is None:
                # Deleted from the LBS while pending: nothing is left to do.
                await self._store.ack(entry_id)
                continue
            count = (deliveries or {}).get(entry_id, 1)
            if count > self._max_deliveries:
                reason = too_many_deliveries(count, self._max_deliveries)
                await self.set_aside(entry_id, fields, reason)
                continue
            lease = await self._lease_for(entry_id, fields, leases)
            if lease is not None:
                leases.append(lease)
        started = time.monotonic()
        tokens = await self._store.acquire_locks(
            [lease.key for lease in leases], self._ttl_ms
        )
        duration = time.monotonic() - started
        pending = await self._still_pending(
            [lease for lease, token in zip(leases, tokens, strict=True) if token]
        )
        added = []
        for lease, token in zip(leases, tokens, strict=True):
            self._metrics.record_lock_acquisition_attempt(
                lease.name, token > 0, duration
            )
            if not token:
                self._log.debug(
                    "lock is held by another consumer; left with it",
                    stream=lease.name,
                    entry_id=lease.entry_id,
                )
                continue
            if lease.entry_id not in pending:
                continue
            lease.token = token
            self._leases.add(lease)
            self._metrics.record_stream_processing_start(lease.name, lease.started)
            self._log.info(
                "recovered data stream"
                if deliveries is not None
                else "assigned data stream",
                stream=lease.name,
                entry_id=lease.entry_id,
            )
            added.append(
                StreamAdded(
                    payload=lease.lbs_info,
                    additional_info=lease.info,
                    fencing_token=token,
                )
            )
        return added

    async def _still_pending(self, locked: list[Lease]) -> set[str]:
        """The entry ids of *locked* still pending; the other locks are let go.

        A reply can reach this consumer late (a pause, a slow network): by then
        another consumer may have recovered the entry and finished it, deleting
        its lock, so taking the lock proves nothing. Once the lock is held
        nobody else can finish the entry, so it is pending now or never again.
        """
        if not locked:
            return set()
        pending = await self._store.deliveries([lease.entry_id for lease in locked])
        gone = [lease for lease in locked if lease.entry_id not in pending]
        for lease in gone:
            self._log.warning(
                "LBS entry was finished by another consumer before this one "
                "took it; left alone",
                stream=lease.name,
                entry_id=lease.entry_id,
            )
        await self._store.release_locks([lease.key for lease in gone])
        return set(pending)

    async def _lease_for(
        self, entry_id: str, fields: Fields, batch: list[Lease]
    ) -> Lease | None:
        try:
            message = LBSMessage.from_entry(entry_id, fields)
        except InvalidLBSMessageError as exc:
            await self.set_aside(entry_id, fields, exc.reason)
            return None
        # The leases of this batch are not held yet, but count as held: two
        # leases of one name would share one slot in the held streams.
        named = [lease for lease in batch if lease.name == message.data_stream_name]
        held = named[0] if named else self._leases.get(message.data_stream_name)
        if held is not None and held.entry_id != entry_id:
            reason = (
                f"data stream {message.data_stream_name!r} is already held by this "
                f"consumer under LBS entry {held.entry_id}"
            )
            await self.set_aside(entry_id, fields, reason)
            return None
        return Lease(message.data_stream_name, entry_id, message.info)

    async def set_aside(self, entry_id: str, fields: Fields, reason: str) -> None:
        """Move an entry to the dead-letter stream, logging why."""
        self._log.warning(
            "LBS entry %s set aside in %s: %s",
            entry_id,
            self._store.dead,
            reason,
            entry_id=entry_id,
        )
        await self._store.dead_letter(entry_id, fields, reason)
