"""Help pages that end a line only between words.

Click wraps help with ``textwrap``'s defaults, which break a line after a
hyphen and cut any word longer than the column. On an 80-column terminal the
``--db`` default came out as ``sqlite:///grantex-`` and ``archive.db]`` on two
lines, and environment variable names were cut into pieces: text that can no
longer be copied. Here a line ends only at a space; a word longer than its
column overflows it and the terminal wraps it whole.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable

import click
from click.formatting import iter_rows, measure_table


def wrap_text(text: str, width: int, indent: str = "") -> str:
    """Wrap paragraphs (separated by blank lines) to ``width``; ``\\b`` blocks stay as written."""
    paragraphs: list[str] = []
    for block in text.expandtabs().split("\n\n"):
        lines = block.strip("\n").splitlines()
        if not lines:
            continue
        if lines[0].strip() == "\b":
            paragraphs.append("\n".join(indent + line for line in lines[1:]))
            continue
        stripped = lines[0].lstrip()
        inner = indent + " " * (len(lines[0]) - len(stripped))
        paragraphs.append(
            textwrap.fill(
                " ".join(line.strip() for line in lines),
                width,
                initial_indent=inner,
                subsequent_indent=inner,
                break_long_words=False,
                break_on_hyphens=False,
            )
        )
    return "\n\n".join(paragraphs)


class HelpFormatter(click.HelpFormatter):
    """Click's formatter with the wrapping above for descriptions and option lists."""

    def write_text(self, text: str) -> None:
        self.write(wrap_text(text, self.width, " " * self.current_indent))
        self.write("\n")

    def write_dl(
        self, rows: Iterable[tuple[str, str]], col_max: int = 30, col_spacing: int = 2
    ) -> None:
        rows = list(rows)
        widths = measure_table(rows)
        if len(widths) != 2:
            raise TypeError("Expected two columns for definition list")
        first_col = min(widths[0], col_max) + col_spacing
        for first, second in iter_rows(rows, len(widths)):
            self.write(f"{'':>{self.current_indent}}{first}")
            if not second:
                self.write("\n")
                continue
            if len(first) <= first_col - col_spacing:
                self.write(" " * (first_col - len(first)))
            else:
                self.write("\n")
                self.write(" " * (first_col + self.current_indent))
            lines = wrap_text(second, max(self.width - first_col - 2, 10)).splitlines() or [""]
            self.write(f"{lines[0]}\n")
            for line in lines[1:]:
                self.write(f"{'':>{first_col + self.current_indent}}{line}\n" if line else "\n")


class HelpContext(click.Context):
    formatter_class = HelpFormatter


def use_help_format(command: click.Command) -> None:
    """Render ``command``'s help, and that of every command under it, with ``HelpFormatter``."""
    command.context_class = HelpContext
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            use_help_format(sub)
