"""A consumer in a process of its own, for tests that freeze or kill it.

Run as a script, it starts a client and speaks in lines::

    python tests/_consumer_proc.py URL SERVICE OPTIONS_JSON

``OPTIONS_JSON`` holds the client's keyword arguments, and ``"cluster": true``
when URL names a node of a Redis Cluster. On stdout it writes one
JSON object per line: ``{"event": "started", "consumer": ...}`` once running,
``{"event": "notification", ...}`` for each notification, and
``{"event": "done", "stream": ..., "error": ...}`` after each command
``done <name>`` read on stdin (``error`` is the name of the exception raised,
or null). After the command ``claim-expired`` (answered ``claiming``) it claims
every stream it hears expired and prints ``{"event": "claimed", "stream": ...,
"token": ...}``, or ``"error"`` instead of the token. ``exit``, or the end of
stdin, stops the client and the process.

Imported, it gives the parent's side: :class:`ConsumerProcess`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

SCRIPT = Path(__file__).resolve()

START_TIMEOUT = 30.0
"""Seconds a child gets to import and start its client, on a loaded machine."""

STOP_TIMEOUT = 10.0
"""Seconds a child gets to stop its client and exit when told to."""


class ConsumerProcess:
    """The parent's handle on one child consumer and what it has printed."""

    def __init__(self, process: asyncio.subprocess.Process, stderr: IO[bytes]) -> None:
        self._process = process
        self._stderr = stderr
        self.lines: list[dict[str, Any]] = []
        self.id = ""
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, url: str, service: str, **options: Any) -> ConsumerProcess:
        """Start a child consumer and wait until its client runs."""
        stderr = tempfile.TemporaryFile()  # noqa: SIM115
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(SCRIPT),
            url,
            service,
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
        child = cls(process, stderr)
        try:
            started = await child.expect(event="started", timeout=START_TIMEOUT)
        except BaseException:
            await child.stop()
            raise
        child.id = started["consumer"]
        return child

    async def _read(self) -> None:
        assert self._process.stdout is not None
        async for line in self._process.stdout:
            self.lines.append(json.loads(line))

    def printed(self, **fields: Any) -> list[dict[str, Any]]:
        """The lines printed so far whose fields include *fields*."""
        return [
            line
            for line in self.lines
            if all(line.get(key) == value for key, value in fields.items())
        ]

    async def expect(self, timeout: float = 5.0, **fields: Any) -> dict[str, Any]:
        """The first line whose fields include *fields*, waiting for it.

        Raises:
            AssertionError: none came within *timeout* seconds, or the child
                exited first; the message ends with the child's stderr.
        """
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.printed(**fields):
            if self._reader.done() or asyncio.get_running_loop().time() > deadline:
                msg = f"the child printed no {fields!r} within {timeout} s"
                raise AssertionError(f"{msg}; its stderr:\n{self._stderr_text()}")
            await asyncio.sleep(0.01)
        return self.printed(**fields)[0]

    async def send(self, command: str) -> None:
        """Write one command line to the child."""
        assert self._process.stdin is not None
        self._process.stdin.write(f"{command}\n".encode())
        await self._process.stdin.drain()

    def freeze(self) -> None:
        """SIGSTOP the child: it runs no code until :meth:`thaw`."""
        os.kill(self._process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT the child."""
        os.kill(self._process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the child: it cleans nothing up, like a crash."""
        os.kill(self._process.pid, signal.SIGKILL)

    async def stop(self) -> None:
        """Tell the child to exit and wait; kill it if it does not."""
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.thaw()
            try:
                await self.send("exit")
                await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT)
            except (OSError, asyncio.TimeoutError):
                with contextlib.suppress(ProcessLookupError):
                    self._process.kill()
                await self._process.wait()
        await asyncio.wait_for(self._reader, STOP_TIMEOUT)
        self._stderr.close()

    def _stderr_text(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


class _Child:
    """The child's side: a client, reporting and obeying over stdio."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.claim_expired = False

    async def report(self, notifications: Any) -> None:
        from rsc_async import RSCError, StreamExpired

        async for notification in notifications:
            payload = notification.payload
            _emit(
                "notification",
                type=notification.type.value,
                stream=payload.data_stream_name if payload else None,
                entry_id=payload.id_in_lbs if payload else None,
                token=getattr(notification, "fencing_token", None),
            )
            if self.claim_expired and isinstance(notification, StreamExpired):
                try:
                    token = await self.client.claim(payload)
                except RSCError as exc:
                    _emit("claimed", stream=payload.data_stream_name, error=repr(exc))
                else:
                    _emit("claimed", stream=payload.data_stream_name, token=token)

    async def obey(self) -> None:
        from rsc_async import RSCError

        loop = asyncio.get_running_loop()
        commands = asyncio.StreamReader()
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(commands), sys.stdin
        )
        while True:
            line = (await commands.readline()).decode().strip()
            verb, _, name = line.partition(" ")
            if verb in ("", "exit"):
                return
            if verb == "claim-expired":
                self.claim_expired = True
                _emit("claiming")
            elif verb == "done":
                try:
                    await self.client.done_stream(name)
                except RSCError as exc:
                    _emit("done", stream=name, error=type(exc).__name__)
                else:
                    _emit("done", stream=name, error=None)


async def _main(url: str, service: str, options: dict[str, Any]) -> None:
    import redis.asyncio
    from redis.asyncio.cluster import RedisCluster

    from rsc_async import RedisStreamClient

    r: redis.asyncio.Redis | RedisCluster
    if options.pop("cluster", False):
        r = RedisCluster.from_url(url)
    else:
        r = redis.asyncio.Redis.from_url(url)
    client = RedisStreamClient(r, service, **options)
    try:
        notifications = await client.init()
        _emit("started", consumer=client.id)
        child = _Child(client)
        reporter = asyncio.create_task(child.report(notifications))
        await child.obey()
        await client.done()
        await reporter
    finally:
        await client.done()
        await r.aclose()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    asyncio.run(_main(sys.argv[1], sys.argv[2], json.loads(sys.argv[3])))
