"""The client on a real Redis Cluster: three primaries, three replicas."""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from _consumer_proc import ConsumerProcess
from _wait import wait_for
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection

from rsc_async import (
    MUTEX_KEY_SEP,
    Notification,
    NotificationType,
    RedisStreamClient,
    add_stream,
)
from rsc_async._cluster import ClusterStore
from rsc_async._metrics import NoMetrics
from rsc_async.testing import RedisClusterServers, RedisUnavailableError


def _consumer(redis: RedisCluster, service: str, name: str) -> RedisStreamClient:
    return RedisStreamClient(
        redis, service, consumer_id=name, hb_interval=0.5, lbs_idle_time=1.0
    )


def _start_cluster() -> RedisClusterServers:
    try:
        return RedisClusterServers(primaries=3, replicas=1).start()
    except RedisUnavailableError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    """A cluster shared by the tests that do not change its topology."""
    servers = _start_cluster()
    yield servers
    servers.stop()


@pytest_asyncio.fixture
async def cluster_client(
    cluster: RedisClusterServers,
) -> AsyncIterator[RedisCluster]:
    """A cluster client, closed after the test."""
    client = RedisCluster.from_url(cluster.url)
    await client.initialize()
    yield client
    await client.aclose()


def _text(value: object) -> str:
    assert isinstance(value, bytes)
    return value.decode()


def _node_of(client: RedisCluster, key: str) -> str:
    node = client.nodes_manager.get_node_from_slot(client.keyslot(key))
    return str(node.name)


async def _collect(
    client: RedisStreamClient, into: list[Notification], count: int
) -> None:
    async for notification in client.init():
        into.append(notification)
        if len(into) == count:
            return


# Adds an entry and delivers it to a ghost consumer in one step, so that no
# running consumer reads it first. KEYS: the LBS. ARGV: lbs-input, group.
_GHOST_ENTRY = """
local id = redis.call('XADD', KEYS[1], '*', 'lbs-input', ARGV[1])
redis.call('XREADGROUP', 'GROUP', ARGV[2], 'redis-consumer-ghost',
           'COUNT', 1, 'STREAMS', KEYS[1], '>')
return id
"""


async def _ghost_locks(
    client: RedisCluster, service: str, names: list[str], ttl_ms: int
) -> dict[str, str]:
    """Hand *names* to a consumer that holds their locks for *ttl_ms*, then dies."""
    ids = {}
    for name in names:
        message = json.dumps({"DataStreamName": name, "Info": {"ghost": True}})
        raw = await client.eval(
            _GHOST_ENTRY, 1, f"{service}-input", message, f"{service}-group"
        )
        ids[name] = raw.decode()
        lock = f"{name}{MUTEX_KEY_SEP}{ids[name]}"
        await client.set(lock, "redis-consumer-ghost", px=ttl_ms)
    return ids


async def test_streams_are_shared_by_consumers_with_locks_on_every_node(
    cluster_client: RedisCluster, service_name: str
) -> None:
    """Two consumers share 30 streams; their locks live on all three primaries."""
    first = _consumer(cluster_client, service_name, "a")
    second = _consumer(cluster_client, service_name, "b")
    async with first, second:
        await first.init()
        await second.init()
        names = [f"session-{n}" for n in range(30)]
        for name in names:
            await add_stream(cluster_client, service_name, name, info={"n": name})

        def all_held() -> bool:
            held = [*first.held_streams, *second.held_streams]
            return len(held) == len(names)

        await wait_for(all_held, timeout=10)
        held = [*first.held_streams, *second.held_streams]
        assert sorted(names) == sorted(info.data_stream_name for info in held)
        nodes = {_node_of(cluster_client, info.mutex_key) for info in held}
        assert 3 == len(nodes)
        for info in held:
            holder = await cluster_client.get(info.mutex_key)
            assert holder in (b"redis-consumer-a", b"redis-consumer-b")


async def test_expiry_on_every_node_is_heard_and_claimed(
    cluster_client: RedisCluster, service_name: str
) -> None:
    """Locks of a dead holder expire on all three nodes; each is claimed once."""
    names = [f"orphan-{n}" for n in range(24)]
    heard: list[Notification] = []
    client = _consumer(cluster_client, service_name, "a")
    async with client:
        notifications = await client.init()
        ids = await _ghost_locks(cluster_client, service_name, names, ttl_ms=300)
        locks = [f"{name}{MUTEX_KEY_SEP}{ids[name]}" for name in names]
        assert 3 == len({_node_of(cluster_client, lock) for lock in locks})

        async for notification in notifications:
            assert NotificationType.STREAM_EXPIRED == notification.type
            heard.append(notification)
            assert notification.payload is not None
            await client.claim(notification.payload)
            if len(heard) == len(names):
                break

        assert sorted(names) == sorted(
            info.data_stream_name for info in client.held_streams
        )
        for name in names:
            await client.done_stream(name)
        assert 0 == await cluster_client.xlen(f"{service_name}-input")


