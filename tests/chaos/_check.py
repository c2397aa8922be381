"""What a chaos run must have achieved, read back from Redis after it."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import redis.asyncio as aioredis

from ._faults import Kill
from ._ledger import Holding, Ledger, Write, retrying


@dataclass
class Findings:
    """The checker's verdict on one run."""

    streams: int = 0
    messages: int = 0
    lost: list[str] = field(default_factory=list)
    duplicates: dict[str, list[Holding]] = field(default_factory=dict)
    unrecorded: dict[str, str] = field(default_factory=dict)
    """Streams finished with no record, and why the record is missing."""
    unprocessed: dict[str, list[str]] = field(default_factory=dict)
    stale_accepted: list[Write] = field(default_factory=list)
    """Writes the ledger's log shows accepted under an older token than one
    accepted before for the stream: a check of the ledger's own fencing."""
    stale_finishes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Streams finished under a token older than the newest claim of them:
    (the finisher's token, the newest)."""
    unclaimed_writes: list[Write] = field(default_factory=list)
    rejected: int = 0
    anomalies: list[str] = field(default_factory=list)
    lbs_left: int = 0
    pending_left: int = 0
    dead_letters: int = 0
    takeovers: list[float] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """One sentence per broken promise; empty when the run is sound."""
        checks = [
            (self.lost, f"{len(self.lost)} streams lost: {self.lost[:5]}"),
            (
                self.duplicates,
                f"{len(self.duplicates)} streams finished more than once: "
                f"{dict(list(self.duplicates.items())[:3])}",
            ),
            (
                self.unprocessed,
                f"{len(self.unprocessed)} streams have messages never written: "
                f"{dict(list(self.unprocessed.items())[:3])}",
            ),
            (
                self.stale_accepted,
                f"{len(self.stale_accepted)} stale writes accepted: "
                f"{self.stale_accepted[:3]}",
            ),
            (
                self.stale_finishes,
                f"{len(self.stale_finishes)} streams finished by a stale holder, "
                f"(token, newest claimed): {list(self.stale_finishes.items())[:3]}",
            ),
            (
                self.unclaimed_writes,
                f"{len(self.unclaimed_writes)} writes under tokens never given to "
                f"their writer: {self.unclaimed_writes[:3]}",
            ),
            (self.anomalies, f"anomalies: {self.anomalies[:5]}"),
            (self.lbs_left, f"{self.lbs_left} entries left in the LBS"),
            (self.pending_left, f"{self.pending_left} entries left pending"),
            (self.dead_letters, f"{self.dead_letters} entries dead-lettered"),
        ]
        return [text for failed, text in checks if failed]

    def takeover_p99(self) -> float:
        """The 99th percentile of the kill-to-claim times, 0 when none."""
        return percentile(self.takeovers, 0.99)

    def takeover_max(self) -> float:
        """The longest kill-to-claim time, 0 when none."""
        return max(self.takeovers, default=0.0)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of *values*; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


async def check(
    ledger: Ledger,
    admin: aioredis.Redis,
    expected: Mapping[str, Sequence[str]],
    kills: Sequence[Kill],
) -> Findings:
    """Read the ledger and the service's keys back and judge the run.

    Args:
        ledger: the run's records.
        admin: a client of the server, decoding responses.
        expected: each data stream produced, with the ids of its messages.
        kills: the consumers killed, and when.
    """
    service = ledger.service
    findings = Findings(
        streams=len(expected), messages=sum(len(ids) for ids in expected.values())
    )
    claims = await ledger.holdings(ledger.claims)
    finished = await ledger.holdings(ledger.finished)
    _judge_finishes(
        findings,
        expected,
        finished,
        await ledger.holdings(ledger.finishing),
        {holding.token for holding in await ledger.holdings(ledger.unknown)},
        kills,
    )
    for stream, ids in expected.items():
        written = set(await retrying(partial(admin.hkeys, ledger.accepted(stream))))
        missing = [i for i in ids if i not in written]
        if missing:
            findings.unprocessed[stream] = missing
    _judge_writes(findings, await ledger.accepted_writes(), claims)
    _judge_finishers(findings, finished, claims)
    findings.rejected = len(await ledger.rejected_writes())
    findings.anomalies = await ledger.anomaly_list()
    findings.counters = await ledger.counters()
    lbs = f"{service}-input"
    findings.lbs_left = await retrying(lambda: admin.xlen(lbs))
    summary = await retrying(lambda: admin.xpending(lbs, f"{service}-group"))
    findings.pending_left = int(summary["pending"])
    findings.dead_letters = await retrying(lambda: admin.xlen(f"{service}-dead"))
    findings.takeovers = takeover_times(claims, finished, kills)
    return findings


def _judge_finishes(
    findings: Findings,
    expected: Mapping[str, Sequence[str]],
    finished: Sequence[Holding],
    finishing: Sequence[Holding],
    unknown: set[int],
    kills: Sequence[Kill],
) -> None:
    """Sort each stream into finished once, more than once, unrecorded or lost.

    A consumer killed between done_stream and its record, or whose done_stream
    met a failing Redis, cannot say whether it finished the stream; such a
    stream with no record is "unrecorded", not lost, but only if that consumer
    really had started to finish it.
    """
    finishes: dict[str, list[Holding]] = defaultdict(list)
    for holding in finished:
        finishes[holding.stream].append(holding)
    started: dict[str, list[Holding]] = defaultdict(list)
    for holding in finishing:
        started[holding.stream].append(holding)
    killed_at = {kill.consumer: kill.at for kill in kills}
    for stream in expected:
        done = finishes.get(stream, [])
        if len(done) > 1:
            findings.duplicates[stream] = done
        elif not done:
            reasons = [
                f"done_stream of {h.consumer} (token {h.token}) met a failing Redis"
                if h.token in unknown
                else f"{h.consumer} was killed during done_stream (token {h.token})"
                for h in started.get(stream, [])
                if h.token in unknown or killed_at.get(h.consumer, -1.0) >= h.at
            ]
            if reasons:
                findings.unrecorded[stream] = "; ".join(reasons)
            else:
                findings.lost.append(stream)


def _judge_writes(
    findings: Findings, writes: Sequence[Write], claims: Sequence[Holding]
) -> None:
    """Replay the accepted writes in order: none may go under an older token."""
    given = {(c.stream, c.token): c.consumer for c in claims}
    highest: dict[str, int] = {}
    for write in writes:
        if write.token < highest.get(write.stream, 0):
            findings.stale_accepted.append(write)
        highest[write.stream] = max(write.token, highest.get(write.stream, 0))
        if given.get((write.stream, write.token)) != write.consumer:
            findings.unclaimed_writes.append(write)


def _judge_finishers(
    findings: Findings, finished: Sequence[Holding], claims: Sequence[Holding]
) -> None:
    """Each stream must be finished under the newest token it was claimed with.

    A claim succeeds only while the entry is pending, and finishing deletes
    the entry, so no claim comes after a finish: a finish under an older
    token means a holder that had lost the stream finished it.
    """
    newest: dict[str, int] = {}
    for claim in claims:
        newest[claim.stream] = max(claim.token, newest.get(claim.stream, 0))
    for holding in finished:
        if holding.token < newest.get(holding.stream, 0):
            findings.stale_finishes[holding.stream] = (
                holding.token,
                newest[holding.stream],
            )


def takeover_times(
    claims: Sequence[Holding], finished: Sequence[Holding], kills: Sequence[Kill]
) -> list[float]:
    """Seconds from each kill to the next claim of each stream the victim held.

    A stream counts as held by the victim when the victim's claim was the last
    one before the kill and the victim had not finished it by then.
    """
    by_stream: dict[str, list[Holding]] = defaultdict(list)
    for claim in claims:
        by_stream[claim.stream].append(claim)
    finished_at = {holding.token: holding.at for holding in finished}
    times = []
    for kill in kills:
        for holdings in by_stream.values():
            before = [h for h in holdings if h.at <= kill.at]
            after = [h.at for h in holdings if h.at > kill.at]
            if not before or not after:
                continue
            last = max(before, key=lambda h: h.at)
            if last.consumer != kill.consumer:
                continue
            if finished_at.get(last.token, kill.at + 1) <= kill.at:
                continue
            times.append(min(after) - kill.at)
    return times
