"""Options of the client, checked once at construction."""

from __future__ import annotations

import os
import random
import socket
from dataclasses import dataclass

from ._errors import InvalidOptionError

MIN_HB_INTERVAL = 0.2
"""Shortest lock TTL, in seconds, that expiry lag and scheduling can honour."""


@dataclass(frozen=True)
class RetryConfig:
    """How a task of the client backs off when Redis fails.

    Args:
        max_retries: retries before giving up; -1 retries forever, 0 never.
        initial_delay: seconds before the first retry; > 0.
        max_delay: ceiling of the doubling delay, in seconds; >= initial_delay.

    .. note::
        The defaults give up after five retries, about three seconds of
        failures in a row: the LBS reader or the keyspace listener then ends
        the notifications with ``STREAM_TERMINATED``. A service that should
        ride out a Redis restart or failover passes ``max_retries=-1`` (the
        heartbeat always retries). The Redis client's own ``retry`` runs
        inside each of these tries, so the two multiply: give it
        ``Retry(NoBackoff(), 1)`` (one immediate reconnect) to leave outages
        to this policy.
    """

    max_retries: int = 5
    initial_delay: float = 0.1
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.max_retries < -1:
            raise InvalidOptionError(
                "max_retries", self.max_retries, "must be -1 (forever) or >= 0"
            )
        if not self.initial_delay > 0:
            raise InvalidOptionError("initial_delay", self.initial_delay, "must be > 0")
        if not self.max_delay >= self.initial_delay:
            raise InvalidOptionError(
                "max_delay",
                self.max_delay,
                f"must be >= initial_delay ({self.initial_delay!r})",
            )

    def gives_up_after(self, failures: int) -> bool:
        """Whether *failures* consecutive failures exhaust the retries."""
        return self.max_retries != -1 and failures > self.max_retries

    def delay(self, failures: int) -> float:
        """Seconds to wait after the *failures*-th consecutive failure.

        The delay doubles from ``initial_delay`` up to ``max_delay``, with up to
        a quarter taken off at random so that consumers do not retry in step.
        """
        exponent = min(failures - 1, 64)
        delay = min(self.initial_delay * 2.0**exponent, self.max_delay)
        return delay * (1.0 - random.random() / 4)


def at_least(option: str, value: float, minimum: float, *, whole: bool = False) -> None:
    """Raise :class:`InvalidOptionError` unless *value* is a number >= *minimum*.

    With *whole*, the number must be an ``int``.
    """
    kinds = int if whole else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        kind = "an int" if whole else "a number"
        raise InvalidOptionError(option, value, f"must be {kind} >= {minimum!r}")
    if not value >= minimum:
        raise InvalidOptionError(option, value, f"must be >= {minimum!r}")


def consumer_name(consumer_id: str | None) -> str:
    """The name of this consumer: given, else POD_NAME, else POD_IP, else host."""
    name = (
        consumer_id
        or os.environ.get("POD_NAME")
        or os.environ.get("POD_IP")
        or socket.gethostname()
    )
    return f"redis-consumer-{name}"
