"""Recoverable ownership of Redis streams for asyncio services.

A load balancer stream hands whole data streams to consumers; each consumer
holds a lock per stream and keeps it alive with one heartbeat; when a holder
dies its lock expires, the other consumers hear of it and one claims the
stream. See :class:`RedisStreamClient`.
"""

from ._client import RedisStreamClient
from ._config import RetryConfig
from ._errors import (
    AlreadyClaimedError,
    DataStreamNotFoundError,
    ExistingKeyspaceConfigError,
    InvalidLBSMessageError,
    InvalidOptionError,
    KeyspaceConfigError,
    LockLostError,
    PoisonStreamError,
    RedisCommandError,
    RSCError,
)
from ._metrics import MetricsRecorder
from ._models import (
    MUTEX_KEY_SEP,
    LBSInfo,
    LBSMessage,
    Notification,
    NotificationType,
    StreamAdded,
    StreamDisowned,
    StreamExpired,
    StreamTerminated,
)
from ._outbox import Notifications
from ._producer import add_stream

__all__ = (
    "MUTEX_KEY_SEP",
    "AlreadyClaimedError",
    "DataStreamNotFoundError",
    "ExistingKeyspaceConfigError",
    "InvalidLBSMessageError",
    "InvalidOptionError",
    "KeyspaceConfigError",
    "LBSInfo",
    "LBSMessage",
    "LockLostError",
    "MetricsRecorder",
    "Notification",
    "NotificationType",
    "Notifications",
    "PoisonStreamError",
    "RSCError",
    "RedisCommandError",
    "RedisStreamClient",
    "RetryConfig",
    "StreamAdded",
    "StreamDisowned",
    "StreamExpired",
    "StreamTerminated",
    "add_stream",
)
