"""Aligned tables for a terminal, never wider than it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

GAP = "  "
ELLIPSIS = "…"
MIN_FLEXIBLE_WIDTH = 8
"""A flexible column is never cut narrower than this, or than its title."""


@dataclass(frozen=True)
class Column:
    """How one column of a table is laid out.

    Args:
        title: the header.
        flexible: may be cut, with an ellipsis, to fit the width.
        right: aligned right (numbers).
        cut_end: cut at the end rather than in the middle; the middle keeps
            both the prefix and the distinguishing suffix of a name.
    """

    title: str
    flexible: bool = False
    right: bool = False
    cut_end: bool = False


def truncate(text: str, width: int, *, cut_end: bool = True) -> str:
    """*text* cut to *width* characters with an ellipsis where it was cut."""
    if len(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if cut_end:
        return text[: width - 1] + ELLIPSIS
    kept = width - 1
    head = (kept + 1) // 2
    tail = kept - head
    return text[:head] + ELLIPSIS + (text[-tail:] if tail else "")


def render_table(
    columns: Sequence[Column],
    rows: Sequence[Sequence[str]],
    width: int,
    *,
    empty: str = "",
) -> str:
    """Lay out *rows* under the column titles within *width* characters.

    Flexible columns give up characters, the widest first, until the table
    fits; a table that still does not fit has its lines cut at *width*.
    When there are no rows, *empty* is shown instead of the table.
    """
    if not rows:
        return truncate(empty, width)
    widths = [
        max(len(column.title), *(len(row[index]) for row in rows))
        for index, column in enumerate(columns)
    ]

    def total() -> int:
        return sum(widths) + len(GAP) * (len(widths) - 1)

    while total() > width:
        shrinkable = [
            index
            for index, column in enumerate(columns)
            if column.flexible
            and widths[index] > max(MIN_FLEXIBLE_WIDTH, len(column.title))
        ]
        if not shrinkable:
            break
        widths[max(shrinkable, key=lambda index: widths[index])] -= 1

    lines = []
    for cells in [[column.title for column in columns], *rows]:
        laid_out = []
        for column, cell, size in zip(columns, cells, widths, strict=True):
            text = truncate(cell, size, cut_end=column.cut_end)
            laid_out.append(text.rjust(size) if column.right else text.ljust(size))
        lines.append(truncate(GAP.join(laid_out).rstrip(), width))
    return "\n".join(lines)


def seconds(value: float) -> str:
    """A duration for people: ``0.42s``, ``12.3s``, ``4m05s``, ``3h02m``, ``2d03h``."""
    if value < 10:
        return f"{value:.2f}s"
    if value < 60:
        return f"{value:.1f}s"
    whole = int(value)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"
