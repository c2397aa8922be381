"""Scale and seed of the chaos run under pytest, and its verdict in the report.

``python -m pytest tests/chaos --chaos-seed 7 --chaos-streams 2000`` sets them
on the command line (pytest reads these options only when ``tests/chaos`` is
named on it); ``CHAOS_SEED=7 CHAOS_STREAMS=2000 python -m pytest -q`` works
from anywhere. ``CHAOS_SUMMARY=<path>`` also writes the verdict line to a file.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from ._run import ChaosConfig

OPTIONS = {
    "seed": int,
    "streams": int,
    "consumers": int,
    "messages": int,
    "duration": float,
    "work_ms": float,
}
"""The knobs of :class:`ChaosConfig` open to the command line and environment."""

SUMMARIES = pytest.StashKey[list[str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--chaos-seed``, ``--chaos-streams`` and the other knobs."""
    group = parser.getgroup("chaos", "chaos run (tests/chaos)")
    for name, kind in OPTIONS.items():
        flag = "--chaos-" + name.replace("_", "-")
        group.addoption(
            flag,
            type=kind,
            default=None,
            help=f"chaos run: {name} (env CHAOS_{name.upper()})",
        )


def pytest_configure(config: pytest.Config) -> None:
    """Make room for the verdicts of the runs."""
    config.stash[SUMMARIES] = []


def _configured(config: pytest.Config) -> ChaosConfig:
    """The run's configuration: command line, else environment, else defaults."""
    values: dict[str, Any] = {}
    for name, kind in OPTIONS.items():
        given = config.getoption("chaos_" + name, default=None)
        if given is None and f"CHAOS_{name.upper()}" in os.environ:
            given = kind(os.environ[f"CHAOS_{name.upper()}"])
        if given is not None:
            values[name] = given
    return ChaosConfig(**values)


def pytest_collection_modifyitems(
    config: pytest.Config, items: list[pytest.Item]
) -> None:
    """Give a chaos run time in proportion to its scale, past the usual timeout."""
    chaos = _configured(config)
    seconds = 300 + 3 * chaos.duration + chaos.streams / 10
    for item in items:
        if "chaos_config" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.timeout(seconds))


@pytest.fixture
def chaos_config(pytestconfig: pytest.Config) -> ChaosConfig:
    """The run's configuration: command line, else environment, else defaults."""
    return _configured(pytestconfig)


@pytest.fixture
def chaos_verdict(pytestconfig: pytest.Config) -> list[str]:
    """Where a test leaves its verdict line for the terminal summary."""
    return pytestconfig.stash[SUMMARIES]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """Show each chaos verdict at the end of the run, even without ``-s``."""
    summaries = config.stash.get(SUMMARIES, [])
    if summaries:
        terminalreporter.section("chaos")
        for line in summaries:
            terminalreporter.write_line(line)
    path = os.environ.get("CHAOS_SUMMARY")
    if summaries and path:
        with open(path, "w") as file:
            file.write("\n".join(summaries) + "\n")
