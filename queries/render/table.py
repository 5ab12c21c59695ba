"""Tables and Markdown: rows laid out for people, each column with one format.

As DuckDB's CLI does, a table wider than the terminal keeps its first and
last columns and as many others as fit and shows ``…`` for the rest; text
still too wide is cut, numbers never are.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import IO, Any

from .options import Layout
from .values import Column, column_format

ELLIPSIS = "…"
GAP = "  "


def _formatted(
    columns: list[str], rows: Iterator[Sequence[Any]]
) -> tuple[list[Column], list[list[str]]]:
    raw = list(rows)
    formats = [column_format(name, [row[i] for row in raw]) for i, name in enumerate(columns)]
    cells = [[f.show(v) for f, v in zip(formats, row, strict=True)] for row in raw]
    return formats, cells


def write_table(
    out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], layout: Layout
) -> int:
    formats, cells = _formatted(columns, rows)
    widths = [len(c) for c in columns]
    for row in cells:
        for i, value in enumerate(row):
            widths[i] = max(widths[i], len(value))
    shown = _fit(widths, formats, layout.width)

    def line(values: Sequence[str]) -> str:
        parts = []
        for index, width in shown:
            if index is None:
                parts.append(ELLIPSIS)
                continue
            text = _clip(values[index], width)
            parts.append(text.rjust(width) if formats[index].numeric else text.ljust(width))
        return GAP.join(parts).rstrip()

    out.write(line(columns) + "\n")
    out.write(GAP.join("-" * w for _, w in shown) + "\n")
    for row in cells:
        out.write(line(row) + "\n")
    if layout.footer:
        count = f"{len(cells)} row{'s' if len(cells) != 1 else ''}"
        visible = sum(1 for index, _ in shown if index is not None)
        if visible < len(columns):
            count += f"; {visible} of {len(columns)} columns shown"
        out.write(f"({count})\n")
    return len(cells)


def _fit(
    widths: list[int], formats: list[Column], width: int | None
) -> list[tuple[int | None, int]]:
    """The columns to show with their widths: (None, 1) stands for the elided ones.

    As DuckDB's CLI does, a table wider than the terminal keeps its first and
    last columns and as many others as fit, from both ends, and shows ``…``
    for the middle ones; text still too wide is cut, numbers never are.
    """
    everything: list[tuple[int | None, int]] = list(enumerate(widths))
    if width is None or _total(everything) <= width:
        return everything
    if len(widths) == 1:
        return _cut(everything, formats, width)
    left: list[tuple[int | None, int]] = [(0, widths[0])]
    right: list[tuple[int | None, int]] = [(len(widths) - 1, widths[-1])]
    low, high = 1, len(widths) - 2
    while low <= high:
        take_left = len(left) <= len(right)
        index = low if take_left else high
        candidate = (index, widths[index])
        if _total([*left, candidate, (None, 1), *right]) > width:
            break
        if take_left:
            left.append(candidate)
            low += 1
        else:
            right.insert(0, candidate)
            high -= 1
    return _cut([*left, (None, 1), *right] if low <= high else [*left, *right], formats, width)


def _cut(
    chosen: list[tuple[int | None, int]], formats: list[Column], width: int
) -> list[tuple[int | None, int]]:
    """Still too wide: cut the widest text columns, down to a few characters."""
    while (excess := _total(chosen) - width) > 0:
        texts = [
            (w, pos)
            for pos, (i, w) in enumerate(chosen)
            if i is not None and not formats[i].numeric and w > 3
        ]
        if not texts:
            break
        w, pos = max(texts)
        chosen[pos] = (chosen[pos][0], max(3, w - excess))
    return chosen


def _total(shown: Sequence[tuple[int | None, int]]) -> int:
    return sum(w for _, w in shown) + len(GAP) * (len(shown) - 1)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + ELLIPSIS


def write_markdown(
    out: IO[str], columns: list[str], rows: Iterator[Sequence[Any]], _layout: Layout
) -> int:
    def cell(value: str) -> str:
        return value.replace("|", "\\|").replace("\n", "<br>")

    formats, cells = _formatted(columns, rows)
    out.write("| " + " | ".join(cell(c) for c in columns) + " |\n")
    out.write("|" + "|".join("---:" if f.numeric else "---" for f in formats) + "|\n")
    for row in cells:
        out.write("| " + " | ".join(cell(v) for v in row) + " |\n")
    return len(cells)
