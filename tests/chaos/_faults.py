"""The faults of a chaos run: planned from the seed, applied on schedule."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Literal

import anyio
import redis.asyncio as aioredis

from rsc_async.testing import RedisServer

from ._ledger import Ledger, retrying, text
from ._processes import ConsumerPool, ConsumerProcess

FaultKind = Literal["kill", "stall", "pubsub", "restart"]

EVERY: dict[FaultKind, float] = {
    "kill": 2.5,
    "stall": 5.0,
    "pubsub": 5.0,
    "restart": 10.0,
}
"""Mean seconds between two faults of each kind."""

STALL_TTLS = (4.0, 8.0)
"""How long a stall lasts, in lock TTLs: always longer than one."""


@dataclass(frozen=True)
class Fault:
    """One fault, *at* seconds after the run's start."""

    at: float
    kind: FaultKind
    length: float = 0.0


@dataclass(frozen=True)
class Kill:
    """A consumer was SIGKILLed at a wall-clock time."""

    consumer: str
    at: float


def plan_faults(rng: random.Random, duration: float, ttl: float) -> list[Fault]:
    """The faults of a run of *duration* seconds, in time order.

    Each kind happens about once per :data:`EVERY` seconds and at least once.
    """
    faults = []
    for kind, every in EVERY.items():
        for _ in range(max(1, round(duration / every))):
            length = rng.uniform(*STALL_TTLS) * ttl if kind == "stall" else 0.0
            faults.append(Fault(rng.uniform(0.5, duration), kind, length))
    return sorted(faults, key=lambda fault: fault.at)


@dataclass
class Chaos:
    """Applies faults to the consumers and the server.

    Args:
        server: the server to restart; AOF keeps its data.
        admin: a client of that server, for ``CLIENT KILL``.
        producer: the producer's client.
        ledger: tells which consumers have started.
        pool: the consumers to kill and stall.
        rng: picks the victims.
        gate: held while the server restarts, so the producer never has a
            command in flight then (a retried XADD could add a stream twice).
    """

    server: RedisServer
    admin: aioredis.Redis
    producer: aioredis.Redis
    ledger: Ledger
    pool: ConsumerPool
    rng: random.Random
    gate: anyio.Lock
    kills: list[Kill] = field(default_factory=list)
    stalls: int = 0
    pubsub_kills: int = 0
    connections_cut: int = 0
    restarts: int = 0
    journal: list[str] = field(default_factory=list)
    """One line per fault applied, wall-clock time first, for reading logs."""

    async def run(self, faults: list[Fault], start: float) -> None:
        """Apply *faults*, each at its time after *start* (``time.monotonic``)."""
        async with anyio.create_task_group() as stalls:
            for fault in faults:
                await anyio.sleep(max(0.0, start + fault.at - time.monotonic()))
                if fault.kind == "kill":
                    await self._kill()
                elif fault.kind == "stall":
                    victim = await self._victim()
                    if victim is not None:
                        victim.stall()
                        self.stalls += 1
                        self._note(f"stall {victim.client_id} {fault.length:.2f}s")
                        stalls.start_soon(self._resume_later, victim, fault.length)
                elif fault.kind == "pubsub":
                    await self._cut_subscriptions()
                else:
                    await self._restart()

    async def _victim(self) -> ConsumerProcess | None:
        ready = await retrying(lambda: self.admin.hkeys(self.ledger.ready))
        return self.pool.pick(self.rng, set(map(text, ready)))

    async def _kill(self) -> None:
        victim = await self._victim()
        if victim is not None:
            self.kills.append(Kill(victim.client_id, self.pool.kill(victim)))
            self._note(f"kill {victim.client_id}")

    def _note(self, what: str) -> None:
        self.journal.append(f"{time.time():.3f} {what}")

    async def _resume_later(self, victim: ConsumerProcess, length: float) -> None:
        await anyio.sleep(length)
        if victim.exit_code() is None and victim.stalled:
            victim.resume()
            self._note(f"resume {victim.client_id}")

    async def _cut_subscriptions(self) -> None:
        cut = await retrying(lambda: self.admin.client_kill_filter(_type="pubsub"))
        self.pubsub_kills += 1
        self.connections_cut += int(cut)
        self._note(f"pubsub kill ({cut} connections)")

    async def _restart(self) -> None:
        async with self.gate:
            await anyio.to_thread.run_sync(self.server.restart)
            # Pooled connections to the old process fail on first use; the
            # producer must never see that, since it cannot tell whether a
            # failed XADD went through.
            await self.producer.connection_pool.disconnect()
            await self.admin.connection_pool.disconnect()
        self.restarts += 1
        self._note("restart")
