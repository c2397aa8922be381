"""What the client tells its logger and its metrics recorder."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast
from uuid import uuid4

import pytest
import pytest_asyncio
import redis.asyncio
from _wait import next_notification, wait_for

from rsc_async import (
    MUTEX_KEY_SEP,
    AlreadyClaimedError,
    LBSInfo,
    MetricsRecorder,
    RedisStreamClient,
    StreamAdded,
    add_stream,
)

GHOST = "redis-consumer-ghost"


class RecordingMetrics:
    """A MetricsRecorder that keeps every call, durations left out."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def of(self, event: str) -> list[tuple[Any, ...]]:
        """The arguments of every call of *event*, in order."""
        return [args for name, args in self.calls if name == event]

    def record_startup_recovery(
        self, success: bool, unacked_count: int, duration: float
    ) -> None:
        assert duration >= 0
        self.calls.append(("startup_recovery", (success, unacked_count)))

    def record_claim_attempt(self, stream: str, success: bool, duration: float) -> None:
        assert duration >= 0
        self.calls.append(("claim_attempt", (stream, success)))

    def record_lock_acquisition_attempt(
        self, stream: str, success: bool, duration: float
    ) -> None:
        assert duration >= 0
        self.calls.append(("lock_acquisition", (stream, success)))

    def record_lock_extension_attempt(self, stream: str, success: bool) -> None:
        self.calls.append(("lock_extension", (stream, success)))

    def record_lock_release_attempt(self, stream: str, success: bool) -> None:
        self.calls.append(("lock_release", (stream, success)))

    def record_stream_processing_start(self, stream: str, start_time: float) -> None:
        self.calls.append(("processing_start", (stream, start_time)))

    def record_stream_processing_end(self, stream: str, start_time: float) -> None:
        self.calls.append(("processing_end", (stream, start_time)))

    def record_ksp_notification(self, stream: str) -> None:
        self.calls.append(("ksp_notification", (stream,)))

    def record_ksp_notification_dropped(self) -> None:
        self.calls.append(("ksp_notification_dropped", ()))


class ListHandler(logging.Handler):
    """Keeps every record it handles."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def handler() -> ListHandler:
    """A handler that keeps the records of the test's own logger."""
    return ListHandler()


@pytest.fixture
def logger(handler: ListHandler) -> logging.Logger:
    """A logger outside the logging tree, so it sees only this test's client."""
    logger = logging.Logger(f"rsc-test-{uuid4().hex[:8]}", logging.DEBUG)
    logger.addHandler(handler)
    return logger


@pytest.fixture
def metrics() -> RecordingMetrics:
    """A fresh recorder."""
    return RecordingMetrics()


@pytest_asyncio.fixture
async def client(
    redis_client: redis.asyncio.Redis,
    service_name: str,
    logger: logging.Logger,
    metrics: RecordingMetrics,
) -> AsyncIterator[RedisStreamClient]:
    """A client with the test's logger and recorder, stopped after the test."""
    async with _client(redis_client, service_name, "observed", metrics, logger) as c:
        yield c


def _client(
    redis_client: redis.asyncio.Redis,
    service: str,
    consumer_id: str,
    metrics: RecordingMetrics,
    logger: logging.Logger | None = None,
    *,
    lbs_idle_time: float = 1.0,
) -> RedisStreamClient:
    return RedisStreamClient(
        redis_client,
        service,
        consumer_id=consumer_id,
        hb_interval=0.5,
        lbs_idle_time=lbs_idle_time,
        logger=logger,
        metrics=metrics,
    )


async def _ghost_entry(
    redis_client: redis.asyncio.Redis, service: str, name: str
) -> str:
    """Add an LBS entry and deliver it to a consumer that holds no client."""
    await redis_client.xgroup_create(
        f"{service}-input", f"{service}-group", id="$", mkstream=True
    )
    entry_id = await add_stream(redis_client, service, name)
    reply = await redis_client.xreadgroup(
        f"{service}-group", GHOST, {f"{service}-input": ">"}, count=1
    )
    assert 1 == len(cast(Any, reply)[0][1])
    return entry_id


