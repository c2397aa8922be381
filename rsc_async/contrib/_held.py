"""The count of held streams, from the client itself or from start/end events."""

from __future__ import annotations

import contextlib

from .._client import RedisStreamClient


class HeldStreams:
    """How many data streams the recorded consumers hold.

    Counts processing starts minus ends until :meth:`track` binds it to
    clients; from then on it is the number of streams those clients hold.
    """

    def __init__(self) -> None:
        self._counted = 0
        self._last = 0
        self._clients: list[RedisStreamClient] = []

    def started(self) -> None:
        """A stream was handed to a consumer."""
        self._counted += 1

    def ended(self) -> None:
        """A stream was finished."""
        self._counted -= 1

    def track(self, client: RedisStreamClient) -> None:
        """Count the streams *client* holds, along with those tracked before."""
        if client not in self._clients:
            self._clients.append(client)

    def value(self) -> int:
        """The number of held streams now.

        Exporters call this from their own thread; should a client's streams
        change under it, the previous count is returned rather than an error.
        """
        if not self._clients:
            return self._counted
        with contextlib.suppress(RuntimeError):
            self._last = sum(len(client.held_streams) for client in self._clients)
        return self._last
