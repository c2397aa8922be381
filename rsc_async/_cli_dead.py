"""``rsc-async dead``: list dead letters, or put them back into the LBS."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import redis.asyncio as aioredis

from ._cli_render import (
    complain,
    render_dead_human,
    render_dead_plain,
    render_json,
    terminal_width,
)
from ._cli_status import DeadRow, dead_row, read_dead
from ._errors import InvalidLBSMessageError
from ._models import LBS_FIELD, LBSMessage, decode

# Move one dead letter back to the LBS, unless another requeue moved it first.
# KEYS: the dead-letter stream, the LBS. ARGV: the dead letter's id, its
# lbs-input value. Returns the new LBS entry id, or false when it was gone.
_REQUEUE = """
if #redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1]) == 0 then
  return false
end
local entry_id = redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[1])
return entry_id
"""

DEAD_ID_PATTERN = r"\d+-\d+"
"""What a stream entry id looks like."""

NOT_FOUND = "no such dead letter"


@dataclass(frozen=True)
class Requeued:
    """The outcome for one dead letter: its new LBS entry id, or why it stays."""

    dead_id: str
    data_stream: str | None
    new_entry_id: str | None = None
    kept_because: str | None = None


async def requeue(
    redis: aioredis.Redis, service: str, dead_ids: Sequence[str] | None, limit: int
) -> list[Requeued]:
    """Requeue the named dead letters of *service*, or every one when None.

    A dead letter goes back only when its ``lbs-input`` parses as an LBS entry;
    the others stay where they are, with the reason.
    """
    dead = f"{service}-dead"
    rows: list[DeadRow | str]
    if dead_ids is None:
        rows = list(await read_dead(redis, service, limit))
    else:
        rows = []
        for dead_id in dead_ids:
            found = await redis.xrange(dead, dead_id, dead_id)
            rows.append(dead_row(dead_id, found[0][1]) if found else dead_id)
    script = redis.register_script(_REQUEUE)
    outcomes = []
    for row in rows:
        if isinstance(row, str):
            outcomes.append(Requeued(row, None, kept_because=NOT_FOUND))
            continue
        problem = _unparseable(row)
        if problem is not None:
            outcomes.append(Requeued(row.id, row.data_stream, kept_because=problem))
            continue
        args = [row.id, row.lbs_input or "", LBS_FIELD]
        new_id = await script([dead, f"{service}-input"], args)
        if new_id is None:
            outcome = Requeued(row.id, row.data_stream, kept_because=NOT_FOUND)
        else:
            outcome = Requeued(row.id, row.data_stream, new_entry_id=decode(new_id))
        outcomes.append(outcome)
    return outcomes


def _unparseable(row: DeadRow) -> str | None:
    fields: dict[bytes | str, bytes | str] = {}
    if row.lbs_input is not None:
        fields[LBS_FIELD] = row.lbs_input
    try:
        LBSMessage.from_entry(row.id, fields)
    except InvalidLBSMessageError as exc:
        return f"its {LBS_FIELD} does not parse: {exc.reason}"
    return None


async def run_dead(redis: aioredis.Redis, args: argparse.Namespace) -> int:
    """List the dead letters of ``args.service``, or requeue some; the exit code."""
    if not args.requeue and not args.all:
        dead = await read_dead(redis, args.service, args.limit)
        if args.json:
            rows = [asdict(row) for row in dead]
            text = render_json({"service": args.service, "dead": rows}, compact=False)
        elif sys.stdout.isatty():
            text = render_dead_human(dead, terminal_width()) + "\n"
        else:
            text = render_dead_plain(dead)
        sys.stdout.write(text)
        return 0

    outcomes = await requeue(
        redis, args.service, None if args.all else args.requeue, args.limit
    )
    if args.json:
        rows = [asdict(outcome) for outcome in outcomes]
        sys.stdout.write(render_json({"requeued": rows}, compact=False))
    for outcome in outcomes:
        stream = f" ({outcome.data_stream})" if outcome.data_stream else ""
        if outcome.new_entry_id is None:
            complain(f"kept {outcome.dead_id}{stream}: {outcome.kept_because}")
        elif not args.json:
            print(f"requeued {outcome.dead_id}{stream} as {outcome.new_entry_id}")
    failed = any(outcome.new_entry_id is None for outcome in outcomes)
    return 1 if failed and not args.all else 0
