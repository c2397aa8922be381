"""Throwaway Redis servers and what their INFO says about a measured window."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from rsc_async import LBSMessage
from rsc_async.testing import RedisClusterServers, RedisServer

SHARED_PORT = 6379
"""Somebody else's Redis may listen here; a benchmark never uses it."""

XADD_BATCH = 1000
"""LBS entries added per round trip while filling the LBS."""

Client = aioredis.Redis | RedisCluster
"""A client of one server or of a cluster: the library takes either."""


@contextlib.contextmanager
def server(executable: str | None = None, *, hz: int | None = None) -> Iterator[str]:
    """Start a fresh redis-server on a free port; yield its URL; stop it.

    Args:
        executable: the redis-server binary; default what rsc_async.testing finds.
        hz: passed as ``--hz``; default the server's own (10).
    """
    extra_args = ["--hz", str(hz)] if hz is not None else []
    redis_server = RedisServer(executable, extra_args=extra_args)
    if redis_server.port == SHARED_PORT:
        msg = f"refusing to start a benchmark server on port {SHARED_PORT}"
        raise RuntimeError(msg)
    with redis_server:
        yield redis_server.url


@contextlib.contextmanager
def cluster(
    executable: str | None = None, *, primaries: int = 3, replicas: int = 1
) -> Iterator[RedisClusterServers]:
    """Start a fresh local Redis Cluster on free ports; yield it; stop it.

    Args:
        executable: the redis-server binary; default what rsc_async.testing finds.
        primaries: how many primaries.
        replicas: replicas per primary.
    """
    servers = RedisClusterServers(primaries, replicas, executable=executable)
    if any(node.port == SHARED_PORT for node in servers.nodes):
        msg = f"refusing to start a benchmark cluster node on port {SHARED_PORT}"
        raise RuntimeError(msg)
    with servers:
        yield servers


def connect(url: str, *, cluster: bool = False) -> Client:
    """A client of the server at *url*, or of the cluster *url* is a node of."""
    if cluster:
        return RedisCluster.from_url(url)
    return aioredis.Redis.from_url(url)


@dataclass(frozen=True)
class ServerStats:
    """The counters of one INFO snapshot that the benchmarks read."""

    at: float
    commands: int
    cpu_seconds: float
    calls: Mapping[str, int]
    usec: Mapping[str, int]

    def __sub__(self, before: ServerStats) -> Window:
        return Window(
            seconds=self.at - before.at,
            commands=self.commands - before.commands,
            cpu_seconds=self.cpu_seconds - before.cpu_seconds,
            calls={
                name: count - before.calls.get(name, 0)
                for name, count in self.calls.items()
            },
            usec={
                name: total - before.usec.get(name, 0)
                for name, total in self.usec.items()
            },
        )


@dataclass(frozen=True)
class Window:
    """What the server did between two snapshots."""

    seconds: float
    commands: int
    cpu_seconds: float
    calls: Mapping[str, int]
    usec: Mapping[str, int]

    @property
    def cpu_percent(self) -> float:
        """Server CPU time (user + system) as a percentage of one core."""
        return 100 * self.cpu_seconds / self.seconds

    @property
    def commands_per_second(self) -> float:
        """Commands processed per second, those run inside scripts included."""
        return self.commands / self.seconds

    def usec_per_call(self, command: str) -> float:
        """Mean server-side time of one *command* in the window, microseconds."""
        calls = self.calls.get(command, 0)
        return self.usec.get(command, 0) / calls if calls else 0.0


async def snapshot(redis: aioredis.Redis) -> ServerStats:
    """Read the counters now.

    The INFO call that reads them is itself counted by the next snapshot; one
    command per window is noise next to what the benchmarks measure.
    """
    info: dict[str, Any] = await redis.info("all")
    calls: dict[str, int] = {}
    usec: dict[str, int] = {}
    for field, value in info.items():
        if field.startswith("cmdstat_") and isinstance(value, dict):
            name = field.removeprefix("cmdstat_")
            calls[name] = int(value["calls"])
            usec[name] = int(value["usec"])
    return ServerStats(
        at=time.monotonic(),
        commands=int(info["total_commands_processed"]),
        cpu_seconds=float(info["used_cpu_sys"]) + float(info["used_cpu_user"]),
        calls=calls,
        usec=usec,
    )


def lbs_payload(name: str) -> dict[str, str]:
    """The fields of an LBS entry handing out the data stream *name*."""
    return {"lbs-input": LBSMessage(data_stream_name=name).to_json()}


def stream_names(count: int, prefix: str = "stream") -> list[str]:
    """*count* distinct data stream names of equal length."""
    return [f"{prefix}-{n:06d}" for n in range(count)]


async def create_group(redis: Client, service: str) -> None:
    """Create the service's consumer group as a consumer would, LBS included.

    Done before filling the LBS, because the group starts at ``$`` and would
    not hand out entries added before it existed.
    """
    await redis.xgroup_create(f"{service}-input", f"{service}-group", mkstream=True)


async def fill_lbs(
    redis: Client, service: str, names: Sequence[str], *, at_once: bool = False
) -> list[str]:
    """XADD one LBS entry per name, pipelined; the entry ids in order.

    With *at_once*, every entry goes in one MULTI/EXEC, so that consumers
    already waiting see all of them appear together.
    """
    ids: list[str] = []
    lbs = f"{service}-input"
    batch = len(names) if at_once else XADD_BATCH
    for start in range(0, len(names), batch):
        async with redis.pipeline(transaction=at_once) as pipe:
            for name in names[start : start + batch]:
                pipe.xadd(lbs, lbs_payload(name))  # type: ignore[arg-type]
            replies = await pipe.execute()
        ids.extend(
            reply.decode() if isinstance(reply, bytes) else str(reply)
            for reply in replies
        )
    return ids


def parse_lbs_name(fields: Mapping[bytes, bytes]) -> str:
    """The data stream name an LBS entry carries, as a plain consumer reads it."""
    value: dict[str, Any] = json.loads(fields[b"lbs-input"])
    name: str = value["DataStreamName"]
    return name
