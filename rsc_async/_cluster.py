"""Redis Cluster: the same keys, spread over slots and nodes.

Lock keys hash to slots all over the cluster, while the LBS, the dead letters
and the fencing counter each live in one slot of their own. What is one
atomic script on a single server becomes ordered steps here:

- taking locks: one ``INCRBY`` of the counter for a token per lock, then
  ``SET NX PX`` of each lock. A lock taken later always carries a larger
  token, even after a pause between the two steps; a crash in between only
  leaves tokens unused.
- finishing: check the lock is ours (or, where it ran out, that the entry is
  still pending under this consumer), ``XACK`` and ``XDEL`` the entry, then
  compare-and-delete the lock. A crash before the last step leaves a lock
  that expires on an entry that is gone, which nobody is told to claim.
  Another consumer that takes a lapsed lock between the check and the
  ``XACK`` finds the entry gone and lets it go.
- startup recovery: locks are read, then entries another consumer holds are
  given back to it with ``XCLAIM ... JUSTID``; an entry whose holder lost it
  in between goes back all the same, and is claimed when the lock expires.
- dead-lettering: ``XADD`` to the dead letters before the entry goes.

A script over a batch of locks (extend, hand back, release, check) runs on
each node over every lock that node holds, whatever their slots: the lock keys
go in ARGV and the script declares none, which Redis allows for scripts
without flags as long as every key is local to the node. Declared keys would
have to share one slot, and locks rarely do: at 10,000 locks that would be
thousands of script calls per heartbeat instead of ten. A key that is not
local (its slot moved, or is moving) fails the call; the failed keys are then
sent again after the slot map is read anew, this time one call per slot with
the keys declared, so a slot being migrated holds back only its own locks.
Either way each node gets one pipeline, so a heartbeat is one round trip per
node whatever the number of locks. Keyspace events are published on the node
that owns the key, so a subscription is kept on every primary and follows the
topology.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection
from redis.commands.core import AsyncScript

from ._errors import RedisCommandError
from ._models import decode
from ._store import (
    _EXISTS,
    _EXTEND,
    _HAND_BACK,
    _RELEASE,
    LOCK_CHUNK,
    NodeConfig,
    ReconnectWatch,
    Store,
    _call,
    _chunks,
)

# Prefixed to a script over a batch of locks, it takes the locks from ARGV
# instead of KEYS: ARGV holds the count of the script's own arguments, those
# arguments, then the lock keys.
_KEYS_IN_ARGV = """
local n = tonumber(ARGV[1])
local KEYS, ARGV = {unpack(ARGV, n + 2)}, {unpack(ARGV, 2, n + 1)}
"""

# Connection settings a node client takes over from the cluster client.
_NODE_SETTINGS = (
    "username",
    "password",
    "credential_provider",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "socket_keepalive_options",
    "client_name",
    "protocol",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_include_verify_flags",
    "ssl_exclude_verify_flags",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_ca_path",
    "ssl_check_hostname",
    "ssl_min_version",
    "ssl_ciphers",
    "ssl_password",
)


class ClusterStore(Store):
    """The keys of one service in a Redis Cluster, seen by one consumer."""

    redis: RedisCluster  # type: ignore[assignment]

    def __init__(self, redis: RedisCluster, service: str, consumer: str) -> None:
        super().__init__(redis, service, consumer)  # type: ignore[arg-type]
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._node_wide = {
            script.sha: redis.register_script(_KEYS_IN_ARGV + source)
            for script, source in (
                (self._extend, _EXTEND),
                (self._hand_back, _HAND_BACK),
                (self._release, _RELEASE),
                (self._exists, _EXISTS),
            )
        }

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
            kwargs = self._connection_kwargs
            settings = {
                key: value for key, value in kwargs.items() if key in _NODE_SETTINGS
            }
            # A TLS cluster client keeps its TLS as the connection class.
            tls = issubclass(kwargs.get("connection_class", object), SSLConnection)
            client = aioredis.Redis(host=host, port=port, ssl=tls, **settings)
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

    async def config_targets(self) -> list[NodeConfig]:
        """Every node: a replica publishes nothing now, but is promoted later."""
        return [
            NodeConfig(self.node_client(host, port), f"{host}:{port}")
            for host, port, _ in await self.all_nodes()
        ]

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
        """Run a one-value-per-key script over *keys*, one pipeline per node.

        Keys of nodes that fail (slots moved in a failover, a node restarting)
        are tried once more, one call per slot, after the slot map is read
        again, so a failover costs one extra round trip rather than a missed
        heartbeat. With *answer_within*, the keys of a node that does not
        answer in time get None, and the other nodes' answers stand.
        """
        results: list[Any] = [None] * len(keys)
        pending = list(range(len(keys)))
        for per_slot in (False, True):
            failures = await self._run_by_node(
                script, keys, pending, args, results, what, answer_within, per_slot
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
        per_slot: bool,
    ) -> list[tuple[list[int], Exception]]:
        """Run *script* over the keys at *indexes*; the indexes of failed nodes.

        Each node gets one pipeline: of calls over all its keys (see the
        module's docstring), or with *per_slot*, of calls that declare their
        keys, one slot each.
        """
        by_node: dict[tuple[str, int], dict[int, list[int]]] = defaultdict(
            lambda: defaultdict(list)
        )
        for index in indexes:
            slot = self.redis.keyslot(keys[index])
            node = self.redis.nodes_manager.get_node_from_slot(slot)
            by_node[(node.host, int(node.port))][slot if per_slot else 0].append(index)
        node_wide = self._node_wide[script.sha]

        async def run_on(address: tuple[str, int], slots: dict[int, list[int]]) -> None:
            order: list[int] = []
            calls = []
            for slot_indexes in slots.values():
                for chunk in _chunks(slot_indexes, LOCK_CHUNK):
                    chunk_keys = [keys[i] for i in chunk]
                    if per_slot:
                        calls.append((chunk_keys, args))
                    else:
                        calls.append(([], [len(args), *args, *chunk_keys]))
                    order.extend(chunk)
            where = f"{what} on {address[0]}:{address[1]}"
            client = self.node_client(*address)
            sent = script if per_slot else node_wide
            replies = await self._scripted(sent, calls, where, client=client)
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
        """Draw one token per key from the counter, then take each free lock.

        The tokens come first: a lock taken after a pause then still carries
        a token drawn before anyone who takes it over later, never after.
        """
        if not keys:
            return []
        last = await _call(self.redis.incrby(self.fencing, len(keys)), "INCRBY fencing")
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, self.consumer, nx=True, px=ttl_ms)
            taken = await _call(pipe.execute(), "taking locks")
        first = last - len(keys) + 1
        return [first + i if reply else 0 for i, reply in enumerate(taken)]

    async def give_back_held(
        self, entries: Sequence[tuple[str, str, int]]
    ) -> list[str | None]:
        """Read the locks, then give the entries others hold back to them."""
        holders = await self._holders([key for key, _, _ in entries])
        given = [
            (index, holder)
            for index, holder in enumerate(holders)
            if holder is not None and holder != self.consumer
        ]
        if given:
            async with self.redis.pipeline(transaction=False) as pipe:
                for index, holder in given:
                    _, entry_id, count = entries[index]
                    pipe.xclaim(
                        self.lbs,
                        self.group,
                        holder,
                        0,
                        [entry_id],
                        retrycount=count,
                        justid=True,
                    )
                await _call(pipe.execute(), "giving entries back")
        back = dict(given)
        return [back.get(index) for index in range(len(entries))]

    async def _holders(self, keys: Sequence[str]) -> list[str | None]:
        """The value of each lock key: its holder, or None where it is free."""
        if not keys:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            replies = await _call(pipe.execute(), "reading locks")
        return [None if reply is None else decode(reply) for reply in replies]

    async def finish(self, locks: Sequence[tuple[str, str]]) -> list[str | None]:
        """Check the locks, finish their entries, then delete the locks.

        As on a single server, a lock that ran out still lets its old holder
        finish, unless the entry is no longer pending under this consumer
        (another consumer claimed it, or finished it).
        """
        if not locks:
            return []
        holders: list[str | None] = await self._holders([key for key, _ in locks])
        lapsed = [locks[i][1] for i, holder in enumerate(holders) if holder is None]
        pending = await self.pending_entries(lapsed)
        for index, holder in enumerate(holders):
            if holder is None:
                holders[index] = pending.get(locks[index][1], ("", 0))[0]
        ours = {i for i, holder in enumerate(holders) if holder == self.consumer}
        if ours:
            await self._forget(*(locks[i][1] for i in sorted(ours)))
            held = [locks[i][0] for i in sorted(ours)]
            await self._per_key(self._release, held, [self.consumer], "releasing locks")
        return [None if i in ours else holders[i] for i in range(len(locks))]


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
        self._reconnects = ReconnectWatch()
        self._new_primary = False

    @property
    def active(self) -> bool:
        """Whether some primary is subscribed."""
        return bool(self._readers)

    async def subscribe(self) -> None:
        """Subscribe on every primary."""
        await self._follow()

    async def refresh(self) -> None:
        """Subscribe to new primaries and drop the demoted ones."""
        if await self._follow():
            # A promoted replica published its expiries before this.
            self._new_primary = True

    def resumed(self) -> bool:
        """Whether a primary was subscribed anew or reconnected since the last call."""
        new_primary, self._new_primary = self._new_primary, False
        return self._reconnects.seen() or new_primary

    async def _follow(self) -> bool:
        """Subscribe on the primaries not yet subscribed; whether there were any."""
        primaries = set(await self._store.primaries())
        for address in list(self._readers):
            if address not in primaries:
                await self._drop(address)
        new = primaries - set(self._readers)
        for address in new:
            pubsub = self._store.node_client(*address).pubsub()
            await _call(pubsub.psubscribe(self._pattern), "PSUBSCRIBE")
            await _call(pubsub.get_message(timeout=1.0), "PSUBSCRIBE")
            self._reconnects.watch(pubsub)
            reader = asyncio.create_task(self._read(pubsub))
            self._readers[address] = (pubsub, reader)
        return bool(new)

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
        self._reconnects.forget(pubsub)
        await pubsub.aclose()

    async def reset(self) -> None:
        """Drop every subscription; subscribe again after."""
        for address in list(self._readers):
            await self._drop(address)
        self._queue = asyncio.Queue()

    async def close(self) -> None:
        """Release every connection."""
        await self.reset()
