"""OpenTelemetry metrics for the client: ``pip install rsc-async[otel]``.

Only the OpenTelemetry API is needed here; the application configures the SDK
and its exporters. Example::

    from rsc_async.contrib.otel import OpenTelemetryMetrics

    metrics = OpenTelemetryMetrics()
    client = RedisStreamClient(redis, "sessions", metrics=metrics)
    metrics.track(client)
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from importlib import metadata

from opentelemetry.metrics import (
    CallbackOptions,
    MeterProvider,
    Observation,
    get_meter,
)

from .._client import RedisStreamClient
from ._held import HeldStreams

LATENCY_BOUNDARIES = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)
"""Bucket boundaries of Redis round trips, in seconds."""

PROCESSING_BOUNDARIES = (
    1.0,
    5.0,
    15.0,
    60.0,
    300.0,
    900.0,
    1800.0,
    3600.0,
    4 * 3600.0,
    12 * 3600.0,
    24 * 3600.0,
)
"""Bucket boundaries of how long a consumer holds a stream, in seconds."""


def _version() -> str:
    try:
        return metadata.version("rsc-async")
    except metadata.PackageNotFoundError:
        return "unknown"


class OpenTelemetryMetrics:
    """A :class:`~rsc_async.MetricsRecorder` that records OpenTelemetry metrics.

    The instruments, for ``prefix="rsc"``; those counted by outcome carry the
    attribute ``success`` (a bool):

    - counters ``rsc.claims``, ``rsc.lock.acquisitions``,
      ``rsc.lock.extensions``, ``rsc.lock.releases``,
      ``rsc.startup.recoveries`` (by outcome), ``rsc.startup.recovered_entries``,
      ``rsc.ksp.notifications``, ``rsc.ksp.notifications.dropped``;
    - histograms, in seconds: ``rsc.claim.duration``,
      ``rsc.lock.acquisition.duration``, ``rsc.stream.processing.duration``
      (from a stream's handover to its finish), ``rsc.startup.recovery.duration``;
    - an observable up-down counter ``rsc.streams.held``: streams held now.

    Args:
        meter_provider: where the meter comes from; default the global one.
        prefix: the start of every instrument name.

    .. note:: Without :meth:`track`, ``rsc.streams.held`` counts processing
       starts minus ends. A stream whose lock was lost (``StreamDisowned``)
       has not ended, so the count stays high until the consumer stops. Call
       :meth:`track` to read the count from the client instead.
    """

    def __init__(
        self, meter_provider: MeterProvider | None = None, *, prefix: str = "rsc"
    ) -> None:
        meter = get_meter("rsc_async", _version(), meter_provider=meter_provider)
        self.claims = meter.create_counter(
            f"{prefix}.claims", "{claim}", "claim() calls, by outcome"
        )
        self.claim_duration = meter.create_histogram(
            f"{prefix}.claim.duration",
            "s",
            "Duration of claim() calls",
            explicit_bucket_boundaries_advisory=LATENCY_BOUNDARIES,
        )
        self.lock_acquisitions = meter.create_counter(
            f"{prefix}.lock.acquisitions",
            "{lock}",
            "Locks taken for assigned or claimed streams, by outcome",
        )
        self.lock_acquisition_duration = meter.create_histogram(
            f"{prefix}.lock.acquisition.duration",
            "s",
            "Duration of the round trip that took a lock",
            explicit_bucket_boundaries_advisory=LATENCY_BOUNDARIES,
        )
        self.lock_extensions = meter.create_counter(
            f"{prefix}.lock.extensions",
            "{lock}",
            "Lock extensions by the heartbeat, by outcome",
        )
        self.lock_releases = meter.create_counter(
            f"{prefix}.lock.releases", "{lock}", "Locks released by done_stream"
        )
        self.processing_duration = meter.create_histogram(
            f"{prefix}.stream.processing.duration",
            "s",
            "Time from a stream's handover to its finish",
            explicit_bucket_boundaries_advisory=PROCESSING_BOUNDARIES,
        )
        self.ksp_notifications = meter.create_counter(
            f"{prefix}.ksp.notifications", "{event}", "Lock expiry events received"
        )
        self.ksp_notifications_dropped = meter.create_counter(
            f"{prefix}.ksp.notifications.dropped",
            "{event}",
            "Lock expiry events dropped because their buffer was full",
        )
        self.startup_recoveries = meter.create_counter(
            f"{prefix}.startup.recoveries", "{run}", "Startup recoveries, by outcome"
        )
        self.startup_recovered_entries = meter.create_counter(
            f"{prefix}.startup.recovered_entries",
            "{entry}",
            "LBS entries taken over by startup recovery",
        )
        self.startup_recovery_duration = meter.create_histogram(
            f"{prefix}.startup.recovery.duration",
            "s",
            "Duration of startup recovery",
            explicit_bucket_boundaries_advisory=LATENCY_BOUNDARIES,
        )
        self._held = HeldStreams()
        self.held_streams = meter.create_observable_up_down_counter(
            f"{prefix}.streams.held",
            [self._observe_held],
            "{stream}",
            "Data streams held now",
        )

    def _observe_held(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(self._held.value())]

    def track(self, client: RedisStreamClient) -> None:
        """Read ``rsc.streams.held`` from ``client.held_streams`` from now on.

        Several clients may be tracked; the count is their sum.
        """
        self._held.track(client)

    def record_startup_recovery(
        self, success: bool, unacked_count: int, duration: float
    ) -> None:
        """Count a startup recovery and the entries it took over."""
        self.startup_recoveries.add(1, {"success": success})
        self.startup_recovered_entries.add(unacked_count)
        self.startup_recovery_duration.record(duration)

    def record_claim_attempt(self, stream: str, success: bool, duration: float) -> None:
        """Count a ``claim()`` call and record its duration."""
        self.claims.add(1, {"success": success})
        self.claim_duration.record(duration)

    def record_lock_acquisition_attempt(
        self, stream: str, success: bool, duration: float
    ) -> None:
        """Count a lock taken, or found held, and record the round trip."""
        self.lock_acquisitions.add(1, {"success": success})
        self.lock_acquisition_duration.record(duration)

    def record_lock_extension_attempt(self, stream: str, success: bool) -> None:
        """Count a lock extended by the heartbeat, or found lost."""
        self.lock_extensions.add(1, {"success": success})

    def record_lock_release_attempt(self, stream: str, success: bool) -> None:
        """Count a lock released by ``done_stream``, or found held by another."""
        self.lock_releases.add(1, {"success": success})

    def record_stream_processing_start(self, stream: str, start_time: float) -> None:
        """Count one more held stream."""
        self._held.started()

    def record_stream_processing_end(self, stream: str, start_time: float) -> None:
        """Count one fewer held stream and record how long it was held."""
        self._held.ended()
        self.processing_duration.record(max(0.0, time.time() - start_time))

    def record_ksp_notification(self, stream: str) -> None:
        """Count a lock expiry event."""
        self.ksp_notifications.add(1)

    def record_ksp_notification_dropped(self) -> None:
        """Count a lock expiry event dropped for want of buffer room."""
        self.ksp_notifications_dropped.add(1)
