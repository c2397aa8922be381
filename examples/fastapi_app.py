"""A FastAPI service that works on the data streams its consumer holds.

Run it with ``python examples/fastapi_app.py`` after ``pip install
'rsc-async[examples]'``. It uses the Redis at ``REDIS_URL``, or starts a
throwaway ``redis-server`` of its own, and serves on http://127.0.0.1:8000:

    rsc-async add -u "$REDIS_URL" fastapi-example session-1
    curl http://127.0.0.1:8000/streams
    curl -X POST http://127.0.0.1:8000/streams/session-1/done

The lifespan starts the client and a background task that reads its
notifications and claims the streams of consumers that died; request handlers
use ``client.held_streams`` and ``client.done_stream()``. At shutdown the
client hands its streams back, so the other consumers take them over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Annotated

import redis.asyncio as redis
from fastapi import Depends, FastAPI, HTTPException, Request

from rsc_async import (
    AlreadyClaimedError,
    DataStreamNotFoundError,
    LBSInfo,
    LockLostError,
    Notifications,
    NotificationType,
    RedisStreamClient,
)
from rsc_async.testing import redis_url

SERVICE = "fastapi-example"
log = logging.getLogger("fastapi_app")


async def follow(client: RedisStreamClient, notifications: Notifications) -> None:
    """Read the notifications until the client stops; claim orphaned streams."""
    async for notification in notifications:
        info = notification.payload
        if notification.type is NotificationType.STREAM_TERMINATED:
            log.error("the client stopped: %s", notification.additional_info)
        elif info is None:
            continue
        elif notification.type is NotificationType.STREAM_ADDED:
            log.info("now holding %s", info.data_stream_name)
        elif notification.type is NotificationType.STREAM_EXPIRED:
            with contextlib.suppress(AlreadyClaimedError):
                await client.claim(info)
                log.info("took over %s", info.data_stream_name)
        elif notification.type is NotificationType.STREAM_DISOWNED:
            log.warning("lost %s to another consumer", info.data_stream_name)


def stream_client(request: Request) -> RedisStreamClient:
    """The client the lifespan started, for request handlers."""
    client: RedisStreamClient = request.app.state.client
    return client


Client = Annotated[RedisStreamClient, Depends(stream_client)]


def create_app(
    url: str | None = None, service: str = SERVICE, consumer_id: str | None = None
) -> FastAPI:
    """The application of one consumer of *service* on the Redis at *url*.

    Args:
        url: the Redis; default ``REDIS_URL``, else the local default port.
        service: the service whose data streams this consumer takes.
        consumer_id: this consumer's name; default ``POD_NAME`` and so on.
    """
    url = url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        connection = redis.Redis.from_url(url)
        client = RedisStreamClient(connection, service, consumer_id=consumer_id)
        notifications = await client.init()
        following = asyncio.create_task(follow(client, notifications))
        app.state.client = client
        try:
            yield
        finally:
            await client.done(release=True)
            await following  # the notifications end once the client is done
            await connection.aclose()

    app = FastAPI(title=f"{service} consumer", lifespan=lifespan)

    @app.get("/streams")
    async def held_streams(client: Client) -> list[LBSInfo]:
        """The data streams this consumer holds."""
        return list(client.held_streams)

    @app.post("/streams/{name}/done")
    async def finish_stream(name: str, client: Client) -> dict[str, str]:
        """Finish a held data stream: release its lock and remove its entry."""
        try:
            await client.done_stream(name)
        except DataStreamNotFoundError as exc:
            raise HTTPException(404, str(exc)) from exc
        except LockLostError as exc:
            raise HTTPException(409, str(exc)) from exc
        return {"finished": name}

    return app


if __name__ == "__main__":
    import uvicorn

    logging.basicConfig(level=logging.INFO)
    with redis_url() as url:
        print(f"Redis at {url}; service {SERVICE!r}")
        uvicorn.run(create_app(url), host="127.0.0.1", port=8000)