async def test_streams_of_a_killed_consumer_on_every_node_are_claimed(
    cluster: RedisClusterServers, cluster_client: RedisCluster, service_name: str
) -> None:
    """A holder process is SIGKILLed; its locks on all three nodes are claimed."""
    names = [f"held-{n}" for n in range(24)]
    child = await ConsumerProcess.start(
        cluster.url,
        service_name,
        cluster=True,
        consumer_id="doomed",
        hb_interval=0.5,
        lbs_idle_time=1.0,
        reconcile_interval=0,
    )
    try:
        for name in names:
            await add_stream(cluster_client, service_name, name)
        for name in names:
            await child.expect(type="StreamAdded", stream=name)
        survivor = _consumer(cluster_client, service_name, "survivor")
        async with survivor:
            notifications = await survivor.init()
            child.kill()

            claimed = []
            async for notification in notifications:
                assert NotificationType.STREAM_EXPIRED == notification.type
                assert notification.payload is not None
                await survivor.claim(notification.payload)
                claimed.append(notification.payload)
                if len(claimed) == len(names):
                    break

            assert sorted(names) == sorted(info.data_stream_name for info in claimed)
            assert 3 == len({_node_of(cluster_client, i.mutex_key) for i in claimed})
            for name in names:
                await survivor.done_stream(name)
            assert 0 == await cluster_client.xlen(f"{service_name}-input")
    finally:
        await child.stop()


async def test_finishing_after_a_crash_between_steps_loses_nothing(
    cluster_client: RedisCluster, service_name: str
) -> None:
    """An entry finished but whose lock was left behind is not handed out again."""
    client = _consumer(cluster_client, service_name, "a")
    async with client:
        notifications = await client.init()
        ids = await _ghost_locks(cluster_client, service_name, ["half-done"], 300)
        # The ghost finished the entry (XACK, XDEL) and died before deleting
        # its lock, the crash point between the ordered steps.
        entry_id = ids["half-done"]
        lbs = f"{service_name}-input"
        await cluster_client.xack(lbs, f"{service_name}-group", entry_id)
        await cluster_client.xdel(lbs, entry_id)
        lock = f"half-done{MUTEX_KEY_SEP}{entry_id}"

        async def lock_gone() -> bool:
            return not await cluster_client.exists(lock)

        await wait_for(lock_gone, timeout=5)
        await add_stream(cluster_client, service_name, "after")
        notification = await notifications.__anext__()
        # The expiry of the finished entry's lock announced nothing.
        assert NotificationType.STREAM_ADDED == notification.type
        assert notification.payload is not None
        assert "after" == notification.payload.data_stream_name


async def test_recovery_leaves_held_entries_with_their_holder(
    cluster_client: RedisCluster, service_name: str
) -> None:
    """Idle entries whose locks live on every node stay pending under their holder."""
    names = [f"held-{n}" for n in range(12)]
    lbs, group = f"{service_name}-input", f"{service_name}-group"
    await cluster_client.xgroup_create(lbs, group, id="$", mkstream=True)
    ids = await _ghost_locks(cluster_client, service_name, names, ttl_ms=60_000)
    locks = [f"{name}{MUTEX_KEY_SEP}{ids[name]}" for name in names]
    assert 3 == len({_node_of(cluster_client, lock) for lock in locks})

    async def pending() -> list[tuple[str, int, int]]:
        rows = await cluster_client.xpending_range(lbs, group, "-", "+", 100)
        return [
            (
                _text(row["consumer"]),
                int(row["times_delivered"]),
                int(row["time_since_delivered"]),
            )
            for row in rows
        ]

    async def idle_past_lbs_idle_time() -> bool:
        return all(idle > 1100 for _, _, idle in await pending())

    try:
        await wait_for(idle_past_lbs_idle_time, timeout=10)
        async with _consumer(cluster_client, service_name, "heir") as client:
            await client.init()

            assert [] == list(client.held_streams)
            expected = [("redis-consumer-ghost", 1)] * len(names)
            assert expected == [(owner, count) for owner, count, _ in await pending()]
    finally:
        for lock in locks:
            await cluster_client.delete(lock)


async def test_tokens_grow_across_slots(
    cluster_client: RedisCluster, service_name: str
) -> None:
    """Fencing tokens come from one counter even though locks are on many nodes."""
    client = _consumer(cluster_client, service_name, "a")
    async with client:
        notifications = await client.init()
        for n in range(10):
            await add_stream(cluster_client, service_name, f"s-{n}")
        tokens = []
        async for notification in notifications:
            assert notification.fencing_token is not None  # type: ignore[union-attr]
            tokens.append(notification.fencing_token)  # type: ignore[union-attr]
            if len(tokens) == 10:
                break
        assert 10 == len(set(tokens))
        counter = await cluster_client.get(f"{service_name}-fencing")
        assert str(max(tokens)).encode() == counter


