"""The producer's side: adding data streams to a service."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from ._errors import InvalidOptionError, RedisCommandError
from ._models import LBS_FIELD, MUTEX_KEY_SEP, LBSMessage, decode


async def add_stream(
    redis: aioredis.Redis | RedisCluster,
    service: str,
    data_stream_name: str,
    info: Mapping[str, Any] | None = None,
) -> str:
    """Hand a data stream to the consumers of *service*.

    Args:
        redis: the client of the service's Redis.
        service: the service name; the entry goes to ``<service>-input``.
        data_stream_name: the stream to hand out; non-empty, without
            ``<MUTEX_KEY_SEP>``.
        info: any JSON-serialisable mapping, echoed in the notifications.

    Returns:
        The id of the new LBS entry.

    Raises:
        InvalidOptionError: the name is empty or contains the separator.
        RedisCommandError: Redis failed.
    """
    if not data_stream_name or MUTEX_KEY_SEP in data_stream_name:
        raise InvalidOptionError(
            "data_stream_name",
            data_stream_name,
            f"must be non-empty and must not contain {MUTEX_KEY_SEP}",
        )
    message = LBSMessage(data_stream_name=data_stream_name, info=dict(info or {}))
    try:
        entry_id = await redis.xadd(f"{service}-input", {LBS_FIELD: message.to_json()})
    except redis_errors.RedisError as exc:
        msg = f"adding data stream {data_stream_name!r} to {service!r} failed: {exc}"
        raise RedisCommandError(msg) from exc
    return decode(entry_id)