def _records(
    handler: ListHandler, level: int, **attributes: str | None
) -> list[logging.LogRecord]:
    return [
        record
        for record in handler.records
        if record.levelno == level
        and all(_attr(record, k) == v for k, v in attributes.items())
    ]


def _attr(record: logging.LogRecord, name: str) -> object:
    return getattr(record, name, "<missing>")


def test_recording_metrics_is_a_metrics_recorder() -> None:
    """The recorder used below implements the public protocol."""
    assert isinstance(RecordingMetrics(), MetricsRecorder)


async def test_injected_logger_gets_start_assign_and_finish_records(
    client: RedisStreamClient,
    redis_client: redis.asyncio.Redis,
    service_name: str,
    handler: ListHandler,
) -> None:
    """Lifecycle records are INFO and carry consumer, stream and entry_id."""
    notifications = await client.init()
    entry_id = await add_stream(redis_client, service_name, "session-1")
    assert isinstance(await next_notification(notifications), StreamAdded)
    await client.done_stream("session-1")

    started = [
        record
        for record in _records(handler, logging.INFO, consumer=client.id)
        if "started" in record.getMessage()
    ]
    about_stream = _records(
        handler, logging.INFO, consumer=client.id, stream="session-1"
    )
    assert 1 == len(started)
    assert (None, None) == (_attr(started[0], "stream"), _attr(started[0], "entry_id"))
    assert [entry_id, entry_id] == [_attr(r, "entry_id") for r in about_stream]
    [assigned, finished] = [record.getMessage() for record in about_stream]
    assert "assigned" in assigned
    assert "finished" in finished
    for text in (assigned, finished):
        assert client.id in text
        assert "session-1" in text
        assert entry_id in text


