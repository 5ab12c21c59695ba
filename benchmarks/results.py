"""BENCHMARKS.md: each benchmark owns the section between its two markers."""

from __future__ import annotations

from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def write_section(name: str, table: str, method: str = "") -> None:
    """Replace the ``name`` section's results; a new section gets ``method`` above it."""
    text = PATH.read_text() if PATH.exists() else "# Benchmarks\n"
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = f"{begin}\n{table}\n{end}"
    if text.count(begin) > 1 or text.count(end) > 1:
        raise SystemExit(f"{PATH} holds the {name} section more than once: remove the stale copy")
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        intro = f"{method}\n\n" if method else ""
        text = text.rstrip() + f"\n\n{intro}{block}\n"
    PATH.write_text(text)
    print(f"updated {PATH}")
