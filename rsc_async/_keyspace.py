"""Keyspace notifications: the server setting they need, and the listener."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from anyio.abc import TaskStatus

from ._config import RetryConfig
from ._errors import (
    ExistingKeyspaceConfigError,
    KeyspaceConfigError,
    RedisCommandError,
)
from ._log import EventLog
from ._metrics import MetricsRecorder
from ._models import MUTEX_KEY_SEP, LBSInfo, LBSMessage, StreamExpired, decode
from ._outage import Outage
from ._store import ConfigRefusedError, NodeConfig, Store

NOTIFY_SETTING = "notify-keyspace-events"


def missing_flags(flags: str) -> str:
    """The flags expiry events need that *flags* lacks: K, and x (or A)."""
    missing = "" if "K" in flags else "K"
    if "x" not in flags and "A" not in flags:
        missing += "x"
    return missing


async def ensure_expiry_events(
    store: Store, force: bool, log: EventLog, *, restoring: bool = False
) -> None:
    """Make every server of *store* publish lock expiries, changing as little
    as it can.

    With *restoring*, the flags were set before and are checked again (a
    restarted or failed-over server forgets a CONFIG SET): a change is logged
    at WARNING, and a refused CONFIG GET is not logged again.

    Raises:
        ExistingKeyspaceConfigError: other flags are set and *force* is False.
        KeyspaceConfigError: the flags are missing and CONFIG SET is refused.
    """
    for node in await store.config_targets():
        await _ensure_on(node, force, log, restoring)


async def _ensure_on(
    node: NodeConfig, force: bool, log: EventLog, restoring: bool
) -> None:
    try:
        flags = await node.get()
    except ConfigRefusedError:
        if not restoring:
            log.warning(
                "CONFIG GET %s is refused on %s; lock expiry events depend on "
                "the server's configuration, which must include the flags K and x",
                NOTIFY_SETTING,
                node.name,
            )
        return
    missing = missing_flags(flags)
    if not missing:
        return
    if flags and not force:
        raise ExistingKeyspaceConfigError(flags)
    wanted = flags + missing if flags else "KEx"
    try:
        await node.set(wanted)
    except ConfigRefusedError as exc:
        msg = (
            f"{NOTIFY_SETTING} is {flags!r} on {node.name} and CONFIG SET is "
            f"refused; enable lock expiry events in the server's configuration "
            f"({NOTIFY_SETTING} {wanted!r})"
        )
        raise KeyspaceConfigError(msg) from exc
    level = logging.WARNING if restoring else logging.INFO
    log.log(
        level, "set %s on %s from %r to %r", NOTIFY_SETTING, node.name, flags, wanted
    )


class KeyspaceListener:
    """Hears lock expiries and turns them into notifications.

    One loop reads the subscription into a bounded buffer; another resolves
    what was heard (a lock of ours, or another consumer's stream to claim).
    When the buffer is full, new events are dropped and counted, never held
    up: a slow reader of notifications must not stall the subscription.
    """

    def __init__(
        self,
        store: Store,
        buffer_size: int,
        retry: RetryConfig,
        on_expired: Callable[[list[LBSInfo]], Awaitable[None]],
        on_resubscribed: Callable[[], None],
        *,
        force_config: bool,
        check_period: float,
        refresh_period: float,
        metrics: MetricsRecorder,
        log: EventLog,
    ) -> None:
        self._store = store
        self._on_resubscribed = on_resubscribed
        self._force_config = force_config
        self._check_period = check_period
        self._refresh_period = refresh_period
        self._buffer: deque[LBSInfo] = deque()
        self._buffer_size = buffer_size
        self._heard = anyio.Event()
        self._retry = retry
        self._on_expired = on_expired
        self._metrics = metrics
        self._log = log
        self._config_error: str | None = None
        self._prefix = f"__keyspace@{store.db}__:"
        self.pattern = f"{self._prefix}*{MUTEX_KEY_SEP}*"

    async def listen(
        self,
        stopping: anyio.Event,
        give_up: Callable[[str], None],
        *,
        task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Subscribe, report readiness, then read events until *stopping*."""
        subscription = self._store.subscription(self.pattern)
        outage = Outage("the keyspace subscription", self._retry, self._log)
        resubscribing = False
        next_check = time.monotonic() + self._check_period
        next_refresh = time.monotonic() + self._refresh_period
        try:
            while not stopping.is_set():
                try:
                    if not subscription.active:
                        await subscription.subscribe()
                        if resubscribing:
                            # Events published while the connection was down
                            # are lost, and a restarted server may have lost
                            # its configuration too.
                            await self._check_config()
                            self._on_resubscribed()
                        resubscribing = True
                        task_status.started()
                        task_status = anyio.TASK_STATUS_IGNORED
                    elif time.monotonic() >= next_refresh:
                        # A cluster's primaries change in a failover; their
                        # events must be heard within a heartbeat or so.
                        await subscription.refresh()
                        next_refresh = time.monotonic() + self._refresh_period
                    if subscription.resumed():
                        self._log.warning(
                            "the keyspace subscription was made anew; lock "
                            "expiries published before were missed, so the "
                            "service is swept for orphans"
                        )
                        await self._check_config()
                        self._on_resubscribed()
                    # Not an elif: a refresh is due on nearly every pass and
                    # would starve the check.
                    if time.monotonic() >= next_check:
                        await self._check_config()
                        next_check = time.monotonic() + self._check_period
                    message = await subscription.next(wait=0.5)
                except RedisCommandError as exc:
                    delay = outage.failed(exc)
                    if delay is None:
                        give_up(f"keyspace subscription failed: {exc}")
                        return
                    await subscription.reset()
                    await anyio.sleep(delay)
                    continue
                outage.recovered()
                if message is not None:
                    self._hear(message)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await subscription.close()

    async def _check_config(self) -> None:
        try:
            await ensure_expiry_events(
                self._store, self._force_config, self._log, restoring=True
            )
        except KeyspaceConfigError as exc:
            # Checked every few heartbeats: said once, until it changes.
            if str(exc) != self._config_error:
                self._log.error("lock expiry events are off: %s", exc)
            self._config_error = str(exc)
        else:
            self._config_error = None

    def _hear(self, message: dict[str, Any]) -> None:
        if decode(message.get("data") or b"") != "expired":
            return
        key = decode(message["channel"]).removeprefix(self._prefix)
        try:
            info = LBSInfo.from_mutex_key(key)
        except ValueError:
            self._log.debug("ignored expiry of %r: not a lock key", key)
            return
        self._metrics.record_ksp_notification(info.data_stream_name)
        if len(self._buffer) >= self._buffer_size:
            self._metrics.record_ksp_notification_dropped()
            self._log.warning(
                "keyspace buffer full (%d); dropped the expiry of a lock",
                self._buffer_size,
                stream=info.data_stream_name,
                entry_id=info.id_in_lbs,
            )
            return
        self._buffer.append(info)
        self._heard.set()

    async def dispatch(self, stopping: anyio.Event) -> None:
        """Hand what was heard, in batches, to the client until *stopping*."""
        while not stopping.is_set():
            with anyio.move_on_after(0.5):
                await self._heard.wait()
            self._heard = anyio.Event()
            while self._buffer:
                batch = list(self._buffer)
                self._buffer.clear()
                await self._on_expired(batch)


async def expired_notifications(
    store: Store, expired: list[LBSInfo], log: EventLog
) -> list[StreamExpired]:
    """StreamExpired for each expired lock whose entry is still in the LBS.

    An entry that is gone was finished after its lock expired: there is
    nothing left to claim, so it is not announced. Nor is a lock whose entry id
    belongs to an entry of another data stream: entry ids repeat across the
    LBSs of services that share a database, and every service hears every
    lock's expiry.
    """
    try:
        found = await store.entries([info.id_in_lbs for info in expired])
    except RedisCommandError as exc:
        log.warning(
            "could not read the entries of %d expired locks: %s", len(expired), exc
        )
        return [StreamExpired(payload=info) for info in expired]
    notifications = []
    for info in expired:
        if info.id_in_lbs not in found:
            log.debug(
                "lock expired after its entry was finished",
                stream=info.data_stream_name,
                entry_id=info.id_in_lbs,
            )
            continue
        try:
            message = LBSMessage.from_entry(info.id_in_lbs, found[info.id_in_lbs])
        except ValueError:
            extra = {}
        else:
            if message.data_stream_name != info.data_stream_name:
                log.debug(
                    "lock expired of an entry of another service",
                    stream=info.data_stream_name,
                    entry_id=info.id_in_lbs,
                )
                continue
            extra = message.info
        notifications.append(StreamExpired(payload=info, additional_info=extra))
    return notifications
