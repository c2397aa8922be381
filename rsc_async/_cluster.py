"""Redis Cluster: the same keys, spread over slots and nodes.

Lock keys hash to slots all over the cluster, while the LBS, the dead letters
and the fencing counter each live in one slot of their own. What is one
atomic script on a single server becomes ordered steps here:

- taking locks: ``SET NX PX`` of each lock, then one ``INCRBY`` of the
  counter for the tokens. A crash in between leaves a lock without a token,
  which expires like any other.
- finishing: check the lock is ours, ``XACK`` and ``XDEL`` the entry, then
  compare-and-delete the lock. A crash before the last step leaves a lock
  that expires on an entry that is gone, which nobody is told to claim.
- dead-lettering: ``XADD`` to the dead letters before the entry goes.

Scripts run per slot (a script's keys must share one), grouped by node: each
node gets one pipeline, so a heartbeat is one round trip per node whatever
the number of locks. Keyspace events are published on the node that owns the
key, so a subscription is kept on every primary and follows the topology.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from ._errors import RedisCommandError
from ._store import LOCK_CHUNK, NodeConfig, Store, _call, _chunks

# Connection settings a node client takes over from the cluster client.
_NODE_SETTINGS = (
    "username",
    "password",
    "credential_provider",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "ssl",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)


class ClusterStore(Store):
    """The keys of one service in a Redis Cluster, seen by one consumer."""

    redis: RedisCluster  # type: ignore[assignment]

    def __init__(self, redis: RedisCluster, service: str, consumer: str) -> None:
        super().__init__(redis, service, consumer)  # type: ignore[arg-type]
        self._node_clients: dict[str, aioredis.Redis] = {}

    @property
    def _connection_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = self.redis.connection_kwargs
        return kwargs

    @property
    def db(self) -> int:
        """Always 0: a cluster has one database."""
        return 0

    async def prepare(self) -> None:
        """Learn the cluster's nodes and slots."""
        await _call(self.redis.initialize(), "discovering the cluster")

    async def refresh_topology(self) -> None:
        """Read the slot map again, after a failover or a resharding."""
        await _call(self.redis.nodes_manager.initialize(), "reading the slot map")

    async def close(self) -> None:
        """Close the connections opened to single nodes."""
        clients, self._node_clients = self._node_clients, {}
        for client in clients.values():
            await client.aclose()

    def node_client(self, host: str, port: int) -> aioredis.Redis:
        """A plain client of one node, with the cluster client's settings."""
        name = f"{host}:{port}"
        client = self._node_clients.get(name)
        if client is None:
            settings = {
                key: value
                for key, value in self._connection_kwargs.items()
                if key in _NODE_SETTINGS
            }
            client = aioredis.Redis(host=host, port=port, **settings)
            self._node_clients[name] = client
        return client

    async def all_nodes(self) -> list[tuple[str, int, bool]]:
        """(host, port, is primary) of every node the cluster knows now."""
        nodes = await _call(self.redis.cluster_nodes(), "CLUSTER NODES")
        found = []
        for address, node in nodes.items():
            flags = str(node.get("flags", ""))
            if "fail" in flags or "handshake" in flags or "noaddr" in flags:
                continue
            host, _, port = address.rpartition(":")
            found.append((host, int(port), "master" in flags))
        return found

    async def primaries(self) -> list[tuple[str, int]]:
        """(host, port) of every primary, as the cluster says now."""
        return [(h, p) for h, p, primary in await self.all_nodes() if primary]

    def config_targets(self) -> list[NodeConfig]:
        """Every node: a replica promoted in a failover keeps its own setting."""
        return [_ClusterConfig(self)]

    def subscription(self, pattern: str) -> ClusterSubscription:
        """A subscription to *pattern* on every primary."""
        return ClusterSubscription(self, pattern)

    async def _per_key(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        args: list[Any],
        what: str,
        *,
        answer_within: float | None = None,
    ) -> list[Any]:
        """Run a one-value-per-key script per slot, one pipeline per node.

        Nodes that fail (slots moved in a failover, a node restarting) are
        tried once more after the slot map is read again, so a failover costs
        one extra round trip rather than a missed heartbeat. With *answer_within*,
        the keys of a node that does not answer in time get None, and the
        other nodes' answers stand.
        """
        results: list[Any] = [None] * len(keys)
        pending = list(range(len(keys)))
        for _ in range(2):
            failures = await self._run_by_node(
                script, keys, pending, args, results, what, answer_within
            )
            if not failures:
                return results
            pending = [index for indexes, _ in failures for index in indexes]
            await self.refresh_topology()
        error = failures[0][1]
        raise RedisCommandError(f"{what} failed on {len(failures)} nodes: {error}")

    async def _run_by_node(
        self,
        script: AsyncScript,
        keys: Sequence[str],
        indexes: list[int],
        args: list[Any],
        results: list[Any],
        what: str,
        answer_within: float | None,
    ) -> list[tuple[list[int], Exception]]:
        """Run *script* over the keys at *indexes*; the indexes of failed nodes."""
        by_node: dict[tuple[str, int], dict[int, list[int]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for index in indexes:
            slot = self.redis.keyslot(keys[index])
            node = self.redis.nodes_manager.get_node_from_slot(slot)
            by_node[(node.host, int(node.port))][slot].append(index)

        async def run_on(address: tuple[str, int], slots: dict[int, list[int]]) -> None:
            order: list[int] = []
            calls = []
            for slot_indexes in slots.values():
                for chunk in _chunks(slot_indexes, LOCK_CHUNK):
                    calls.append(([keys[i] for i in chunk], args))
                    order.extend(chunk)
            where = f"{what} on {address[0]}:{address[1]}"
            client = self.node_client(*address)
            replies = await self._scripted(script, calls, where, client=client)
            for index, value in zip(
                order, (v for reply in replies for v in reply), strict=True
            ):
                results[index] = value

        nodes = list(by_node.items())
        outcomes = await asyncio.gather(
            *(
                asyncio.wait_for(run_on(address, slots), answer_within)
                for address, slots in nodes
            ),
            return_exceptions=True,
        )
        failures: list[tuple[list[int], Exception]] = []
        for (_, slots), outcome in zip(nodes, outcomes, strict=True):
            if isinstance(outcome, asyncio.TimeoutError):
                continue  # Its keys stay None: unanswered, not failed.
            if isinstance(outcome, RedisCommandError | OSError):
                failed = [index for group in slots.values() for index in group]
                failures.append((failed, outcome))
            elif isinstance(outcome, BaseException):
                raise outcome
        return failures

    async def acquire_locks(self, keys: Sequence[str], ttl_ms: int) -> list[int]:
        """Take each free lock, then one token per lock taken from the counter."""
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, self.consumer, nx=True, px=ttl_ms)
            taken = await _call(pipe.execute(), "taking locks")
        count = sum(1 for reply in taken if reply)
        if not count:
            return [0] * len(keys)
        last = await _call(self.redis.incrby(self.fencing, count), "INCRBY fencing")
        tokens = iter(range(last - count + 1, last + 1))
        return [next(tokens) if reply else 0 for reply in taken]

    async def finish(self, locks: Sequence[tuple[str, str]]) -> list[str | None]:
        """Check the locks, finish their entries, then delete the locks."""
        if not locks:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key, _ in locks:
                pipe.get(key)
            holders = [
                None if reply is None else reply.decode() if isinstance(reply, bytes)
                else str(reply)
                for reply in await _call(pipe.execute(), "reading locks")
            ]  # fmt: skip
        ours = [
            index
            for index, holder in enumerate(holders)
            if holder is None or holder == self.consumer
        ]
        if ours:
            await self._forget(*(locks[i][1] for i in ours))
            held = [locks[i][0] for i in ours if holders[i] is not None]
            await self._per_key(self._release, held, [self.consumer], "releasing locks")
        return [None if i in set(ours) else holders[i] for i in range(len(locks))]


class _ClusterConfig(NodeConfig):
    """``notify-keyspace-events`` of every node of a cluster, as one setting."""

    def __init__(self, store: ClusterStore) -> None:
        super().__init__(store.redis, "every cluster node")
        self._store = store

    async def get(self) -> str:
        """The flags every node has (the flags of the node that lacks most)."""
        settings = []
        for host, port, _ in await self._store.all_nodes():
            node = NodeConfig(self._store.node_client(host, port), f"{host}:{port}")
            settings.append(await node.get())
        return min(settings, key=len, default="")

    async def set(self, flags: str) -> None:
        """Set the flags on every node."""
        for host, port, _ in await self._store.all_nodes():
            node = NodeConfig(self._store.node_client(host, port), f"{host}:{port}")
            await node.set(flags)


class ClusterSubscription:
    """A pattern subscription on every primary, following the topology.

    One reader per primary feeds a shared queue, so an event is passed on as
    soon as any node publishes it. :meth:`refresh` subscribes to primaries
    that appeared (a promoted replica, a new shard) and drops those that were
    demoted.
    """

    def __init__(self, store: ClusterStore, pattern: str) -> None:
        self._store = store
        self._pattern = pattern
        self._queue: asyncio.Queue[dict[str, Any] | Exception] = asyncio.Queue()
        self._readers: dict[tuple[str, int], tuple[Any, asyncio.Task[None]]] = {}

    @property
    def active(self) -> bool:
        """Whether some primary is subscribed."""
        return bool(self._readers)

    async def subscribe(self) -> None:
        """Subscribe on every primary."""
        await self.refresh()

    async def refresh(self) -> None:
        """Subscribe to new primaries and drop the demoted ones."""
        primaries = set(await self._store.primaries())
        for address in list(self._readers):
            if address not in primaries:
                await self._drop(address)
        for address in primaries - set(self._readers):
            pubsub = self._store.node_client(*address).pubsub()
            await _call(pubsub.psubscribe(self._pattern), "PSUBSCRIBE")
            await _call(pubsub.get_message(timeout=1.0), "PSUBSCRIBE")
            reader = asyncio.create_task(self._read(pubsub))
            self._readers[address] = (pubsub, reader)

    async def _read(self, pubsub: Any) -> None:
        while True:
            try:
                message = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
            except Exception as exc:
                self._queue.put_nowait(exc)
                return
            if message is not None:
                self._queue.put_nowait(message)

    async def next(self, wait: float) -> dict[str, Any] | None:
        """The next message from any primary, or None after *wait* seconds."""
        try:
            item = await asyncio.wait_for(self._queue.get(), wait)
        except asyncio.TimeoutError:
            return None
        if isinstance(item, Exception):
            raise RedisCommandError(f"reading keyspace events failed: {item}") from item
        return item

    async def _drop(self, address: tuple[str, int]) -> None:
        pubsub, reader = self._readers.pop(address)
        reader.cancel()
        await asyncio.wait({reader})
        await pubsub.aclose()

    async def reset(self) -> None:
        """Drop every subscription; subscribe again after."""
        for address in list(self._readers):
            await self._drop(address)
        self._queue = asyncio.Queue()

    async def close(self) -> None:
        """Release every connection."""
        await self.reset()
