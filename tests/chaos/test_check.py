"""The chaos checker catches the broken promises it is there to catch."""

from __future__ import annotations

from ._check import Findings, _judge_finishers, _judge_writes
from ._ledger import Holding, Write


def _held(token: int, consumer: str, at: float) -> Holding:
    return Holding("session-1", token, consumer, at)


def test_a_finish_under_an_older_token_than_the_newest_claim_is_found() -> None:
    """A stream finished by the holder it was taken from is a stale finish."""
    findings = Findings()
    claims = [_held(3, "a", 1.0), _held(7, "b", 2.0)]

    _judge_finishers(findings, [_held(3, "a", 3.0)], claims)

    assert {"session-1": (3, 7)} == findings.stale_finishes
    assert findings.problems()


def test_a_finish_by_the_newest_holder_is_sound() -> None:
    """The newest claim's holder finishing the stream breaks nothing."""
    findings = Findings()
    claims = [_held(3, "a", 1.0), _held(7, "b", 2.0)]

    _judge_finishers(findings, [_held(7, "b", 3.0)], claims)

    assert [] == findings.problems()


def test_a_write_under_a_token_never_given_to_its_writer_is_found() -> None:
    """A write whose token was claimed by someone else is reported."""
    findings = Findings()
    claims = [_held(3, "a", 1.0)]

    _judge_writes(findings, [Write("session-1", "1-0", 3, "b")], claims)

    assert [Write("session-1", "1-0", 3, "b")] == findings.unclaimed_writes