class _Extensions(NoMetrics):
    """Counts lock extensions, one per held stream per heartbeat tick."""

    def __init__(self) -> None:
        self.count = 0

    def record_lock_extension_attempt(self, stream: str, success: bool) -> None:
        self.count += 1


async def test_a_heartbeat_is_one_script_call_per_node_whatever_the_slots(
    cluster: RedisClusterServers, cluster_client: RedisCluster, service_name: str
) -> None:
    """Locks in many slots of a node are extended by one script call a tick."""
    extensions = _Extensions()
    client = RedisStreamClient(
        cluster_client,
        service_name,
        consumer_id="a",
        hb_interval=0.5,
        reconcile_interval=0,
        metrics=extensions,
    )
    names = [f"slotted-{n}" for n in range(90)]
    async with client:
        await client.init()
        for name in names:
            await add_stream(cluster_client, service_name, name)
        await wait_for(lambda: len(client.held_streams) == len(names), timeout=10)
        slots = {cluster_client.keyslot(info.mutex_key) for info in client.held_streams}
        primaries = cluster_client.get_primaries()
        for node in primaries:
            await cluster_client.config_resetstat(target_nodes=node)
        start = extensions.count
        await wait_for(lambda: extensions.count >= start + 3 * len(names), timeout=10)
        calls = []
        for node in primaries:
            stats = await cluster_client.info("commandstats", target_nodes=node)
            calls.append(stats.get("cmdstat_evalsha", {}).get("calls", 0))

    assert len(slots) > 80
    # Three ticks reported, give or take one that straddled the reset and
    # one or two sent before the counters were read; one call per slot would
    # be about thirty a tick on each node.
    assert all(2 <= count <= 5 for count in calls), calls


def _failover(cluster: RedisClusterServers, replica_port: int) -> None:
    subprocess.run(
        ["redis-cli", "-p", str(replica_port), "cluster", "failover"],
        check=True,
        capture_output=True,
        timeout=10,
    )


async def test_a_primary_failover_loses_no_stream(service_name: str) -> None:
    """Streams held across a CLUSTER FAILOVER stay held, and expiries on the new
    primary are still heard."""
    servers = _start_cluster()
    try:
        redis = RedisCluster.from_url(servers.url)
        await redis.initialize()
        client = RedisStreamClient(
            redis, service_name, consumer_id="a", hb_interval=5.0, lbs_idle_time=10.0
        )
        async with client:
            notifications = await client.init()
            names = [f"held-{n}" for n in range(30)]
            for name in names:
                await add_stream(redis, service_name, name)
            await wait_for(lambda: len(client.held_streams) == len(names), timeout=10)

            nodes = await redis.cluster_nodes()
            replica = next(
                address
                for address, node in nodes.items()
                if "slave" in str(node["flags"])
            )
            _failover(servers, int(replica.rpartition(":")[2]))

            async def promoted() -> bool:
                now = await redis.cluster_nodes()
                return "master" in str(now[replica]["flags"])

            await wait_for(promoted, timeout=15)

            async def locks_kept() -> bool:
                # Extended past the failover: every lock outlives its TTL.
                for info in client.held_streams:
                    if await redis.pttl(info.mutex_key) <= 0:
                        return False
                return True

            ghost_names = [f"after-{n}" for n in range(12)]
            await redis.initialize()
            ids = await _ghost_locks(redis, service_name, ghost_names, ttl_ms=300)
            on_new_primary = [
                name
                for name in ghost_names
                if _node_of(redis, f"{name}{MUTEX_KEY_SEP}{ids[name]}") == replica
            ]
            assert on_new_primary
            heard = set()
            async for notification in notifications:
                assert NotificationType.STREAM_DISOWNED != notification.type
                if notification.type is NotificationType.STREAM_EXPIRED:
                    heard.add(notification.payload.data_stream_name)
                if heard >= set(on_new_primary):
                    break

            assert sorted(names) == sorted(
                info.data_stream_name for info in client.held_streams
            )
            assert await locks_kept()
            for name in names:
                await client.done_stream(name)
        pending = await redis.xpending(f"{service_name}-input", f"{service_name}-group")
        assert len(ghost_names) == pending["pending"]
        await redis.aclose()
    finally:
        servers.stop()


def test_node_clients_keep_the_cluster_clients_tls_and_credentials() -> None:
    """The clients opened to single nodes connect as the cluster client does."""
    cluster = RedisCluster(
        host="127.0.0.1",
        port=1,
        ssl=True,
        ssl_ca_certs="/etc/ssl/ca.pem",
        username="svc",
        password="secret",
        protocol=3,
    )
    store = ClusterStore(cluster, "svc", "redis-consumer-a")

    pool = store.node_client("127.0.0.1", 2).connection_pool
    settings = pool.connection_kwargs

    assert issubclass(pool.connection_class, SSLConnection)
    expected = ("/etc/ssl/ca.pem", "svc", "secret", 3)
    assert expected == (
        settings["ssl_ca_certs"],
        settings["username"],
        settings["password"],
        settings["protocol"],
    )
