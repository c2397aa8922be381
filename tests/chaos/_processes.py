"""The consumer processes of a chaos run: started, killed, stalled and stopped."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import anyio

from ._ledger import Ledger, text

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: ``tests.chaos.consumer`` is importable from here."""

STOP_TIMEOUT = 30.0
"""Seconds a consumer gets to finish its work and exit after SIGTERM."""

LOG_TAIL_LINES = 30


@dataclass(frozen=True)
class ConsumerOptions:
    """What every consumer process of a run is started with."""

    url: str
    service: str
    seed: int
    work_ms: float
    hb_interval: float
    lbs_idle_time: float
    reconcile_interval: float
    max_deliveries: int


class ConsumerProcess:
    """One ``python -m tests.chaos.consumer`` process; its log goes to a file."""

    def __init__(
        self, name: str, seed: int, options: ConsumerOptions, log_path: Path
    ) -> None:
        self.name = name
        self.log_path = log_path
        argv = [
            sys.executable,
            "-m",
            "tests.chaos.consumer",
            "--url",
            options.url,
            "--service",
            options.service,
            "--name",
            name,
            "--seed",
            str(seed),
            "--work-ms",
            str(options.work_ms),
            "--hb-interval",
            str(options.hb_interval),
            "--lbs-idle-time",
            str(options.lbs_idle_time),
            "--reconcile-interval",
            str(options.reconcile_interval),
            "--max-deliveries",
            str(options.max_deliveries),
        ]
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.stalled = False
        self.told_to_end = False

    @property
    def client_id(self) -> str:
        """The consumer name its client uses in the group and the ledger."""
        return f"redis-consumer-{self.name}"

    @property
    def pid(self) -> int:
        """The process id."""
        return self._process.pid

    def exit_code(self) -> int | None:
        """The exit status, or None while it runs."""
        return self._process.poll()

    def kill(self) -> float:
        """SIGKILL it and reap it; the wall-clock time of the kill."""
        self.told_to_end = True
        killed_at = time.time()
        self._process.kill()
        self._process.wait()
        self._log.close()
        return killed_at

    def stall(self) -> None:
        """SIGSTOP: the process keeps its connections but does nothing."""
        self.stalled = True
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`stall`."""
        os.kill(self.pid, signal.SIGCONT)
        self.stalled = False

    def terminate(self) -> None:
        """SIGTERM: finish the work in hand, then exit."""
        self.told_to_end = True
        if self.stalled:
            self.resume()
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    async def wait(self) -> int | None:
        """Wait for the exit status after :meth:`terminate`; None if it hung."""
        try:
            code = await anyio.to_thread.run_sync(self._process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        self._log.close()
        return code

    def log_tail(self) -> str:
        """The last lines of its log."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return "\n".join(lines[-LOG_TAIL_LINES:])


class ConsumerPool:
    """The consumers of a run: the running ones, and every one ever started."""

    def __init__(self, options: ConsumerOptions, log_dir: Path) -> None:
        self._options = options
        self._log_dir = log_dir
        self.running: list[ConsumerProcess] = []
        self.started: list[ConsumerProcess] = []

    def start(self) -> ConsumerProcess:
        """Start one more consumer."""
        number = len(self.started) + 1
        name = f"c{number:03d}"
        # Each consumer times its work differently, all from the run's seed.
        seed = self._options.seed * 1000 + number
        process = ConsumerProcess(
            name, seed, self._options, self._log_dir / f"{name}.log"
        )
        self.running.append(process)
        self.started.append(process)
        return process

    def pick(self, rng: random.Random, ready: set[str]) -> ConsumerProcess | None:
        """A running consumer that is not stalled, chosen by *rng*.

        One whose client runs (its id in *ready*) is preferred: a fault in a
        process still importing its modules tests nothing.
        """
        candidates = [p for p in self.running if not p.stalled]
        started = [p for p in candidates if p.client_id in ready]
        pool = started or candidates
        return rng.choice(pool) if pool else None

    def kill(self, process: ConsumerProcess) -> float:
        """SIGKILL *process* and start its replacement; the time of the kill."""
        self.running.remove(process)
        killed_at = process.kill()
        self.start()
        return killed_at

    def exited_on_their_own(self) -> list[ConsumerProcess]:
        """Consumers that ended without being killed or told to stop."""
        return [
            p for p in self.started if not p.told_to_end and p.exit_code() is not None
        ]

    async def wait_ready(self, ledger: Ledger, within: float) -> None:
        """Return once every running consumer has started its client.

        Raises:
            TimeoutError: one of them was not ready after *within* seconds.
            RuntimeError: one of them exited instead.
        """
        deadline = time.monotonic() + within
        wanted = {p.client_id for p in self.running}
        while True:
            ready = set(map(text, await ledger.redis.hkeys(ledger.ready)))
            if wanted <= ready:
                return
            late = sorted(wanted - ready)
            if time.monotonic() > deadline:
                msg = f"consumers {late} were not ready after {within} s"
                raise TimeoutError(msg)
            if self.exited_on_their_own():
                msg = f"consumers exited while starting: {self.describe_exits()}"
                raise RuntimeError(msg)
            await anyio.sleep(0.1)

    async def stop_all(self) -> dict[str, int | None]:
        """SIGTERM every running consumer; their exit statuses by name."""
        for process in self.running:
            process.terminate()
        codes = {process.name: await process.wait() for process in self.running}
        self.running = []
        return codes

    def kill_all(self) -> None:
        """SIGKILL whatever still runs (cleanup after a failure)."""
        for process in self.running:
            if process.exit_code() is None:
                if process.stalled:
                    process.resume()
                process.kill()
        self.running = []

    def describe_exits(self) -> str:
        """The consumers that exited on their own, with the tails of their logs."""
        parts = [
            f"{p.name} (exit {p.exit_code()}):\n{p.log_tail()}"
            for p in self.exited_on_their_own()
        ]
        return "\n".join(parts)
