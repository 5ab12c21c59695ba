"""Write docs/cli.md from the commands' own ``--help``.

Run ``python docs/generate_cli_reference.py`` after changing a command; the
test suite fails while the file is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

from ingest.cli import main

TARGET = Path(__file__).with_name("cli.md")


def _commands(group: click.Group, prefix: list[str]) -> list[list[str]]:
    found = [prefix]
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if isinstance(command, click.Group):
            found += _commands(command, [*prefix, name])
        elif command is not None:
            found.append([*prefix, name])
    return found


def render() -> str:
    runner = CliRunner()
    parts = [
        "# CLI reference",
        "",
        "Generated from `--help` by `python docs/generate_cli_reference.py`; do not edit.",
        "",
    ]
    for path in _commands(main, []):
        result = runner.invoke(
            main, [*path, "--help"], prog_name="grantex-archive", terminal_width=88
        )
        title = " ".join(["grantex-archive", *path])
        parts += [f"## `{title}`", "", "```", result.output.rstrip(), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        sys.exit(0 if TARGET.exists() and TARGET.read_text() == text else 1)
    TARGET.write_text(text)
    print(f"wrote {TARGET}")
