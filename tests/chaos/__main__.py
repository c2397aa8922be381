"""Run one chaos scenario at any scale: ``python -m tests.chaos --help``.

Prints the one-line verdict, then every problem found; exits 1 on a problem.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import anyio

from ._run import ChaosConfig, run_chaos


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: the run's knobs, and what to do with the verdict."""
    default = ChaosConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tests.chaos",
        description="Consumers killed, stalled and cut off while the server "
        "restarts; then proof that no stream was lost or finished twice.",
    )
    parser.add_argument("--seed", type=int, default=default.seed)
    parser.add_argument("--streams", type=int, default=default.streams)
    parser.add_argument("--consumers", type=int, default=default.consumers)
    parser.add_argument("--messages", type=int, default=default.messages)
    parser.add_argument(
        "--duration",
        type=float,
        default=default.duration,
        help="seconds of faults (default %(default)s)",
    )
    parser.add_argument(
        "--work-ms",
        type=float,
        default=default.work_ms,
        help="longest time spent on one message (default %(default)s)",
    )
    parser.add_argument(
        "--summary-file", type=Path, help="also write the verdict line here"
    )
    parser.add_argument(
        "--keep-logs",
        action="store_true",
        help="keep the consumers' logs even when the run is sound",
    )
    args = parser.parse_args(argv)
    return args


def main() -> None:
    """Run, print the verdict, exit with its status."""
    args = parse_args()
    config = ChaosConfig(
        seed=args.seed,
        streams=args.streams,
        consumers=args.consumers,
        messages=args.messages,
        duration=args.duration,
        work_ms=args.work_ms,
    )
    report = anyio.run(partial(run_chaos, config, keep_logs=args.keep_logs))
    line = report.summary()
    print(line, flush=True)
    if args.summary_file is not None:
        args.summary_file.write_text(line + "\n")
    for stream, why in report.findings.unrecorded.items():
        print(f"unrecorded: {stream}: {why}", file=sys.stderr)
    problems = report.problems()
    for problem in problems:
        print(f"problem: {problem}", file=sys.stderr)
    if problems or args.keep_logs:
        print(f"consumer logs: {report.log_dir}", file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
