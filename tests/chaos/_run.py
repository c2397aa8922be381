"""One chaos run from start to verdict: server, consumers, producer, faults, check."""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import redis.asyncio as aioredis

from rsc_async import MUTEX_KEY_SEP, add_stream
from rsc_async.testing import RedisServer

from ._check import Findings, check
from ._faults import Chaos, plan_faults
from ._ledger import Ledger, retrying, text
from ._processes import ConsumerOptions, ConsumerPool

AOF = ("--appendonly", "yes", "--appendfsync", "always")
"""Every write reaches the disk before its reply: a restart loses nothing."""

READY_TIMEOUT = 90.0
"""Seconds the first consumers get to start (imports on a busy 2-core box)."""


class ChaosError(RuntimeError):
    """The run itself failed (a server that did not come back, a crash)."""


@dataclass(frozen=True)
class ChaosConfig:
    """The scale and the seed of a run.

    Args:
        seed: plans the faults and times the work; printed with the verdict.
        streams: data streams the producer hands out.
        consumers: consumer processes running at any time.
        messages: messages in each data stream.
        duration: seconds of faults; the producer hands out the streams over
            the first ``produce_share`` of them.
        work_ms: the longest time a consumer spends on one message.
        hb_interval: the consumers' lock TTL, in seconds.
        lbs_idle_time: the consumers' startup recovery threshold, in seconds.
        reconcile_interval: seconds between the consumers' sweeps for orphans.
        max_deliveries: the consumers' limit before an entry is set aside; high,
            since a stream may change hands many times in a run.
        produce_share: the share of ``duration`` over which streams are added.
        drain_timeout: seconds allowed, after the faults, to finish every stream.
    """

    seed: int = 1
    streams: int = 200
    consumers: int = 5
    messages: int = 5
    duration: float = 25.0
    work_ms: float = 200.0
    hb_interval: float = 0.5
    lbs_idle_time: float = 1.0
    reconcile_interval: float = 1.0
    max_deliveries: int = 50
    produce_share: float = 0.85
    drain_timeout: float = 120.0

    @property
    def service(self) -> str:
        """The service name, and the prefix of every key of the run."""
        return f"chaos{self.seed}"


@dataclass
class ChaosReport:
    """What happened in a run, and the checker's findings."""

    config: ChaosConfig
    findings: Findings
    kills: int = 0
    stalls: int = 0
    pubsub_kills: int = 0
    restarts: int = 0
    elapsed: float = 0.0
    exit_codes: dict[str, int | None] = field(default_factory=dict)
    exited_early: str = ""
    stuck: str = ""
    log_dir: str = ""

    def problems(self) -> list[str]:
        """Everything that went wrong; empty for a sound run."""
        problems = self.findings.problems()
        bad_exits = {n: c for n, c in self.exit_codes.items() if c != 0}
        if bad_exits:
            problems.append(f"consumers did not stop cleanly: {bad_exits}")
        if self.exited_early:
            problems.append(f"consumers exited on their own:\n{self.exited_early}")
        if self.stuck:
            problems.append(self.stuck)
        return problems

    def summary(self) -> str:
        """The verdict in one line a person can read."""
        f, c = self.findings, self.config
        return (
            f"chaos: seed={c.seed} streams={f.streams} messages={f.messages} "
            f"consumers={c.consumers} duration={c.duration:g}s kills={self.kills} "
            f"stalls={self.stalls} pubsub_kills={self.pubsub_kills} "
            f"restarts={self.restarts} lost={len(f.lost)} "
            f"duplicates={len(f.duplicates)} unrecorded={len(f.unrecorded)} "
            f"unwritten={len(f.unprocessed)} "
            f"stale_finishes={len(f.stale_finishes)} "
            f"stale_writes_accepted={len(f.stale_accepted)} "
            f"stale_writes_rejected={f.rejected} "
            f"lock_lost={f.counters.get('LockLostError', 0)} "
            f"takeovers={len(f.takeovers)} takeover_p99={f.takeover_p99():.2f}s "
            f"max={f.takeover_max():.2f}s elapsed={self.elapsed:.1f}s"
        )


async def produce(
    redis: aioredis.Redis,
    ledger: Ledger,
    config: ChaosConfig,
    gate: anyio.Lock,
    start: float,
    expected: dict[str, list[str]],
) -> None:
    """Hand out the run's data streams, evenly over the production window.

    Each stream gets its messages first, then its LBS entry. Every stream is
    added while holding *gate*, so no server restart lands mid-command.
    """
    window = config.duration * config.produce_share
    for index in range(config.streams):
        due = start + window * index / config.streams
        await anyio.sleep(max(0.0, due - time.monotonic()))
        name = ledger.data_stream(index)
        async with gate:
            async with redis.pipeline(transaction=True) as pipe:
                for number in range(config.messages):
                    pipe.xadd(name, {"n": number})
                ids = await pipe.execute()
            await add_stream(redis, config.service, name, info={"index": index})
        expected[name] = [i.decode() if isinstance(i, bytes) else i for i in ids]


