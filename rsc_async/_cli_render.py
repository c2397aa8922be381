"""How the command line shows a service: tables for people, tab-separated
lines for scripts, JSON for machines."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence

from ._cli_status import DeadRow, Status
from ._cli_table import Column, render_table, seconds, truncate

PROG = "rsc-async"
MAX_WIDTH = 80


def complain(text: str) -> None:
    """Print one line about a problem to stderr, cut to 80 columns."""
    line = " ".join(f"{PROG}: {text}".split())
    print(truncate(line, MAX_WIDTH), file=sys.stderr)


def terminal_width() -> int:
    """The width to lay tables out in: the terminal's, at most 80."""
    return min(MAX_WIDTH, shutil.get_terminal_size((MAX_WIDTH, 24)).columns)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help, wrapped to the terminal but never wider than 80."""

    def __init__(self, prog: str) -> None:
        # The margin of 2 is the one argparse leaves when it picks the width.
        super().__init__(prog, width=terminal_width() - 2)


STREAM_COLUMNS = (
    Column("DATA STREAM", flexible=True),
    Column("OWNER", flexible=True),
    Column("TTL", right=True),
    Column("IDLE", right=True),
    Column("DLV", right=True),
    Column("ENTRY"),
)
CONSUMER_COLUMNS = (
    Column("CONSUMER", flexible=True),
    Column("PENDING", right=True),
    Column("HELD", right=True),
    Column("LAST SEEN", right=True),
)
DEAD_COLUMNS = (
    Column("DEAD LETTER"),
    Column("DATA STREAM", flexible=True),
    Column("REASON", flexible=True, cut_end=True),
)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _ms(value: int | None) -> str:
    if value is None:
        return "-"
    return "none" if value < 0 else seconds(value / 1000)


def render_human(status: Status, width: int) -> str:
    """An aligned table per section, no line wider than *width*."""
    shown = len(status.streams)
    title = f"service {status.service}: {status.lbs_length} LBS entries"
    if shown < status.lbs_length:
        title += f" (the first {shown} shown)"
    rows = [
        [
            _text(row.data_stream),
            _text(row.owner),
            _ms(row.lock_ttl_ms),
            _ms(row.idle_ms),
            _text(row.deliveries),
            row.entry_id,
        ]
        for row in status.streams
    ]
    consumers = [
        [row.name, str(row.pending), str(row.held), f"{_ms(row.idle_ms)} ago"]
        for row in status.consumers
    ]
    parts = [
        truncate(title, width),
        render_table(STREAM_COLUMNS, rows, width, empty="no data streams"),
        render_table(CONSUMER_COLUMNS, consumers, width, empty="no consumers"),
        render_dead_human(status.dead, width),
    ]
    return "\n\n".join(parts) + "\n"


def render_dead_human(dead: Sequence[DeadRow], width: int) -> str:
    """The dead letters as an aligned table."""
    rows = [[row.id, _text(row.data_stream), row.reason] for row in dead]
    return render_table(DEAD_COLUMNS, rows, width, empty="no dead letters")


def _tsv(lines: Sequence[Sequence[object]]) -> str:
    cleaned = (
        "\t".join(_text(cell).replace("\t", " ").replace("\n", " ") for cell in line)
        for line in lines
    )
    return "".join(f"{line}\n" for line in cleaned)


def render_plain(status: Status) -> str:
    """Tab-separated sections, each with a header, separated by a blank line."""
    streams = [
        ("data_stream", "owner", "lock_ttl_ms", "idle_ms", "deliveries", "entry_id"),
        *(
            (
                row.data_stream,
                row.owner,
                row.lock_ttl_ms,
                row.idle_ms,
                row.deliveries,
                row.entry_id,
            )
            for row in status.streams
        ),
    ]
    consumers = [
        ("consumer", "pending", "held", "idle_ms"),
        *((c.name, c.pending, c.held, c.idle_ms) for c in status.consumers),
    ]
    return "\n".join([_tsv(streams), _tsv(consumers), render_dead_plain(status.dead)])


def render_dead_plain(dead: Sequence[DeadRow]) -> str:
    """The dead letters as tab-separated lines with a header."""
    header = ("dead_id", "data_stream", "reason", "entry_id", "consumer")
    rows = [(d.id, d.data_stream, d.reason, d.entry_id, d.consumer) for d in dead]
    return _tsv([header, *rows])


def render_json(document: object, *, compact: bool) -> str:
    """One JSON document on one line when *compact*, else indented."""
    if compact:
        return json.dumps(document, separators=(",", ":")) + "\n"
    return json.dumps(document, indent=2) + "\n"
