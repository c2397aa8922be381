"""The client: one consumer of one service."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType
from typing import Any

import anyio
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from ._batch import Coalescer
from ._cluster import ClusterStore
from ._config import MIN_HB_INTERVAL, RetryConfig, at_least, consumer_name
from ._errors import (
    AlreadyClaimedError,
    DataStreamNotFoundError,
    InvalidLBSMessageError,
    InvalidOptionError,
    LockLostError,
    PoisonStreamError,
    RedisCommandError,
    RSCError,
)
from ._heartbeat_thread import HeartbeatThread, check_cloneable
from ._keyspace import KeyspaceListener, ensure_expiry_events, expired_notifications
from ._lbs import LBSReader, too_many_deliveries
from ._leases import Heartbeat, Lease, Leases
from ._log import EventLog
from ._metrics import MetricsRecorder, NoMetrics
from ._models import LBSInfo, LBSMessage, StreamDisowned, StreamTerminated
from ._outbox import Notifications, Outbox
from ._reconcile import Reconciler
from ._store import Fields, Store

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

SHUTDOWN_TIMEOUT = 5.0
"""Seconds ``done()`` waits for Redis to finish or hand back the held streams."""

STOP_TIMEOUT = 2.0
"""Seconds ``done()`` waits for the tasks to stop on their own signal, and again
once they are cancelled; and, alone, for the store to close. Together with
:data:`SHUTDOWN_TIMEOUT` they bound ``done()``."""

EXPIRY_MEMORY = 60.0
"""Seconds the expiry of a lock we let go or found gone is awaited, to be kept
from ourselves."""

CONFIG_CHECK_HEARTBEATS = 5
"""Heartbeat intervals between checks that expiry events are still enabled."""

READ_BLOCK_MS = 1000
"""How long XREADGROUP blocks: well under redis-py's socket timeout, and short
enough that a stop request is seen promptly even if a cancellation is lost."""


class RedisStreamClient:
    """One consumer of a service: takes data streams, holds them, gives them back.

    Args:
        redis: the client of the Redis that holds the service.
        service: the service name; its keys are ``<service>-input`` and so on.
        consumer_id: this consumer's name; default ``POD_NAME``, else ``POD_IP``,
            else the host name.
        hb_interval: seconds; the lock TTL. Locks are extended every half of it.
            At least 0.2.
        lbs_idle_time: seconds an LBS entry must be idle before startup recovery
            takes it over; at least ``2 * hb_interval``.
        lbs_recovery_count: entries per page of startup recovery; > 0.
        ksp_buffer_size: keyspace events buffered before new ones are dropped.
        output_buffer_size: notifications buffered before the LBS reader waits.
        force_config_override: add the flags ``K`` and ``x`` to a server's
            ``notify-keyspace-events`` that already holds other flags.
        retry: how the LBS reader and the keyspace listener back off.
        logger: where records go; default ``logging.getLogger("rsc_async")``.
        metrics: receives an event per claim, lock, heartbeat and finish.
        read_batch: LBS entries read and locked per round trip; > 0.
        reconcile_interval: seconds between reconciliation sweeps across the
            service; default ``lbs_idle_time``; 0 turns them off.
        max_deliveries: an LBS entry delivered more often than this is moved
            to the dead-letter stream instead of being handed out again. Every
            claim counts as a delivery, a claim after ``release_stream`` too: a
            stream handed back at every deploy reaches the limit after that
            many deploys, so raise it for streams that live that long.
        heartbeat_thread: run the heartbeat on a thread with its own
            connection, so locks are kept while handlers block the event loop
            (CPU-bound work). Needs a plain ``redis.asyncio.Redis``; the
            ``metrics`` recorder is then called from that thread too.
        progress_deadline: with ``heartbeat_thread``, seconds the event loop
            may go without progress before the locks are let go; at least
            ``hb_interval``.

    Raises:
        InvalidOptionError: an option is out of range (a ``ValueError``).
    """

    def __init__(
        self,
        redis: aioredis.Redis | RedisCluster,
        service: str,
        *,
        consumer_id: str | None = None,
        hb_interval: float = 2.0,
        lbs_idle_time: float = 40.0,
        lbs_recovery_count: int = 1000,
        ksp_buffer_size: int = 500,
        output_buffer_size: int = 500,
        force_config_override: bool = False,
        retry: RetryConfig | None = None,
        logger: logging.Logger | None = None,
        metrics: MetricsRecorder | None = None,
        read_batch: int = 100,
        reconcile_interval: float | None = None,
        max_deliveries: int = 10,
        heartbeat_thread: bool = False,
        progress_deadline: float = 60.0,
    ) -> None:
        if not isinstance(service, str) or not service:
            raise InvalidOptionError("service", service, "must be a non-empty str")
        if consumer_id == "":
            raise InvalidOptionError("consumer_id", consumer_id, "must not be empty")
        at_least("hb_interval", hb_interval, MIN_HB_INTERVAL)
        at_least("lbs_idle_time", lbs_idle_time, 2 * hb_interval)
        at_least("lbs_recovery_count", lbs_recovery_count, 1, whole=True)
        at_least("ksp_buffer_size", ksp_buffer_size, 1, whole=True)
        at_least("output_buffer_size", output_buffer_size, 1, whole=True)
        at_least("read_batch", read_batch, 1, whole=True)
        at_least("max_deliveries", max_deliveries, 1, whole=True)
        at_least("progress_deadline", progress_deadline, hb_interval)
        if heartbeat_thread:
            check_cloneable(redis)
        if reconcile_interval is None:
            reconcile_interval = lbs_idle_time
        if reconcile_interval != 0:
            at_least("reconcile_interval", reconcile_interval, hb_interval)
        if retry is not None and not isinstance(retry, RetryConfig):
            raise InvalidOptionError("retry", retry, "must be a RetryConfig")

        self.service = service
        self.id = consumer_name(consumer_id)
        self.hb_interval = float(hb_interval)
        self._lbs_idle_ms = round(lbs_idle_time * 1000)
        self._recovery_count = int(lbs_recovery_count)
        self._ksp_buffer_size = int(ksp_buffer_size)
        self._force_config = force_config_override
        self._retry = retry or RetryConfig()
        self._metrics: MetricsRecorder = metrics or NoMetrics()
        self._log = EventLog(logger or logging.getLogger("rsc_async"), self.id)
        self._read_batch = int(read_batch)
        self._reconcile_interval = float(reconcile_interval)
        self._max_deliveries = int(max_deliveries)
        self._heartbeat_thread = heartbeat_thread
        self._progress_deadline = float(progress_deadline)

        self._store = (
            ClusterStore(redis, service, self.id)
            if isinstance(redis, RedisCluster)
            else Store(redis, service, self.id)
        )
        self._leases = Leases()
        self._outbox = Outbox(int(output_buffer_size))
        self._finisher: Coalescer[Lease, str | None] = Coalescer(self._finish_batch)
        self._hand_back: Coalescer[Lease, str | None] = Coalescer(self._hand_back_batch)
        self._claimer: Coalescer[Lease, tuple[Fields, int] | None] = Coalescer(
            self._claim_batch
        )
        # Locks this consumer handed back or found gone, by when their expiry
        # should have been heard: it is news to the others, not to us.
        self._own_expiries: dict[str, float] = {}
        self._reader = LBSReader(
            self._store,
            self._leases,
            self._outbox,
            ttl=self.hb_interval,
            read_batch=self._read_batch,
            block_ms=_read_block_ms(self._store.socket_timeout),
            max_deliveries=self._max_deliveries,
            retry=self._retry,
            metrics=self._metrics,
            log=self._log,
        )
        self._notifications = Notifications(self._start, self._outbox)
        self._start_lock = asyncio.Lock()
        self._done_lock = asyncio.Lock()
        self._started = False
        self._closed = False
        self._stopping: anyio.Event | None = None
        self._scope: anyio.CancelScope | None = None
        self._supervisor: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        held = len(self._leases)
        return f"<RedisStreamClient {self.service!r} {self.id!r} holds {held}>"

    @property
    def held_streams(self) -> Sequence[LBSInfo]:
        """The data streams this consumer holds now."""
        return [lease.lbs_info for lease in self._leases]

    def init(self) -> Notifications:
        """Start the client; await the result, iterate it, or both.

        After ``await client.init()`` returns, the consumer group exists, startup
        recovery has run and the tasks are running. Iterating the result yields
        notifications until the client stops. Calling it again returns the same
        object. Once ``done()`` has returned, awaiting it returns at once and
        iterating it ends at once; a stopped client does not start again.

        Raises:
            ExistingKeyspaceConfigError: see ``force_config_override``.
            KeyspaceConfigError: lock expiry events cannot be enabled.
            RedisCommandError: Redis failed during set-up.
            RSCError: ``done()`` is under way.
        """
        return self._notifications

    async def __aenter__(self) -> RedisStreamClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.done()

    async def _start(self) -> None:
        if self._started or self._outbox.closed:
            return
        async with self._start_lock:
            if self._started:
                return
            if self._closed:
                msg = f"client {self.id!r} was stopped; create a new one"
                raise RSCError(msg)
            await self._store.prepare()
            self._explain_retries()
            await ensure_expiry_events(self._store, self._force_config, self._log)
            await self._store.ensure_group()
            if self._closed:
                # done() ran during the set-up: start nothing, as after it.
                return
            ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._stopping = anyio.Event()
            self._supervisor = asyncio.create_task(self._supervise(ready))
            try:
                await asyncio.shield(ready)
            except BaseException:
                # Stop what did start; a later init() may try again.
                await self._stop_tasks()
                raise
            self._started = True
            self._log.info("started; holds %d data streams", len(self._leases))

    def _explain_retries(self) -> None:
        retries = self._store.command_retries
        if retries <= 1:
            return
        ours = self._retry.max_retries
        total = "forever" if ours == -1 else f"{(retries + 1) * (ours + 1)} times"
        self._log.info(
            "the Redis client retries each failed command %d times with its own "
            "back-off before this client's RetryConfig counts one failure, so an "
            "outage is retried %s in all; give the Redis client "
            "retry=Retry(NoBackoff(), 1) to leave outages to RetryConfig",
            retries,
            total,
        )

    def _build_tasks(
        self,
    ) -> tuple[KeyspaceListener, Heartbeat | HeartbeatThread, Reconciler | None]:
        reconciler = None
        if self._reconcile_interval:
            reconciler = Reconciler(
                self._store,
                interval=self._reconcile_interval,
                hb_interval=self.hb_interval,
                max_deliveries=self._max_deliveries,
                set_aside=self._reader.set_aside,
                log=self._log,
            )
        listener = KeyspaceListener(
            self._store,
            self._ksp_buffer_size,
            self._retry,
            self._on_expired,
            reconciler.trigger if reconciler else lambda: None,
            force_config=self._force_config,
            check_period=CONFIG_CHECK_HEARTBEATS * self.hb_interval,
            refresh_period=self.hb_interval,
            metrics=self._metrics,
            log=self._log,
        )
        heartbeat: Heartbeat | HeartbeatThread
        if self._heartbeat_thread:
            heartbeat = HeartbeatThread(
                self._store,
                self._leases,
                self.hb_interval,
                self._disown,
                self._metrics,
                self._log,
                self._progress_deadline,
            )
        else:
            heartbeat = Heartbeat(
                self._store,
                self._leases,
                self.hb_interval,
                self._disown,
                self._metrics,
                self._log,
            )
        return listener, heartbeat, reconciler

    async def _supervise(self, ready: asyncio.Future[None]) -> None:
        assert self._stopping is not None
        listener, heartbeat, reconciler = self._build_tasks()
        try:
            async with anyio.create_task_group() as tasks:
                self._scope = tasks.cancel_scope
                await tasks.start(listener.listen, self._stopping, self._give_up)
                tasks.start_soon(listener.dispatch, self._stopping)
                tasks.start_soon(heartbeat.run, self._stopping)
                await self._recover()
                tasks.start_soon(self._reader.run, self._stopping, self._give_up)
                if reconciler is not None:
                    tasks.start_soon(reconciler.run, self._stopping)
                ready.set_result(None)
        except Exception as exc:
            error = _first_error(exc)
            if not ready.done():
                ready.set_exception(error)
            else:
                self._log.error("stopped by an unexpected error: %r", error)
                self._outbox.post(
                    StreamTerminated(additional_info={"info": repr(error)})
                )
        finally:
            if not ready.done():
                ready.cancel()
            # A failed start leaves the notifications open for another init().
            if self._started:
                self._outbox.close()

    async def _recover(self) -> None:
        started = time.monotonic()
        try:
            added = await self._reader.recover(self._lbs_idle_ms, self._recovery_count)
        except Exception:
            self._metrics.record_startup_recovery(False, 0, time.monotonic() - started)
            raise
        self._metrics.record_startup_recovery(
            True, len(added), time.monotonic() - started
        )
        if added:
            self._log.info("recovered %d data streams", len(added))
        for notification in added:
            self._outbox.post(notification)

    def _give_up(self, reason: str) -> None:
        if self._stopping is None or self._stopping.is_set():
            return
        self._log.error("stopping: %s", reason)
        self._outbox.post(StreamTerminated(additional_info={"info": reason}))
        self._stopping.set()
        if self._scope is not None:
            self._scope.cancel()

    def _disown(self, lease: Lease, gone: bool = False) -> None:
        if not self._leases.drop(lease):
            return
        if gone:
            # The lock ran out: its expiry event is on its way, and must not
            # come back to us as the STREAM_EXPIRED of someone else's lock.
            self._expect_expiries([lease.key])
        self._log.warning(
            "lost the lock of a data stream", stream=lease.name, entry_id=lease.entry_id
        )
        self._outbox.post(
            StreamDisowned(
                payload=lease.lbs_info,
                additional_info=lease.info,
                fencing_token=lease.token,
            )
        )

    async def _on_expired(self, expired: list[LBSInfo]) -> None:
        others = []
        for info in expired:
            lease = self._leases.by_key(info.mutex_key)
            if self._own_expiries.pop(info.mutex_key, None) is not None:
                continue
            if lease is None:
                others.append(info)
            elif not lease.finishing:
                self._disown(lease)
        for notification in await expired_notifications(self._store, others, self._log):
            await self._outbox.send(notification)

    def fencing_token(self, name: str) -> int:
        """The fencing token of the lock this consumer holds on *name*.

        Tokens come from one counter per service, so they only grow. Send the
        token with every write made for the stream, and have the store refuse
        a write whose token is lower than one it has already seen for that
        stream: a consumer that lost its lock (a pause, a partition) then
        cannot overwrite the work of the consumer that took over.

        Raises:
            DataStreamNotFoundError: this consumer does not hold *name*.
        """
        lease = self._leases.get(name)
        if lease is None:
            raise DataStreamNotFoundError(name)
        return lease.token

    async def claim(self, info: LBSInfo) -> int:
        """Take over a data stream whose lock expired or was handed back.

        The lock is taken first, then the LBS entry is claimed with XCLAIM, so
        of any number of consumers claiming one stream exactly one wins; with
        the lock held, the claim needs no idle-time guard of its own.

        Returns:
            The fencing token of the new lock.

        Raises:
            AlreadyClaimedError: another consumer took it first.
            InvalidLBSMessageError: the entry is malformed; it was moved to the
                dead-letter stream.
            PoisonStreamError: the entry was delivered more than
                ``max_deliveries`` times; it was moved to the dead-letter stream.
            RedisCommandError: Redis failed.
            RSCError: the client is not running.
        """
        name, entry_id = info.data_stream_name, info.id_in_lbs
        started = time.monotonic()
        success = False
        try:
            self._require_running()
            if self._leases.get(name) is not None:
                raise AlreadyClaimedError(name, entry_id)
            lease = Lease(name, entry_id, {})
            claimed = await self._claimer.submit(lease)
            if claimed is None:
                raise AlreadyClaimedError(name, entry_id)
            lease.info = await self._check_claimed(lease, *claimed)
            self._leases.add(lease)
            self._metrics.record_stream_processing_start(name, lease.started)
            self._log.info("claimed data stream", stream=name, entry_id=entry_id)
            success = True
            return lease.token
        finally:
            self._metrics.record_claim_attempt(
                name, success, time.monotonic() - started
            )

    def _require_running(self) -> None:
        if not self._started or self._outbox.closed:
            msg = f"client {self.id!r} is not running; await client.init() first"
            raise RSCError(msg)

    async def _claim_batch(
        self, leases: list[Lease]
    ) -> list[tuple[Fields, int] | None]:
        """Lock, then XCLAIM, every stream of concurrent claims: two round trips.

        Returns:
            Per lease, the claimed entry's fields and deliveries, or None when
            another consumer was first (its lock, or its claim of the entry).
        """
        started = time.monotonic()
        ttl_ms = round(self.hb_interval * 1000)
        tokens = await self._store.acquire_locks(
            [lease.key for lease in leases], ttl_ms
        )
        duration = time.monotonic() - started
        for lease, token in zip(leases, tokens, strict=True):
            lease.token = token
            self._metrics.record_lock_acquisition_attempt(
                lease.name, token > 0, duration
            )
        locked = [lease for lease in leases if lease.token]
        try:
            claimed = await self._store.claim_entries(
                [lease.entry_id for lease in locked]
            )
        except BaseException:
            await self._unlock(locked)
            raise
        await self._unlock([lease for lease in locked if lease.entry_id not in claimed])
        return [
            claimed.get(lease.entry_id) if lease.token else None for lease in leases
        ]

    async def _check_claimed(
        self, lease: Lease, fields: Fields, deliveries: int
    ) -> dict[str, Any]:
        """The Info of a claimed entry; a bad or poison one is set aside."""
        try:
            message = LBSMessage.from_entry(lease.entry_id, fields)
            if deliveries > self._max_deliveries:
                reason = too_many_deliveries(deliveries, self._max_deliveries)
                raise PoisonStreamError(lease.name, lease.entry_id, reason)
        except (InvalidLBSMessageError, PoisonStreamError) as exc:
            await self._reader.set_aside(lease.entry_id, fields, exc.reason)
            await self._unlock([lease])
            raise
        return message.info

    async def _unlock(self, leases: list[Lease]) -> None:
        """Release locks taken for claims that did not go through."""
        if leases:
            with anyio.CancelScope(shield=True), anyio.move_on_after(SHUTDOWN_TIMEOUT):
                await self._store.release_locks([lease.key for lease in leases])

    async def done_stream(self, name: str) -> None:
        """Finish a data stream: release its lock, XACK and XDEL its LBS entry.

        Calls made at the same time share round trips.

        Raises:
            DataStreamNotFoundError: this consumer does not hold *name*.
            LockLostError: another consumer holds the lock now, or took the
                stream over after the lock ran out (and may have finished it);
                nothing was acknowledged.
            RedisCommandError: Redis failed; the stream is still held.
        """
        await self._let_go(name, self._finisher, "finished")

    async def release_stream(self, name: str) -> None:
        """Give a data stream back unfinished, for another consumer to claim.

        The lock is made to expire at once, so every other consumer is told
        ``STREAM_EXPIRED`` now rather than after the TTL, and any of them can
        claim it straight away: a rolling deploy moves work in milliseconds.
        The LBS entry stays pending until a claim takes it.

        Raises:
            DataStreamNotFoundError: this consumer does not hold *name*.
            LockLostError: another consumer holds the lock now.
            RedisCommandError: Redis failed; the stream is still held.
        """
        await self._let_go(name, self._hand_back, "handed back")

    async def _let_go(
        self, name: str, batcher: Coalescer[Lease, str | None], outcome: str
    ) -> None:
        lease = self._leases.get(name)
        if lease is None or lease.finishing:
            raise DataStreamNotFoundError(name)
        lease.finishing = True
        try:
            holder = await batcher.submit(lease)
        except BaseException:
            lease.finishing = False
            raise
        self._leases.drop(lease)
        self._metrics.record_lock_release_attempt(name, holder is None)
        self._metrics.record_stream_processing_end(name, lease.started)
        if holder is not None:
            self._log.warning(
                "lock is held by %r; the stream was not %s",
                holder,
                outcome,
                stream=name,
                entry_id=lease.entry_id,
            )
            raise LockLostError(name, lease.entry_id, holder)
        self._log.info("%s data stream", outcome, stream=name, entry_id=lease.entry_id)

    async def _finish_batch(self, leases: list[Lease]) -> list[str | None]:
        return await self._store.finish(
            [(lease.key, lease.entry_id) for lease in leases]
        )

    async def _hand_back_batch(self, leases: list[Lease]) -> list[str | None]:
        keys = [lease.key for lease in leases]
        self._expect_expiries(keys)
        holders = await self._store.hand_back(keys)
        # Only locks that were ours expire now; forget the others. A lock that
        # was already gone was let go of all the same ("" holds it).
        for key, holder in zip(keys, holders, strict=True):
            if holder is not None:
                self._own_expiries.pop(key, None)
        return [holder or None for holder in holders]

    def _expect_expiries(self, keys: list[str]) -> None:
        now = time.monotonic()
        # An expiry that was never heard (a dropped subscription) is forgotten.
        for key, deadline in list(self._own_expiries.items()):
            if deadline < now:
                del self._own_expiries[key]
        self._own_expiries.update(dict.fromkeys(keys, now + EXPIRY_MEMORY))

    async def done(self, *, release: bool = False) -> None:
        """Finish every held stream, stop the tasks and end the notifications.

        Args:
            release: hand every held stream back (see :meth:`release_stream`)
                instead of finishing it, for a shutdown that leaves the work to
                the other consumers.

        Idempotent. Bounded: when Redis does not answer it still returns within
        about eleven seconds (five to let go of the streams, two for the tasks
        to stop, two more once they are cancelled, two to close). Notifications
        already buffered may still be read; no ``StreamTerminated`` is added.
        """
        async with self._done_lock:
            if self._closed:
                return
            self._closed = True
            with anyio.CancelScope(shield=True):
                with anyio.move_on_after(SHUTDOWN_TIMEOUT):
                    # A start in progress settles first, so that no task it
                    # starts outlives this call.
                    async with self._start_lock:
                        pass
                    await self._let_go_of_all(
                        self.release_stream if release else self.done_stream
                    )
                    await self._finisher.wait_idle()
                    await self._hand_back.wait_idle()
                await self._stop()
            self._log.info("stopped")

    async def _let_go_of_all(self, let_go: Callable[[str], Awaitable[None]]) -> None:
        names = [lease.name for lease in self._leases if not lease.finishing]
        results = await asyncio.gather(
            *(let_go(name) for name in names), return_exceptions=True
        )
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                self._log.warning("could not let go: %s", result, stream=name)

    async def _stop(self) -> None:
        await self._stop_tasks()
        # done() waited its time for these round trips; Redis is not answering.
        gone = RedisCommandError(
            f"client {self.id!r} stopped before Redis answered; the stream may "
            "still be held"
        )
        await self._finisher.abandon(gone)
        await self._hand_back.abandon(gone)
        await self._claimer.abandon(gone)
        with anyio.move_on_after(STOP_TIMEOUT):
            await self._store.close()
        self._outbox.close()

    async def _stop_tasks(self) -> None:
        if self._stopping is not None:
            self._stopping.set()
        if self._scope is not None:
            self._scope.cancel()
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            await asyncio.wait({supervisor}, timeout=STOP_TIMEOUT)
            if not supervisor.done():
                self._log.warning("tasks did not stop in time; cancelling them")
                supervisor.cancel()
                await asyncio.wait({supervisor}, timeout=STOP_TIMEOUT)


def _read_block_ms(socket_timeout: float | None) -> int:
    if socket_timeout:
        return max(1, min(READ_BLOCK_MS, int(socket_timeout * 500)))
    return READ_BLOCK_MS


def _first_error(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