async def test_injected_logger_replaces_the_library_logger(
    client: RedisStreamClient,
    handler: ListHandler,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records go to the injected logger, not to the "rsc_async" logger."""
    caplog.set_level(logging.DEBUG, logger="rsc_async")

    await client.init()

    assert 1 <= len(_records(handler, logging.INFO, consumer=client.id))
    assert [] == [
        record for record in caplog.records if record.name.startswith("rsc_async")
    ]


async def test_bad_entry_logs_a_warning_naming_its_entry_id(
    client: RedisStreamClient,
    redis_client: redis.asyncio.Redis,
    service_name: str,
    handler: ListHandler,
) -> None:
    """An LBS entry that is not JSON gives a WARNING naming its id."""
    await client.init()
    raw_id = await redis_client.xadd(f"{service_name}-input", {"lbs-input": "{oops"})
    entry_id = cast(bytes, raw_id).decode()

    def warned() -> bool:
        return bool(_records(handler, logging.WARNING, entry_id=entry_id))

    await wait_for(warned, timeout=10.0)

    [record] = _records(handler, logging.WARNING, entry_id=entry_id)
    assert client.id == _attr(record, "consumer")
    assert entry_id in record.getMessage()


async def test_startup_recovery_is_recorded_once_per_init(
    client: RedisStreamClient, metrics: RecordingMetrics
) -> None:
    """init() runs startup recovery once, however often it is awaited."""
    await client.init()
    await client.init()

    assert [(True, 0)] == metrics.of("startup_recovery")


async def test_startup_recovery_counts_the_entries_it_took_over(
    redis_client: redis.asyncio.Redis, service_name: str, metrics: RecordingMetrics
) -> None:
    """An idle pending entry without a lock is recovered and counted."""
    await _ghost_entry(redis_client, service_name, "session-1")

    async def idle_past_lbs_idle_time() -> bool:
        rows = await redis_client.xpending_range(
            f"{service_name}-input", f"{service_name}-group", "-", "+", 1
        )
        return int(rows[0]["time_since_delivered"]) > 1200

    await wait_for(idle_past_lbs_idle_time, timeout=10.0)

    async with _client(redis_client, service_name, "recoverer", metrics) as client:
        await client.init()

        assert [(True, 1)] == metrics.of("startup_recovery")
        assert [("session-1", True)] == metrics.of("lock_acquisition")
        assert ["session-1"] == [name for name, _ in metrics.of("processing_start")]


async def test_each_assignment_records_one_lock_acquisition_and_processing_start(
    client: RedisStreamClient,
    redis_client: redis.asyncio.Redis,
    service_name: str,
    metrics: RecordingMetrics,
) -> None:
    """Every assigned stream is one lock taken and one processing start."""
    notifications = await client.init()
    names = ["session-1", "session-2", "session-3"]
    for name in names:
        await add_stream(redis_client, service_name, name)

    added = [await next_notification(notifications, timeout=10.0) for _ in names]

    assert names == sorted(n.payload.data_stream_name for n in added if n.payload)
    assert [(name, True) for name in names] == sorted(metrics.of("lock_acquisition"))
    assert names == sorted(name for name, _ in metrics.of("processing_start"))


async def test_done_stream_records_one_release_and_one_processing_end(
    client: RedisStreamClient,
    redis_client: redis.asyncio.Redis,
    service_name: str,
    metrics: RecordingMetrics,
) -> None:
    """Finishing a stream records one release and the end of its processing."""
    notifications = await client.init()
    names = ["session-1", "session-2"]
    for name in names:
        await add_stream(redis_client, service_name, name)
    for _ in names:
        await next_notification(notifications, timeout=10.0)

    for name in names:
        await client.done_stream(name)
    await client.done()

    assert [(name, True) for name in names] == metrics.of("lock_release")
    assert sorted(metrics.of("processing_start")) == sorted(
        metrics.of("processing_end")
    )
    assert names == [name for name, _ in metrics.of("processing_end")]


async def test_claim_records_one_attempt_and_its_lock_acquisition(
    redis_client: redis.asyncio.Redis, service_name: str
) -> None:
    """A won and a lost claim each record one attempt and one lock acquisition."""
    entry_id = await _ghost_entry(redis_client, service_name, "session-1")
    info = LBSInfo(data_stream_name="session-1", id_in_lbs=entry_id)
    winner_metrics, loser_metrics = RecordingMetrics(), RecordingMetrics()
    # A long lbs_idle_time keeps recovery and the sweep away from the entry:
    # only the claims below may take it.
    async with (
        _client(
            redis_client, service_name, "winner", winner_metrics, lbs_idle_time=30.0
        ) as winner,
        _client(
            redis_client, service_name, "loser", loser_metrics, lbs_idle_time=30.0
        ) as loser,
    ):
        await winner.init()
        await loser.init()

        await winner.claim(info)
        with pytest.raises(AlreadyClaimedError):
            await loser.claim(info)

        assert [("session-1", True)] == winner_metrics.of("claim_attempt")
        assert [("session-1", True)] == winner_metrics.of("lock_acquisition")
        assert ["session-1"] == [n for n, _ in winner_metrics.of("processing_start")]
        assert [("session-1", False)] == loser_metrics.of("claim_attempt")
        assert [("session-1", False)] == loser_metrics.of("lock_acquisition")
        assert [] == loser_metrics.of("processing_start")


async def test_heartbeat_records_lock_extensions(
    client: RedisStreamClient,
    redis_client: redis.asyncio.Redis,
    service_name: str,
    metrics: RecordingMetrics,
) -> None:
    """While a stream is held, the heartbeat records successful extensions."""
    notifications = await client.init()
    await add_stream(redis_client, service_name, "session-1")
    await next_notification(notifications, timeout=10.0)

    def extended() -> bool:
        return ("session-1", True) in metrics.of("lock_extension")

    await wait_for(extended, timeout=10.0)

    assert {("session-1", True)} == set(metrics.of("lock_extension"))


async def test_expiry_of_another_consumers_lock_records_a_ksp_notification(
    client: RedisStreamClient,
    redis_client: redis.asyncio.Redis,
    service_name: str,
    metrics: RecordingMetrics,
) -> None:
    """Hearing that another holder's lock expired is recorded, by stream."""
    await client.init()
    name = f"{service_name}-data"
    await redis_client.set(f"{name}{MUTEX_KEY_SEP}1-0", GHOST, px=100)

    def heard() -> bool:
        return (name,) in metrics.of("ksp_notification")

    await wait_for(heard, timeout=10.0)

    assert [(name,)] == metrics.of("ksp_notification")
    assert [] == metrics.of("ksp_notification_dropped")
