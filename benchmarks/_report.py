"""The one table every benchmark adds its rows to."""

from __future__ import annotations

import sys
import textwrap
from dataclasses import dataclass

WIDTH = 100
"""The table never gets wider than this."""


@dataclass(frozen=True)
class Row:
    """One measured figure, beside the figure it is compared with, if any.

    Args:
        case: what was run, e.g. ``K=10,000``.
        metric: what was measured, with its unit.
        value: the library's figure, already formatted.
        versus: the name of what it is compared with; empty when nothing is.
        reference: that other figure, formatted.
        ratio: value / reference, formatted; empty when it means nothing.
    """

    case: str
    metric: str
    value: str
    versus: str = ""
    reference: str = ""
    ratio: str = ""


@dataclass(frozen=True)
class Section:
    """A heading row: which benchmark the rows below it come from."""

    title: str


@dataclass(frozen=True)
class Note:
    """A line of text under the rows: what failed or was logged, and where."""

    text: str


Line = Row | Section | Note

HEADER = Row("case", "metric", "rsc_async", "vs", "other", "ratio")


def number(value: float, digits: int = 0) -> str:
    """*value* with thousands separators and *digits* decimals."""
    return f"{value:,.{digits}f}"


def ratio(value: float, reference: float) -> str:
    """value / reference, e.g. ``0.43x`` or ``12x``; ``1/250`` below a tenth.

    ``-`` when the quotient is undefined.
    """
    if reference == 0 or value != value or reference != reference:
        return "-"
    quotient = value / reference
    if quotient == 0:
        return "0"
    if quotient < 0.1:
        # Small quotients read better inverted than as 0.00x.
        return f"1/{reference / value:,.0f}"
    digits = 2 if quotient < 10 else 0
    return f"{quotient:,.{digits}f}x"


def render(lines: list[Line]) -> str:
    """The table as plain text, columns sized to fit.

    It stays within :data:`WIDTH` columns for the sizes the benchmarks
    default to; much larger sizes may widen it rather than lose figures.
    """
    rows = [HEADER, *(line for line in lines if isinstance(line, Row))]
    fields = ("case", "metric", "value", "versus", "reference", "ratio")
    widths = [max(len(getattr(row, name)) for row in rows) for name in fields]
    # Text columns are left-aligned, figures right-aligned, as a reader scans
    # names down the left and compares magnitudes on the right.
    aligned = ("<", "<", ">", "<", ">", ">")

    # Two spaces between columns, one when that keeps the table in WIDTH.
    gap = 2 if sum(widths) + 2 * (len(widths) - 1) <= WIDTH else 1

    def format_row(row: Row) -> str:
        cells = [
            f"{getattr(row, name):{align}{width}}"
            for name, align, width in zip(fields, aligned, widths, strict=True)
        ]
        return (" " * gap).join(cells).rstrip()

    rule = "-" * min(sum(widths) + gap * (len(widths) - 1), WIDTH)
    out = [format_row(HEADER), rule]
    for line in lines:
        if isinstance(line, Section):
            out.extend(["", line.title[:WIDTH], rule])
        elif isinstance(line, Note):
            out.append(
                textwrap.fill(
                    line.text, WIDTH, initial_indent="! ", subsequent_indent="  "
                )
            )
        else:
            out.append(format_row(line))
    return "\n".join(out)


def announce(benchmark: str, message: str) -> None:
    """Say on stderr what *benchmark* runs now: a full run takes minutes."""
    print(f"[{benchmark}] {message}", file=sys.stderr, flush=True)
