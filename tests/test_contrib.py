"""The Prometheus and OpenTelemetry recorders, read back after a real client ran."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
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
from rsc_async.testing import RedisServer

Counts = Callable[[], dict[tuple[str, str], float]]
"""Reads the recorder back: (metric, outcome) -> value; histograms as counts."""

HELD = ("held", "")
EXTENSIONS = ("lock_extensions", "true")
KSP = ("ksp_notifications", "")

EXPECTED = {
    ("startup_recoveries", "true"): 1.0,
    ("startup_recoveries", "false"): 0.0,
    ("startup_recovered_entries", ""): 0.0,
    ("startup_recovery_duration", ""): 1.0,
    ("claims", "true"): 0.0,
    ("claims", "false"): 1.0,
    ("claim_duration", ""): 1.0,
    ("lock_acquisitions", "true"): 1.0,
    ("lock_acquisitions", "false"): 1.0,
    ("lock_acquisition_duration", ""): 2.0,
    ("lock_releases", "true"): 1.0,
    ("lock_releases", "false"): 0.0,
    ("stream_processing_duration", ""): 1.0,
    ("ksp_notifications_dropped", ""): 0.0,
    HELD: 0.0,
}
"""What the recorder holds after assigning, failing a claim and finishing."""


async def _assign_fail_claim_and_finish(
    server: RedisServer,
    service: str,
    recorder: MetricsRecorder,
    counts: Counts,
    track: Callable[[RedisStreamClient], None] | None = None,
) -> tuple[float, dict[tuple[str, str], float]]:
    """Drive a client through the events; return the held count while it held
    a stream, and every count at the end."""
    connection = redis.asyncio.Redis.from_url(server.url)
    client = RedisStreamClient(
        connection,
        service,
        consumer_id="alice",
        hb_interval=0.2,
        reconcile_interval=0,
        metrics=recorder,
    )
    if track is not None:
        track(client)
    try:
        notifications = await client.init()
        await add_stream(connection, service, "session-1")
        assert isinstance(await next_notification(notifications), StreamAdded)
        held_while_holding = counts()[HELD]
        await wait_for(lambda: counts().get(EXTENSIONS, 0.0) >= 1)

        # Another consumer holds session-2, so claiming it fails.
        await connection.set(
            f"session-2{MUTEX_KEY_SEP}1-0", "redis-consumer-bob", px=60_000
        )
        with pytest.raises(AlreadyClaimedError):
            await client.claim(LBSInfo(data_stream_name="session-2", id_in_lbs="1-0"))

        # A lock of a consumer that died expires.
        await connection.set(f"session-3{MUTEX_KEY_SEP}2-0", "redis-consumer-bob", px=1)
        await wait_for(lambda: counts().get(KSP, 0.0) >= 1)

        await client.done_stream("session-1")
        return held_while_holding, counts()
    finally:
        await client.done()
        await connection.aclose()


def _checked(actual: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: actual.get(key, -1.0) for key in EXPECTED}


async def test_prometheus_metrics_count_assignment_failed_claim_and_finish(
    dedicated_redis: RedisServer, service_name: str
) -> None:
    """Counters, histograms and the tracked gauge read back as the client acted."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from rsc_async.contrib.prometheus import PrometheusMetrics

    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry, namespace="rsc")

    def counts() -> dict[tuple[str, str], float]:
        values: dict[tuple[str, str], float] = {}
        for family in registry.collect():
            name = family.name.removeprefix("rsc_")
            for sample in family.samples:
                outcome = sample.labels.get("success", "")
                if sample.name.endswith("_seconds_count"):
                    values[name.removesuffix("_seconds"), outcome] = sample.value
                elif sample.name.endswith("_total") or family.type == "gauge":
                    values[name.replace("held_streams", "held"), outcome] = sample.value
        return values

    held, actual = await _assign_fail_claim_and_finish(
        dedicated_redis, service_name, metrics, counts, track=metrics.track
    )

    assert 1.0 == held
    assert EXPECTED == _checked(actual)


async def test_prometheus_held_streams_counts_starts_and_ends_untracked(
    dedicated_redis: RedisServer, service_name: str
) -> None:
    """Without track(), the held gauge follows processing starts and ends."""
    prometheus_client = pytest.importorskip("prometheus_client")
    from rsc_async.contrib.prometheus import PrometheusMetrics

    registry = prometheus_client.CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry, namespace="svc")

    def counts() -> dict[tuple[str, str], float]:
        held = registry.get_sample_value("svc_held_streams") or 0.0
        extended = registry.get_sample_value(
            "svc_lock_extensions_total", {"success": "true"}
        )
        ksp = registry.get_sample_value("svc_ksp_notifications_total")
        return {HELD: held, EXTENSIONS: extended or 0.0, KSP: ksp or 0.0}

    held, actual = await _assign_fail_claim_and_finish(
        dedicated_redis, service_name, metrics, counts
    )

    assert (1.0, 0.0) == (held, actual[HELD])


def _otel_counts(reader: Any) -> dict[tuple[str, str], float]:
    values: dict[tuple[str, str], float] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data is not None else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                name = metric.name.removeprefix("rsc.").replace(".", "_")
                name = name.replace("streams_held", "held")
                for point in metric.data.data_points:
                    success = point.attributes.get("success")
                    outcome = "" if success is None else str(success).lower()
                    value = getattr(point, "count", None)
                    values[name, outcome] = float(
                        point.value if value is None else value
                    )
    return values


async def test_opentelemetry_metrics_count_assignment_failed_claim_and_finish(
    dedicated_redis: RedisServer, service_name: str
) -> None:
    """Instruments read back through an in-memory reader as the client acted."""
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from rsc_async.contrib.otel import OpenTelemetryMetrics

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    metrics = OpenTelemetryMetrics(provider)
    try:
        held, actual = await _assign_fail_claim_and_finish(
            dedicated_redis, service_name, metrics, lambda: _otel_counts(reader)
        )
    finally:
        provider.shutdown()

    # Counters never added to have no data points yet.
    expected = {key: value for key, value in EXPECTED.items() if value}
    assert 1.0 == held
    assert expected == {key: actual.get(key, -1.0) for key in expected}


def test_recorders_implement_the_metrics_recorder_protocol() -> None:
    """Both recorders are MetricsRecorder instances."""
    prometheus_client = pytest.importorskip("prometheus_client")
    pytest.importorskip("opentelemetry.sdk.metrics")
    from opentelemetry.sdk.metrics import MeterProvider

    from rsc_async.contrib.otel import OpenTelemetryMetrics
    from rsc_async.contrib.prometheus import PrometheusMetrics

    provider = MeterProvider()
    recorders = [
        PrometheusMetrics(registry=prometheus_client.CollectorRegistry()),
        OpenTelemetryMetrics(provider),
    ]
    provider.shutdown()

    assert [True, True] == [isinstance(r, MetricsRecorder) for r in recorders]