async def wait_until_finished(
    admin: aioredis.Redis, config: ChaosConfig, pool: ConsumerPool
) -> None:
    """Poll until the LBS is empty and nothing is pending.

    Raises:
        TimeoutError: work was left after ``drain_timeout`` seconds.
        RuntimeError: a consumer exited on its own meanwhile.
    """
    lbs, group = f"{config.service}-input", f"{config.service}-group"
    deadline = time.monotonic() + config.drain_timeout
    while True:
        left = await retrying(lambda: admin.xlen(lbs))
        summary = await retrying(lambda: admin.xpending(lbs, group))
        pending = int(summary["pending"])
        if not left and not pending:
            return
        if pool.exited_on_their_own():
            msg = f"consumers exited on their own:\n{pool.describe_exits()}"
            raise RuntimeError(msg)
        if time.monotonic() > deadline:
            msg = (
                f"{left} LBS entries and {pending} pending were left "
                f"{config.drain_timeout} s after the faults ended"
            )
            raise TimeoutError(msg)
        await anyio.sleep(0.2)


async def describe_leftovers(admin: aioredis.Redis, service: str) -> str:
    """The pending LBS entries: who has them, how idle, and their locks."""
    lbs, group = f"{service}-input", f"{service}-group"
    rows = await admin.xpending_range(lbs, group, "-", "+", 10)
    lines = []
    for row in rows:
        entry_id = text(row["message_id"])
        found = await admin.xrange(lbs, entry_id, entry_id)
        fields = (found[0][1] or {}) if found else {}
        name = text(fields.get("lbs-input", "(deleted)"))
        locks = await admin.keys(f"*{MUTEX_KEY_SEP}{entry_id}")
        ttls = [await admin.pttl(key) for key in locks]
        lines.append(
            f"{entry_id} {name} consumer={text(row['consumer'])} "
            f"idle={text(row['time_since_delivered'])}ms "
            f"deliveries={text(row['times_delivered'])} lock_ttls={ttls}"
        )
    return "pending: " + ("; ".join(lines) or "none")


async def run_chaos(config: ChaosConfig, *, keep_logs: bool = False) -> ChaosReport:
    """Run one chaos scenario against a redis-server of its own; judge it.

    The consumers' logs are kept in a temporary directory, named in the report,
    when the run has problems or *keep_logs* is set; otherwise they are removed.
    """
    started = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="rsc-chaos-"))
    server = RedisServer(extra_args=AOF)
    await anyio.to_thread.run_sync(server.start)
    admin = aioredis.Redis.from_url(server.url, decode_responses=True)
    producer = aioredis.Redis.from_url(server.url)
    ledger = Ledger(admin, config.service)
    options = ConsumerOptions(
        url=server.url,
        service=config.service,
        seed=config.seed,
        work_ms=config.work_ms,
        hb_interval=config.hb_interval,
        lbs_idle_time=config.lbs_idle_time,
        reconcile_interval=config.reconcile_interval,
        max_deliveries=config.max_deliveries,
    )
    pool = ConsumerPool(options, log_dir)
    report = ChaosReport(config, Findings(), log_dir=str(log_dir))
    try:
        report = await _drive(config, server, admin, producer, ledger, pool, report)
    except Exception as exc:
        msg = f"the chaos run broke down: {exc!r}; consumer logs kept in {log_dir}"
        raise ChaosError(msg) from exc
    finally:
        pool.kill_all()
        await admin.aclose()
        await producer.aclose()
        await anyio.to_thread.run_sync(server.stop)
        report.elapsed = time.monotonic() - started
    if not keep_logs and not report.problems():
        shutil.rmtree(log_dir, ignore_errors=True)
    return report


async def _drive(
    config: ChaosConfig,
    server: RedisServer,
    admin: aioredis.Redis,
    producer: aioredis.Redis,
    ledger: Ledger,
    pool: ConsumerPool,
    report: ChaosReport,
) -> ChaosReport:
    rng = random.Random(config.seed)
    faults = plan_faults(rng, config.duration, config.hb_interval)
    for _ in range(config.consumers):
        pool.start()
    await pool.wait_ready(ledger, READY_TIMEOUT)

    gate = anyio.Lock()
    chaos = Chaos(server, admin, producer, ledger, pool, rng, gate)
    expected: dict[str, list[str]] = {}
    start = time.monotonic()
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(produce, producer, ledger, config, gate, start, expected)
        tasks.start_soon(chaos.run, faults, start)
    try:
        await wait_until_finished(admin, config, pool)
    except TimeoutError as exc:
        report.stuck = f"{exc}; {await describe_leftovers(admin, config.service)}"
    report.exited_early = pool.describe_exits()
    # A replacement started near the end may not handle SIGTERM yet.
    await pool.wait_ready(ledger, READY_TIMEOUT)
    report.exit_codes = await pool.stop_all()
    report.findings = await check(ledger, admin, expected, chaos.kills)
    (Path(report.log_dir) / "faults.log").write_text("\n".join(chaos.journal) + "\n")
    report.kills = len(chaos.kills)
    report.stalls = chaos.stalls
    report.pubsub_kills = chaos.pubsub_kills
    report.restarts = chaos.restarts
    return report
