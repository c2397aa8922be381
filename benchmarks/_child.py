"""Benchmark processes run as children, spoken to in JSON lines.

A child reads one command per line on stdin and writes one JSON object per
line on stdout; its stderr goes to a file, shown when it fails, so that its
log records do not interleave with the table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
"""The directory ``benchmarks`` is imported from, the children's cwd."""

REPLY_TIMEOUT = 300.0
"""Seconds to wait for a child's next line before declaring it stuck."""

STOP_TIMEOUT = 30.0
"""Seconds a child gets to exit by itself after being told to."""


class ChildError(RuntimeError):
    """A child process failed or said something unexpected."""


class Child:
    """One running ``python -m benchmarks.<module>`` process."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: IO[bytes]) -> None:
        self._process = process
        self._stderr = stderr

    @classmethod
    async def start(cls, module: str, *args: str) -> Child:
        """Start ``python -m benchmarks.<module> *args``."""
        stderr = tempfile.TemporaryFile()  # noqa: SIM115
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            f"benchmarks.{module}",
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            # A large LBS read can make one line long; the default limit of
            # 64 KiB is for interactive use.
            limit=2**24,
        )
        return cls(process, stderr)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._process.pid

    async def send(self, command: str) -> None:
        """Write one command line."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{command}\n".encode())
        await self._process.stdin.drain()

    async def expect(
        self, event: str, timeout: float = REPLY_TIMEOUT
    ) -> dict[str, Any]:
        """Read lines until one whose ``event`` is *event*; return it.

        Raises:
            ChildError: the child exited, reported an error, or stayed silent
                for *timeout* seconds.
        """
        assert self._process.stdout is not None
        while True:
            try:
                line = await asyncio.wait_for(self._process.stdout.readline(), timeout)
            except asyncio.TimeoutError:
                raise ChildError(
                    self._failure(f"no {event!r} in {timeout} s")
                ) from None
            if not line:
                raise ChildError(self._failure(f"exited before {event!r}"))
            message: dict[str, Any] = json.loads(line)
            if message.get("event") == "error":
                raise ChildError(self._failure(str(message.get("error"))))
            if message.get("event") == event:
                return message

    def kill(self) -> None:
        """SIGKILL the child: no cleanup of any kind runs in it."""
        os.kill(self._process.pid, signal.SIGKILL)

    async def close(self) -> None:
        """Tell the child to exit, wait for it, and kill it if it does not."""
        try:
            if self._process.returncode is None:
                # A killed child has closed its stdin: nothing to tell it.
                with contextlib.suppress(OSError):
                    await self.send("exit")
                try:
                    await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT)
                except asyncio.TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        self._process.kill()
                    await self._process.wait()
        finally:
            self._stderr.close()

    def _failure(self, what: str) -> str:
        self._stderr.seek(0)
        tail = self._stderr.read().decode(errors="replace").splitlines()[-20:]
        log = "\n".join(tail)
        return f"child {self._process.pid} {what}; its stderr ends:\n{log}"


def emit(event: str, **fields: Any) -> None:
    """In a child: write one JSON line for the parent."""
    print(json.dumps({"event": event, **fields}), flush=True)


async def commands() -> asyncio.StreamReader:
    """In a child: stdin as an asyncio stream, so waiting for a command is idle."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    return reader


async def next_command(reader: asyncio.StreamReader) -> str:
    """In a child: the next command; ``exit`` once the parent has gone."""
    line = await reader.readline()
    return line.decode().strip() or "exit"
