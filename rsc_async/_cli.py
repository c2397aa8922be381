"""The ``rsc-async`` command: look at a service, add streams, requeue dead
letters, and watch a failover.

Exit codes: 0 ok; 1 Redis unreachable or failing, or a requested dead letter
could not be requeued; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from importlib import metadata

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from ._cli_connection import Connection, ConnectionFlagError, connection_flags
from ._cli_dead import DEAD_ID_PATTERN, run_dead
from ._cli_demo import DemoError, run_demo
from ._cli_render import (
    MAX_WIDTH,
    PROG,
    HelpFormatter,
    complain,
    render_human,
    render_json,
    render_plain,
    terminal_width,
)
from ._cli_status import read_status
from ._cli_table import truncate
from ._errors import RedisCommandError
from ._models import MUTEX_KEY_SEP
from ._producer import add_stream
from .testing import RedisUnavailableError, redis_url

CLEAR_SCREEN = "\x1b[H\x1b[2J"
DEFAULT_WATCH = 2.0
DEFAULT_LIMIT = 1000

Command = Callable[[aioredis.Redis, argparse.Namespace], Awaitable[int]]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code.

    Args:
        argv: the arguments after the program name; default ``sys.argv[1:]``.
    """
    args = build_parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except ConnectionFlagError as exc:
        complain(str(exc))
        return 2
    except KeyboardInterrupt:
        # Ctrl-C is how --watch is meant to end.
        return 0 if getattr(args, "watch", None) is not None else 130
    except BrokenPipeError:
        # The reader went away (`| head`); say nothing more to it.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    return code


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand, with the connection flags of redis-cli."""
    connection = connection_flags()
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Inspect and operate the services of rsc_async on Redis.",
        epilog=f"The connection flags go before or after COMMAND; see `{PROG} "
        "COMMAND --help`. Exit codes: 0 ok, 1 Redis unreachable or an "
        "operation failed, 2 usage.",
        parents=[connection],
        formatter_class=HelpFormatter,
        add_help=False,
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _status_parser(_subcommand(commands, connection, "status", _STATUS_HELP))
    _add_parser(_subcommand(commands, connection, "add", _ADD_HELP))
    _dead_parser(_subcommand(commands, connection, "dead", _DEAD_HELP))
    _demo_parser(_subcommand(commands, connection, "demo", _DEMO_HELP))
    return parser


_STATUS_HELP = "who holds which data stream, the consumers, the dead letters"
_ADD_HELP = "add a data stream to a service; prints its LBS entry id"
_DEAD_HELP = "list dead letters, or requeue them into the LBS"
_DEMO_HELP = "watch three consumers on a local Redis survive a crash"


def _subcommand(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    connection: argparse.ArgumentParser,
    name: str,
    summary: str,
) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        parents=[connection],
        formatter_class=HelpFormatter,
        add_help=False,
    )
    parser.add_argument("--help", action="help", help="show this help and exit")
    return parser


def _status_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE")
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document for machines"
    )
    parser.add_argument(
        "--watch",
        nargs="?",
        type=_positive(float),
        const=DEFAULT_WATCH,
        metavar="SECONDS",
        help=f"refresh every SECONDS (default {DEFAULT_WATCH:g}) until Ctrl-C",
    )
    _limit_flag(parser)
    parser.set_defaults(run=_with_redis(_status))


def _add_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE")
    parser.add_argument("name", metavar="NAME", type=_data_stream_name)
    parser.add_argument(
        "--info",
        metavar="KEY=VALUE",
        type=_info_item,
        action="append",
        default=[],
        help="an item of the stream's Info, echoed to its consumer; repeatable",
    )
    parser.set_defaults(run=_with_redis(_add))


def _dead_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("service", metavar="SERVICE")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--requeue",
        metavar="ID",
        type=_dead_id,
        action="append",
        help="put this dead letter back into the LBS; repeatable",
    )
    which.add_argument(
        "--all",
        action="store_true",
        help="requeue every dead letter whose lbs-input parses",
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON document for machines"
    )
    _limit_flag(parser)
    parser.set_defaults(run=_with_redis(run_dead))


def _demo_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Three consumers (child processes) share six data streams; one is "
        "killed with SIGKILL and the others take its streams over. It uses the "
        "server of -u/-h/-p, else REDIS_URL, else starts a redis-server of "
        "its own."
    )
    parser.add_argument(
        "--hb-interval",
        type=_positive(float),
        default=1.0,
        metavar="SECONDS",
        help="lock TTL of the consumers; between 0.2 and 20 (default 1.0)",
    )
    parser.set_defaults(run=_demo)


def _limit_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--limit",
        type=_positive(int),
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"read at most N entries per stream (default {DEFAULT_LIMIT})",
    )


def _positive(kind: type[float] | type[int]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    return parse


def _data_stream_name(text: str) -> str:
    if not text or MUTEX_KEY_SEP in text:
        msg = f"must be non-empty and without {MUTEX_KEY_SEP}, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def _info_item(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _dead_id(text: str) -> str:
    if not re.fullmatch(DEAD_ID_PATTERN, text):
        msg = f"expected a stream entry id like 1700000000000-0, got {text!r}"
        raise argparse.ArgumentTypeError(msg)
    return text


def _version() -> str:
    try:
        return metadata.version("rsc-async")
    except metadata.PackageNotFoundError:
        return "unknown"


def _with_redis(command: Command) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_connected(command, args))

    return run


async def _connected(command: Command, args: argparse.Namespace) -> int:
    connection = Connection.from_args(args)
    redis = connection.redis()
    try:
        return await command(redis, args)
    except (redis_errors.RedisError, RedisCommandError) as exc:
        complain(_redis_problem(exc, connection.address))
        return 1
    finally:
        with contextlib.suppress(redis_errors.RedisError, OSError):
            await redis.aclose()


def _redis_problem(exc: Exception, address: str) -> str:
    """One line of what went wrong; a long address gives way to the reason."""
    cause = exc.__cause__ if isinstance(exc, RedisCommandError) else exc
    text = " ".join(str(cause or exc).split())
    if isinstance(
        cause, redis_errors.AuthenticationError | redis_errors.NoPermissionError
    ):
        before, after = "Redis at ", f" refused us: {text}"
    elif isinstance(cause, redis_errors.ConnectionError | redis_errors.TimeoutError):
        before, after = "cannot reach Redis at ", f": {_network_reason(cause, text)}"
    else:
        before, after = "Redis at ", f" failed: {text}"
    room = MAX_WIDTH - len(f"{PROG}: {before}{after}")
    return before + truncate(address, max(room, 20), cut_end=False) + after


def _network_reason(exc: BaseException, text: str) -> str:
    """Why a connection failed, without the address redis-py repeats."""
    seen: BaseException | None = exc
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, socket.gaierror) and seen.strerror:
            return seen.strerror
        if isinstance(seen, OSError) and seen.errno and seen.errno > 0:
            return os.strerror(seen.errno)
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return re.sub(r"^Error (-?\d+ )?connecting to \S+\. ", "", text).rstrip(".")


async def _status(redis: aioredis.Redis, args: argparse.Namespace) -> int:
    tty = sys.stdout.isatty()
    while True:
        status = await read_status(redis, args.service, args.limit)
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if args.json:
            document = {"time": now, **status.to_json()}
            text = render_json(document, compact=args.watch is not None)
        elif tty:
            text = render_human(status, terminal_width())
        else:
            text = render_plain(status)
        if args.watch is not None and tty:
            header = f"every {args.watch:g}s: {PROG} status {args.service}  {now}"
            text = f"{CLEAR_SCREEN}{truncate(header, terminal_width())}\n\n{text}"
        elif args.watch is not None and not args.json:
            text = f"# {now}\n{text}\n"
        sys.stdout.write(text)
        sys.stdout.flush()
        if args.watch is None:
            return 0
        await asyncio.sleep(args.watch)


async def _add(redis: aioredis.Redis, args: argparse.Namespace) -> int:
    entry_id = await add_stream(redis, args.service, args.name, info=dict(args.info))
    print(entry_id)
    return 0


def _demo(args: argparse.Namespace) -> int:
    if not 0.2 <= args.hb_interval <= 20:
        complain(f"--hb-interval must be between 0.2 and 20, got {args.hb_interval!r}")
        return 2
    with contextlib.ExitStack() as stack:
        if Connection.names_a_server(args):
            connection = Connection.from_args(args)
        else:
            try:
                connection = Connection(url=stack.enter_context(redis_url()))
            except (RedisUnavailableError, RuntimeError) as exc:
                complain(str(exc))
                return 1
        try:
            asyncio.run(run_demo(connection, args.hb_interval, sys.stdout))
        except (redis_errors.RedisError, RedisCommandError) as exc:
            complain(_redis_problem(exc, connection.address))
            return 1
        except DemoError as exc:
            complain(str(exc))
            return 1
    return 0
