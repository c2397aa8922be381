"""The hook through which the client reports what it does."""

from __future__ import annotations

from typing import Protocol, runtime_checkable


@runtime_checkable
class MetricsRecorder(Protocol):
    """Receives one call per event of the client; durations are in seconds.

    Implementations must return quickly and never raise: they run inside the
    client's tasks.
    """

    def record_startup_recovery(
        self, success: bool, unacked_count: int, duration: float
    ) -> None:
        """Startup recovery ran once, taking over *unacked_count* entries."""

    def record_claim_attempt(self, stream: str, success: bool, duration: float) -> None:
        """A ``claim()`` call ended."""

    def record_lock_acquisition_attempt(
        self, stream: str, success: bool, duration: float
    ) -> None:
        """A lock was taken, or could not be, for an assigned or claimed stream."""

    def record_lock_extension_attempt(self, stream: str, success: bool) -> None:
        """The heartbeat extended a lock, or found it lost."""

    def record_lock_release_attempt(self, stream: str, success: bool) -> None:
        """``done_stream`` released a lock, or found it held by another."""

    def record_stream_processing_start(self, stream: str, start_time: float) -> None:
        """A stream was handed to this consumer at *start_time* (``time.time()``)."""

    def record_stream_processing_end(self, stream: str, start_time: float) -> None:
        """A stream handed over at *start_time* was finished."""

    def record_ksp_notification(self, stream: str) -> None:
        """A keyspace notification about *stream*'s lock arrived."""

    def record_ksp_notification_dropped(self) -> None:
        """A keyspace notification was dropped because its buffer was full."""


class NoMetrics:
    """A :class:`MetricsRecorder` that records nothing."""

    def record_startup_recovery(
        self, success: bool, unacked_count: int, duration: float
    ) -> None:
        pass

    def record_claim_attempt(self, stream: str, success: bool, duration: float) -> None:
        pass

    def record_lock_acquisition_attempt(
        self, stream: str, success: bool, duration: float
    ) -> None:
        pass

    def record_lock_extension_attempt(self, stream: str, success: bool) -> None:
        pass

    def record_lock_release_attempt(self, stream: str, success: bool) -> None:
        pass

    def record_stream_processing_start(self, stream: str, start_time: float) -> None:
        pass

    def record_stream_processing_end(self, stream: str, start_time: float) -> None:
        pass

    def record_ksp_notification(self, stream: str) -> None:
        pass

    def record_ksp_notification_dropped(self) -> None:
        pass
