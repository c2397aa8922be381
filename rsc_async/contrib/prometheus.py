"""Prometheus metrics for the client: ``pip install rsc-async[prometheus]``.

Example::

    from prometheus_client import start_http_server
    from rsc_async.contrib.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics()
    client = RedisStreamClient(redis, "sessions", metrics=metrics)
    metrics.track(client)
    start_http_server(9100)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TypedDict

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from .._client import RedisStreamClient
from ._held import HeldStreams

LATENCY_BUCKETS = (
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
"""Buckets of Redis round trips, in seconds."""

PROCESSING_BUCKETS = (
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
"""Buckets of how long a consumer holds a stream, in seconds."""

_OUTCOMES = ("true", "false")


class _Common(TypedDict):
    namespace: str
    registry: CollectorRegistry | None


def _outcome(success: bool) -> str:
    return "true" if success else "false"


class PrometheusMetrics:
    """A :class:`~rsc_async.MetricsRecorder` that updates Prometheus metrics.

    The names below are for ``namespace="rsc"``; counters labelled ``success``
    start with both label values at zero, so a rate of failures is 0, not
    absent:

    - ``rsc_claims_total{success}``, ``rsc_claim_duration_seconds``
    - ``rsc_lock_acquisitions_total{success}``,
      ``rsc_lock_acquisition_duration_seconds``
    - ``rsc_lock_extensions_total{success}``
    - ``rsc_lock_releases_total{success}``
    - ``rsc_stream_processing_duration_seconds``: from a stream's handover to
      its finish
    - ``rsc_held_streams``: streams held now
    - ``rsc_ksp_notifications_total``, ``rsc_ksp_notifications_dropped_total``
    - ``rsc_startup_recoveries_total{success}``,
      ``rsc_startup_recovered_entries_total``,
      ``rsc_startup_recovery_duration_seconds``

    Args:
        registry: where the metrics are registered; default the global
            ``prometheus_client.REGISTRY``. Two instances cannot share a
            registry and a namespace.
        namespace: the prefix of every metric name.
        processing_buckets: histogram buckets of the processing duration.

    .. note:: Without :meth:`track`, ``rsc_held_streams`` counts processing
       starts minus ends. A stream whose lock was lost (``StreamDisowned``)
       has not ended, so the gauge stays high until the consumer stops. Call
       :meth:`track` to read the count from the client instead.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        namespace: str = "rsc",
        *,
        processing_buckets: Sequence[float] = PROCESSING_BUCKETS,
    ) -> None:
        common: _Common = {"namespace": namespace, "registry": registry}
        self.claims = Counter(
            "claims", "claim() calls, by outcome", ["success"], **common
        )
        self.claim_duration = Histogram(
            "claim_duration_seconds",
            "Duration of claim() calls",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.lock_acquisitions = Counter(
            "lock_acquisitions",
            "Locks taken for assigned or claimed streams, by outcome",
            ["success"],
            **common,
        )
        self.lock_acquisition_duration = Histogram(
            "lock_acquisition_duration_seconds",
            "Duration of the round trip that took a lock",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        self.lock_extensions = Counter(
            "lock_extensions",
            "Lock extensions by the heartbeat, by outcome",
            ["success"],
            **common,
        )
        self.lock_releases = Counter(
            "lock_releases",
            "Locks released by done_stream, by outcome",
            ["success"],
            **common,
        )
        self.processing_duration = Histogram(
            "stream_processing_duration_seconds",
            "Time from a stream's handover to its finish",
            buckets=tuple(processing_buckets),
            **common,
        )
        self.held_streams = Gauge("held_streams", "Data streams held now", **common)
        self.ksp_notifications = Counter(
            "ksp_notifications", "Lock expiry events received", **common
        )
        self.ksp_notifications_dropped = Counter(
            "ksp_notifications_dropped",
            "Lock expiry events dropped because their buffer was full",
            **common,
        )
        self.startup_recoveries = Counter(
            "startup_recoveries",
            "Startup recoveries, by outcome",
            ["success"],
            **common,
        )
        self.startup_recovered_entries = Counter(
            "startup_recovered_entries",
            "LBS entries taken over by startup recovery",
            **common,
        )
        self.startup_recovery_duration = Histogram(
            "startup_recovery_duration_seconds",
            "Duration of startup recovery",
            buckets=LATENCY_BUCKETS,
            **common,
        )
        for counter in (
            self.claims,
            self.lock_acquisitions,
            self.lock_extensions,
            self.lock_releases,
            self.startup_recoveries,
        ):
            for outcome in _OUTCOMES:
                counter.labels(success=outcome)
        self._held = HeldStreams()
        self.held_streams.set_function(self._held.value)

    def track(self, client: RedisStreamClient) -> None:
        """Read ``rsc_held_streams`` from ``client.held_streams`` from now on.

        Several clients may be tracked; the gauge is their sum.
        """
        self._held.track(client)

    def record_startup_recovery(
        self, success: bool, unacked_count: int, duration: float
    ) -> None:
        """Count a startup recovery and the entries it took over."""
        self.startup_recoveries.labels(success=_outcome(success)).inc()
        self.startup_recovered_entries.inc(unacked_count)
        self.startup_recovery_duration.observe(duration)

    def record_claim_attempt(self, stream: str, success: bool, duration: float) -> None:
        """Count a ``claim()`` call and observe its duration."""
        self.claims.labels(success=_outcome(success)).inc()
        self.claim_duration.observe(duration)

    def record_lock_acquisition_attempt(
        self, stream: str, success: bool, duration: float
    ) -> None:
        """Count a lock taken, or found held, and observe the round trip."""
        self.lock_acquisitions.labels(success=_outcome(success)).inc()
        self.lock_acquisition_duration.observe(duration)

    def record_lock_extension_attempt(self, stream: str, success: bool) -> None:
        """Count a lock extended by the heartbeat, or found lost."""
        self.lock_extensions.labels(success=_outcome(success)).inc()

    def record_lock_release_attempt(self, stream: str, success: bool) -> None:
        """Count a lock released by ``done_stream``, or found held by another."""
        self.lock_releases.labels(success=_outcome(success)).inc()

    def record_stream_processing_start(self, stream: str, start_time: float) -> None:
        """Count one more held stream."""
        self._held.started()

    def record_stream_processing_end(self, stream: str, start_time: float) -> None:
        """Count one fewer held stream and observe how long it was held."""
        self._held.ended()
        self.processing_duration.observe(max(0.0, time.time() - start_time))

    def record_ksp_notification(self, stream: str) -> None:
        """Count a lock expiry event."""
        self.ksp_notifications.inc()

    def record_ksp_notification_dropped(self) -> None:
        """Count a lock expiry event dropped for want of buffer room."""
        self.ksp_notifications_dropped.inc()
