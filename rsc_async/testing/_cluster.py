"""A local Redis Cluster of redis-server processes."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from ._server import (
    HOST,
    INSTALL_HINT,
    RedisServer,
    RedisUnavailableError,
    find_redis_server,
    free_port,
)


def _free_cluster_port() -> int:
    # A cluster node also listens on its port + 10000 for the cluster bus.
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port + 10000))
            except OSError:
                continue
        return port


class RedisClusterServers:
    """A local Redis Cluster: *primaries* primaries with *replicas* each.

    Every node is a :class:`RedisServer` with cluster mode on; they are joined
    with ``redis-cli --cluster create`` and :meth:`start` returns once every
    node reports ``cluster_state:ok``.

    Args:
        primaries: how many primaries; at least 3.
        replicas: replicas per primary.
        executable: the redis-server binary; by default :func:`find_redis_server`.
        extra_args: further arguments for every node.
    """

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 1,
        *,
        executable: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise RedisUnavailableError(f"no redis-server binary found; {INSTALL_HINT}")
        cli = shutil.which("redis-cli") or str(Path(found).with_name("redis-cli"))
        if not Path(cli).is_file():
            raise RedisUnavailableError(
                "no redis-cli binary found to create a cluster; install redis-tools"
            )
        self._cli = cli
        self._replicas = replicas
        self.nodes = [
            RedisServer(
                found,
                port=_free_cluster_port(),
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    *extra_args,
                ],
            )
            for _ in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        """A ``redis://`` URL of one node, enough for a cluster client."""
        return self.nodes[0].url

    def start(self) -> RedisClusterServers:
        """Start every node, create the cluster and wait until it serves.

        Raises:
            RuntimeError: a node failed to start or the cluster did not form.
        """
        try:
            for node in self.nodes:
                node.start()
            addresses = [f"{HOST}:{node.port}" for node in self.nodes]
            options = ["--cluster-replicas", str(self._replicas), "--cluster-yes"]
            subprocess.run(
                [self._cli, "--cluster", "create", *addresses, *options],
                check=True,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
            )
            self.wait_until_ok()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_until_ok(self, timeout: float = 30.0) -> None:
        """Wait until every node reports ``cluster_state:ok`` and every replica.

        Raises:
            RuntimeError: it did not within *timeout* seconds.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self._state_ok(node) for node in self.nodes):
                return
            time.sleep(0.05)
        raise RuntimeError(f"cluster did not reach cluster_state:ok in {timeout}s")

    def _state_ok(self, node: RedisServer) -> bool:
        info = self._ask(node, "cluster", "info")
        nodes = self._ask(node, "cluster", "nodes")
        replicas = len(self.nodes) // (1 + self._replicas) * self._replicas
        return b"cluster_state:ok" in info and nodes.count(b"slave") == replicas

    def _ask(self, node: RedisServer, *command: str) -> bytes:
        try:
            return subprocess.run(
                [self._cli, "-p", str(node.port), *command],
                capture_output=True,
                timeout=5,
                check=True,
            ).stdout
        except (subprocess.SubprocessError, OSError):
            return b""

    def stop(self) -> None:
        """Stop every node and remove their directories."""
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> RedisClusterServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
