"""Log records that name the consumer, and the stream and entry where known."""

from __future__ import annotations

import logging


class EventLog:
    """Writes to a logger, prefixing the consumer and setting ``extra`` fields.

    Each record carries ``consumer``, ``stream`` and ``entry_id`` attributes
    (the last two None when the record is about no one stream), so structured
    handlers can use them; the text names them too.
    """

    def __init__(self, logger: logging.Logger, consumer: str) -> None:
        self.logger = logger
        self.consumer = consumer

    def log(
        self,
        level: int,
        msg: str,
        *args: object,
        stream: str | None = None,
        entry_id: str | None = None,
    ) -> None:
        """Log *msg* % *args* at *level*, about *stream* and *entry_id*."""
        if not self.logger.isEnabledFor(level):
            return
        if stream is not None or entry_id is not None:
            msg = f"{msg} [stream=%r entry=%s]"
            args = (*args, stream, entry_id)
        self.logger.log(
            level,
            f"%s: {msg}",
            self.consumer,
            *args,
            extra={"consumer": self.consumer, "stream": stream, "entry_id": entry_id},
        )

    def debug(self, msg: str, *args: object, **where: str | None) -> None:
        """Log at DEBUG."""
        self.log(logging.DEBUG, msg, *args, **where)

    def info(self, msg: str, *args: object, **where: str | None) -> None:
        """Log at INFO."""
        self.log(logging.INFO, msg, *args, **where)

    def warning(self, msg: str, *args: object, **where: str | None) -> None:
        """Log at WARNING."""
        self.log(logging.WARNING, msg, *args, **where)

    def error(self, msg: str, *args: object, **where: str | None) -> None:
        """Log at ERROR."""
        self.log(logging.ERROR, msg, *args, **where)
