"""An aiohttp service that works on the data streams its consumer holds.

Run it with ``python examples/aiohttp_app.py`` after ``pip install
'rsc-async[examples]'``. It uses the Redis at ``REDIS_URL``, or starts a
throwaway ``redis-server`` of its own, and serves on http://127.0.0.1:8080:

    rsc-async add -u "$REDIS_URL" aiohttp-example session-1
    curl http://127.0.0.1:8080/streams
    curl -X POST http://127.0.0.1:8080/streams/session-1/done

A ``cleanup_ctx`` starts the client and a background task that reads its
notifications and claims the streams of consumers that died; at shutdown it
hands the streams back, so the other consumers take them over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable

import redis.asyncio as redis
from aiohttp import web

from rsc_async import (
    AlreadyClaimedError,
    DataStreamNotFoundError,
    LockLostError,
    Notifications,
    NotificationType,
    RedisStreamClient,
)
from rsc_async.testing import redis_url

SERVICE = "aiohttp-example"
CLIENT = web.AppKey("client", RedisStreamClient)
log = logging.getLogger("aiohttp_app")


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


def stream_client(
    url: str, service: str, consumer_id: str | None
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry that runs a client while the application runs."""

    async def run(app: web.Application) -> AsyncIterator[None]:
        connection = redis.Redis.from_url(url)
        client = RedisStreamClient(connection, service, consumer_id=consumer_id)
        notifications = await client.init()
        following = asyncio.create_task(follow(client, notifications))
        app[CLIENT] = client
        try:
            yield
        finally:
            await client.done(release=True)
            await following  # the notifications end once the client is done
            await connection.aclose()

    return run


async def held_streams(request: web.Request) -> web.Response:
    """The data streams this consumer holds."""
    client = request.app[CLIENT]
    return web.json_response([info.model_dump() for info in client.held_streams])


async def finish_stream(request: web.Request) -> web.Response:
    """Finish a held data stream: release its lock and remove its entry."""
    name = request.match_info["name"]
    try:
        await request.app[CLIENT].done_stream(name)
    except DataStreamNotFoundError as exc:
        raise web.HTTPNotFound(text=str(exc)) from exc
    except LockLostError as exc:
        raise web.HTTPConflict(text=str(exc)) from exc
    return web.json_response({"finished": name})


def create_app(
    url: str | None = None, service: str = SERVICE, consumer_id: str | None = None
) -> web.Application:
    """The application of one consumer of *service* on the Redis at *url*.

    Args:
        url: the Redis; default ``REDIS_URL``, else the local default port.
        service: the service whose data streams this consumer takes.
        consumer_id: this consumer's name; default ``POD_NAME`` and so on.
    """
    url = url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    app = web.Application()
    app.cleanup_ctx.append(stream_client(url, service, consumer_id))
    app.router.add_get("/streams", held_streams)
    app.router.add_post("/streams/{name}/done", finish_stream)
    return app


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    with redis_url() as url:
        print(f"Redis at {url}; service {SERVICE!r}")
        web.run_app(create_app(url), host="127.0.0.1", port=8080)
