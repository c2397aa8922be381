"""The errors rsc_async raises; every one is an :class:`RSCError`."""

from __future__ import annotations


class RSCError(Exception):
    """Root of every error this library raises."""


class RedisCommandError(RSCError):
    """A Redis command failed, or Redis could not be reached."""


class InvalidOptionError(RSCError, ValueError):
    """An option given to the client is outside its allowed range."""

    def __init__(self, option: str, value: object, allowed: str) -> None:
        self.option = option
        self.value = value
        super().__init__(f"{option}={value!r} is invalid: {allowed}")


class KeyspaceConfigError(RSCError):
    """The server cannot be made to publish the keyspace events the client needs."""


class ExistingKeyspaceConfigError(KeyspaceConfigError):
    """``notify-keyspace-events`` holds other flags and overriding was not allowed."""

    def __init__(self, current: str) -> None:
        self.current = current
        super().__init__(
            f"notify-keyspace-events is {current!r}, which lacks the flags K and x "
            "needed for lock expiry events; add them to the server's configuration "
            "or pass force_config_override=True to add them while keeping the rest"
        )


class InvalidLBSMessageError(RSCError, ValueError):
    """An LBS entry does not follow the protocol."""

    def __init__(self, entry_id: str, reason: str) -> None:
        self.entry_id = entry_id
        self.reason = reason
        super().__init__(f"LBS entry {entry_id!r} is invalid: {reason}")


class AlreadyClaimedError(RSCError):
    """Another consumer took the stream first."""

    def __init__(self, data_stream: str, entry_id: str) -> None:
        self.data_stream = data_stream
        self.entry_id = entry_id
        super().__init__(
            f"data stream {data_stream!r} (LBS entry {entry_id!r}) "
            "is already claimed by another consumer"
        )


class DataStreamNotFoundError(RSCError, KeyError):
    """This consumer does not hold the named data stream."""

    def __init__(self, data_stream: str) -> None:
        self.data_stream = data_stream
        super().__init__(f"data stream {data_stream!r} is not held by this consumer")

    def __str__(self) -> str:
        # KeyError would quote the whole message again.
        return str(self.args[0])


class PoisonStreamError(RSCError):
    """An LBS entry was delivered too often; it was moved to the dead letters."""

    def __init__(self, data_stream: str, entry_id: str, reason: str) -> None:
        self.data_stream = data_stream
        self.entry_id = entry_id
        self.reason = reason
        super().__init__(
            f"data stream {data_stream!r} (LBS entry {entry_id!r}) was {reason}; "
            "it was moved to the dead-letter stream"
        )


class LockLostError(RSCError):
    """The lock of a data stream is now held by another consumer."""

    def __init__(self, data_stream: str, entry_id: str, holder: str | None) -> None:
        self.data_stream = data_stream
        self.entry_id = entry_id
        self.holder = holder
        super().__init__(
            f"lock of data stream {data_stream!r} (LBS entry {entry_id!r}) "
            f"is held by {holder!r}, not by this consumer"
        )
