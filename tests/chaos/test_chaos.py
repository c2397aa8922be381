"""Consumers killed, stalled and cut off while the server restarts lose nothing.

One run at CI scale (see ``conftest.py`` for the knobs): five consumer
processes work through 200 data streams while the driver SIGKILLs and
SIGSTOPs them, kills their keyspace subscriptions and restarts the AOF-backed
server. The verdict line is printed and shown in the terminal summary.
"""

from __future__ import annotations

import pytest

from rsc_async.testing import find_redis_server

from ._run import ChaosConfig, run_chaos

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        find_redis_server() is None,
        reason="the chaos run starts and restarts its own redis-server; none found",
    ),
]


async def test_every_stream_is_finished_exactly_once_under_chaos(
    chaos_config: ChaosConfig, chaos_verdict: list[str]
) -> None:
    """No stream is lost or finished twice, and no fenced-out write is accepted."""
    report = await run_chaos(chaos_config)
    line = report.summary()
    print(line)
    chaos_verdict.append(line)

    problems = report.problems()
    logs = f"\nconsumer logs kept in {report.log_dir}" if problems else ""
    assert [] == problems, f"{line}{logs}"
    assert 0 < report.kills
    assert 0 < report.restarts
