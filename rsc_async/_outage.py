"""One task's run of failed Redis calls: back-off, giving up, one log line."""

from __future__ import annotations

import time

from ._config import RetryConfig
from ._log import EventLog


class Outage:
    """Counts consecutive failures of one task and says how long to back off.

    An outage is logged once at WARNING, when it ends, with its duration; the
    retries in between go to DEBUG so a long outage does not flood the log.
    """

    def __init__(self, what: str, retry: RetryConfig, log: EventLog) -> None:
        self._what = what
        self._retry = retry
        self._log = log
        self.failures = 0
        self._since: float | None = None

    def failed(self, exc: Exception) -> float | None:
        """Record a failure; the seconds to wait, or None when retries ran out."""
        self.failures += 1
        if self._since is None:
            self._since = time.monotonic()
            self._log.info("%s failed (%s); retrying", self._what, exc)
        else:
            self._log.debug("%s failed again (%s)", self._what, exc)
        if self._retry.gives_up_after(self.failures):
            return None
        return self._retry.delay(self.failures)

    def recovered(self, sent: float | None = None) -> bool:
        """Record a success; True when it ended an outage.

        Args:
            sent: the ``time.monotonic()`` at which the command that succeeded
                was sent, default now; a blocking command succeeds long after
                the outage ended.
        """
        if self._since is None:
            return False
        ended = time.monotonic() if sent is None else max(sent, self._since)
        self._log.warning(
            "%s was failing for %.2f s (%d failures); working again",
            self._what,
            ended - self._since,
            self.failures,
        )
        self._since = None
        self.failures = 0
        return True
