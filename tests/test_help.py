"""Every command's --help: each option explained, no RST markup, no word cut in two."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from ingest.cli import main

ROOT = Path(__file__).resolve().parent.parent
# Click renders at the terminal's width less 2, between 50 and 78 columns;
# the docs are rendered at 88 and a wider --help only through terminal_width.
WIDTHS = (50, 60, 72, 78, 88, 120)
WIDE = 10_000


def _walk(command: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, command)]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, name
            found += _walk(sub, [*path, name])
    return found


COMMANDS = _walk(main, [])
IDS = [" ".join(path) or "(root)" for path, _ in COMMANDS]


def _help(path: list[str], width: int) -> str:
    result = CliRunner().invoke(
        main, [*path, "--help"], prog_name="grantex-archive", terminal_width=width
    )
    assert result.exit_code == 0, result.output
    return result.output


def _words(text: str) -> set[str]:
    # A command's short help in a group's listing is cut to the width at a
    # word boundary and ends in "...": the words before it are whole.
    return {word.removesuffix("...") for word in text.split()} - {""}


def test_the_walk_finds_nested_and_lazily_added_commands() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"db upgrade", "ingest", "simulate", "demo", "report", "export"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_every_option_has_help(path: list[str], command: click.Command) -> None:
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            assert (param.help or "").strip(), f"{' '.join(path)} {param.opts[0]} has no help"


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_no_rst_markup(path: list[str], command: click.Command) -> None:
    texts = [command.help or "", command.short_help or ""]
    texts += [p.help or "" for p in command.params if isinstance(p, click.Option)]
    texts.append(_help(path, 88))
    for text in texts:
        assert "``" not in text, text


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=IDS)
def test_no_word_is_broken_across_lines(path: list[str], command: click.Command) -> None:
    """Every word of a narrow rendering is a word of the unwrapped one."""
    whole = _words(_help(path, WIDE))
    for width in WIDTHS:
        broken = _words(_help(path, width)) - whole
        assert not broken, f"at {width} columns: {sorted(broken)}"


def test_real_terminal_width_from_columns() -> None:
    """The installed command as a terminal shows it (COLUMNS is how click learns the width)."""
    env = {**os.environ, "COLUMNS": "52"}
    narrow = subprocess.run(
        [str(Path(sys.executable).with_name("grantex-archive")), "ingest", "--help"],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert len(narrow.splitlines()) > len(_help(["ingest"], 78).splitlines())
    assert _words(narrow) <= _words(_help(["ingest"], WIDE))


def test_generated_reference_has_no_rst_markup_or_broken_words() -> None:
    reference = (ROOT / "docs" / "cli.md").read_text()
    sections = reference.split("\n## `grantex-archive")[1:]
    assert len(sections) == len(COMMANDS)
    for (path, _), section in zip(COMMANDS, sections, strict=True):
        body = section.split("```\n", 1)[1].rsplit("\n```", 1)[0]
        assert "``" not in body, " ".join(path)
        assert _words(body) <= _words(_help(path, WIDE)), " ".join(path)
