"""``python -m benchmarks [heartbeat|throughput|takeover|cluster|stall ...] [opts]``."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime
import logging
import os
import platform
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from rsc_async.testing import find_redis_server

from . import cluster, heartbeat, stall, takeover, throughput
from ._report import Line, render

BENCHMARKS = ("heartbeat", "throughput", "takeover", "cluster", "stall")


def integers(text: str) -> tuple[int, ...]:
    """A comma-separated list of integers, ``1_000`` style allowed."""
    return tuple(int(part) for part in text.split(","))


def floats(text: str) -> tuple[float, ...]:
    """A comma-separated list of numbers."""
    return tuple(float(part) for part in text.split(","))


def parser() -> argparse.ArgumentParser:
    """The command line; size flags left unset keep the defaults (or --quick's)."""
    cli = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmarks of rsc_async; prints one table.",
    )
    cli.add_argument(
        "benchmarks",
        nargs="*",
        metavar="BENCHMARK",
        help=f"any of {', '.join(BENCHMARKS)}; default all",
    )
    cli.add_argument(
        "--quick", action="store_true", help="small sizes for a smoke run (< 1 min)"
    )
    cli.add_argument("--redis-server", help="redis-server binary to start")
    group = cli.add_argument_group(
        "heartbeat",
        "--streams, --seconds and --hb-interval apply to cluster too; "
        "--hb-interval to stall as well",
    )
    group.add_argument("--streams", type=integers, help="K values, e.g. 1000,10000")
    group.add_argument("--seconds", type=float, help="measured window per K")
    group.add_argument("--hb-interval", type=float, help="lock TTL in seconds")
    group.add_argument("--chunk-locks", type=int, help="locks for the chunk sizes")
    group.add_argument("--chunk-sizes", type=integers, help="locks per script call")
    group.add_argument("--compare-locks", type=int, help="locks, Lua vs per key")
    group.add_argument("--repeats", type=int, help="ticks per chunk measurement")
    group = cli.add_argument_group("throughput")
    group.add_argument("--entries", type=int, help="LBS entries, N")
    group.add_argument("--workers", type=int, help="consumer processes")
    group.add_argument("--concurrency", type=int, help="done_stream calls at once")
    group.add_argument("--read-count", type=int, help="XREADGROUP COUNT")
    group = cli.add_argument_group(
        "takeover",
        "--held, --ttls, --rounds and --claim-concurrency apply to cluster too; "
        "its nodes run at the default hz. --held and --rounds apply to stall: "
        "streams per client, rounds per block",
    )
    group.add_argument("--held", type=int, help="streams the killed holder holds, H")
    group.add_argument("--ttls", type=floats, help="hb_interval values, e.g. 2,0.5")
    group.add_argument("--hz", type=integers, help="redis-server hz values")
    group.add_argument("--rounds", type=int, help="kills per TTL and hz")
    group.add_argument("--claim-concurrency", type=int, help="claims in flight")
    group = cli.add_argument_group("stall")
    group.add_argument(
        "--blocks", type=floats, help="loop blocks as multiples of hb_interval"
    )
    group.add_argument("--seed", type=int, help="seed of the heartbeat phases")
    return cli


def options_for(
    cls: Any, quick: dict[str, Any], args: argparse.Namespace, renames: dict[str, str]
) -> Any:
    """Defaults of *cls*, then --quick's overrides, then the flags given."""
    values: dict[str, Any] = dict(quick) if args.quick else {}
    for fld in dataclasses.fields(cls):
        flag = renames.get(fld.name, fld.name)
        given = getattr(args, flag, None)
        if given is not None:
            values[fld.name] = given
    return cls(**values)


def machine() -> str:
    """One line naming the machine and the software measured."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.partition(":")[2].strip()
                    break
    except OSError:
        pass
    return (
        f"{datetime.date.today()}  {os.cpu_count()} CPUs, {model}; "
        f"Python {platform.python_version()}; {redis_version()}"
    )


def redis_version(executable: str | None = None) -> str:
    """The version line of the redis-server the benchmarks start."""
    binary = executable or find_redis_server()
    if binary is None:
        return "no redis-server"
    reply = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False
    )
    words = reply.stdout.split()
    version = next((w for w in words if w.startswith("v=")), "v=?")
    return f"redis-server {version.removeprefix('v=')}"


async def run(selected: Sequence[str], args: argparse.Namespace) -> list[Line]:
    """Run the selected benchmarks in order; all their rows."""
    runners: dict[str, Callable[[], Awaitable[list[Line]]]] = {
        "heartbeat": lambda: heartbeat.run(
            options_for(heartbeat.Options, heartbeat.QUICK, args, {})
        ),
        "throughput": lambda: throughput.run(
            options_for(throughput.Options, throughput.QUICK, args, {})
        ),
        "takeover": lambda: takeover.run(
            options_for(takeover.Options, takeover.QUICK, args, {"streams": "held"})
        ),
        "cluster": lambda: cluster.run(
            options_for(cluster.Options, cluster.QUICK, args, {})
        ),
        "stall": lambda: stall.run(
            options_for(stall.Options, stall.QUICK, args, {"streams": "held"})
        ),
    }
    lines: list[Line] = []
    for name in selected:
        lines.extend(await runners[name]())
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run, print the table on stdout; progress and library warnings on stderr."""
    cli = parser()
    args = cli.parse_args(argv)
    unknown = [name for name in args.benchmarks if name not in BENCHMARKS]
    if unknown:
        cli.error(f"unknown benchmark {unknown[0]!r}; choose from {BENCHMARKS}")
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    selected = [name for name in BENCHMARKS if name in args.benchmarks] or list(
        BENCHMARKS
    )
    started = time.monotonic()
    # The machine may be shared: the load around the run says how much the
    # absolute figures can be trusted (the ratios less affected).
    load_before = os.getloadavg()[0]
    lines = asyncio.run(run(selected, args))
    load_after = os.getloadavg()[0]
    elapsed = time.monotonic() - started
    print(machine())
    command = f"python -m benchmarks {' '.join(sys.argv[1:])}".rstrip()
    print(
        f"{command}: {elapsed:.0f} s; 1-min load average "
        f"{load_before:.1f} before, {load_after:.1f} after"
    )
    print()
    print(render(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
