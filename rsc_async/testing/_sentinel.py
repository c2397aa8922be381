"""A local primary, replica and sentinels."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import IO

import redis

from ._server import (
    HOST,
    INSTALL_HINT,
    LOG_TAIL_LINES,
    START_TIMEOUT,
    STOP_TIMEOUT,
    RedisServer,
    RedisUnavailableError,
    answers_ping,
    find_redis_server,
    free_port,
)


class RedisSentinelServers:
    """A primary, one replica of it and sentinels that can fail it over.

    The primary and the replica are :class:`RedisServer` processes. Each
    sentinel is ``redis-server <config> --sentinel`` with a config file in a
    temporary directory of its own, which the sentinel rewrites as it learns
    the topology. :meth:`start` returns once every sentinel knows the replica
    and every other sentinel, so a failover can be forced straight away.

    Args:
        sentinels: how many sentinels; the quorum is a majority of them.
        master_name: the name the sentinels monitor the primary under.
        down_after_ms: how long the primary may not answer before a sentinel
            thinks it down.
        failover_timeout_ms: the sentinels' ``failover-timeout``.
        executable: the redis-server binary; by default :func:`find_redis_server`.

    Raises:
        RedisUnavailableError: no executable was given and none was found.
    """

    def __init__(
        self,
        sentinels: int = 3,
        *,
        master_name: str = "mymaster",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        executable: str | None = None,
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise RedisUnavailableError(f"no redis-server binary found; {INSTALL_HINT}")
        self._executable = found
        self.master_name = master_name
        self._quorum = sentinels // 2 + 1
        self._settings = (
            f"sentinel down-after-milliseconds {master_name} {down_after_ms}",
            f"sentinel failover-timeout {master_name} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master_name} 1",
        )
        self.primary = RedisServer(found)
        self.replica: RedisServer | None = None
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        self._sentinels: list[tuple[subprocess.Popen[bytes], Path, IO[bytes]]] = []

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        """The ``(host, port)`` of every sentinel, as a sentinel client takes them."""
        return [(HOST, port) for port in self.sentinel_ports]

    def start(self) -> RedisSentinelServers:
        """Start the primary, the replica and the sentinels; wait until ready.

        Raises:
            RuntimeError: a server did not start, or the sentinels did not
                learn the topology in time.
        """
        try:
            self.primary.start()
            # The primary's port is final only once it has started.
            replica_of = ["--replicaof", HOST, str(self.primary.port)]
            self.replica = RedisServer(self._executable, extra_args=replica_of)
            self.replica.start()
            for index, port in enumerate(self.sentinel_ports):
                self.sentinel_ports[index] = self._start_sentinel(port)
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the sentinels first, so none fails over, then the servers."""
        sentinels, self._sentinels = self._sentinels, []
        for process, directory, log in sentinels:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            log.close()
            shutil.rmtree(directory, ignore_errors=True)
        servers = (
            [self.primary] if self.replica is None else [self.replica, self.primary]
        )
        # A primary waits for its replicas to catch up before it shuts down
        # (Redis 7), and after a failover the replica is the primary.
        for server in sorted(servers, key=self._is_primary):
            server.stop()

    def __enter__(self) -> RedisSentinelServers:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _start_sentinel(self, port: int) -> int:
        """Start one sentinel; return its port, picked again if it was taken."""
        attempts = 0
        while True:
            attempts += 1
            directory = Path(tempfile.mkdtemp(prefix="rsc-sentinel-"))
            try:
                process, log = self._launch_sentinel(port, directory)
            except RuntimeError as exc:
                shutil.rmtree(directory, ignore_errors=True)
                if "Address already in use" not in str(exc) or attempts == 3:
                    raise
                port = free_port()
                continue
            self._sentinels.append((process, directory, log))
            return port

    def _launch_sentinel(
        self, port: int, directory: Path
    ) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
        config = directory / "sentinel.conf"
        monitor = f"{HOST} {self.primary.port} {self._quorum}"
        lines = [
            f"port {port}",
            f"bind {HOST}",
            f"dir {directory}",
            f"sentinel monitor {self.master_name} {monitor}",
            *self._settings,
        ]
        # Sentinels rewrite their config file as they learn the topology.
        config.write_text("\n".join(lines) + "\n")
        log = open(directory / "sentinel.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [self._executable, str(config), "--sentinel"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if answers_ping(port):
                return process, log
            time.sleep(0.02)
        if process.poll() is None:
            process.kill()
        process.wait()
        log.close()
        text = (directory / "sentinel.log").read_text(errors="replace")
        tail = "\n".join(text.splitlines()[-LOG_TAIL_LINES:])
        msg = f"sentinel on port {port!r} did not start; log tail:\n{tail}"
        raise RuntimeError(msg)

    def _is_primary(self, server: RedisServer) -> bool:
        try:
            with redis.Redis(HOST, server.port, socket_timeout=1.0) as client:
                role = client.execute_command("ROLE")
        except redis.RedisError:
            return False
        return bool(role[0] in (b"master", "master"))

    def _wait_until_ready(self) -> None:
        # Sentinels find each other through hello messages sent every 2 s.
        timeout = 3 * START_TIMEOUT
        deadline = time.monotonic() + timeout
        while not all(self._knows_topology(port) for port in self.sentinel_ports):
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the sentinels did not learn the replica and each other "
                    f"within {timeout}s"
                )
            time.sleep(0.05)

    def _knows_topology(self, port: int) -> bool:
        others = len(self.sentinel_ports) - 1
        try:
            with redis.Redis(HOST, port, socket_timeout=1.0) as sentinel:
                master = sentinel.sentinel_master(self.master_name)
                replicas = sentinel.sentinel_slaves(self.master_name)
        except redis.RedisError:
            return False
        return bool(
            master["num-other-sentinels"] == others
            and any(
                replica["is_slave"]
                and not replica["is_sdown"]
                and replica["master-link-status"] == "ok"
                for replica in replicas
            )
        )
