"""The CLI reference is generated from --help and must be current; every command has an example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from click.testing import CliRunner

from ingest.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(
        "gen", ROOT / "docs" / "generate_cli_reference.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current() -> None:
    generator = _generator()
    expected = generator.render()
    current = (ROOT / "docs" / "cli.md").read_text()
    assert current == expected, "docs/cli.md is stale: run python docs/generate_cli_reference.py"


def test_every_command_has_an_example() -> None:
    generator = _generator()
    runner = CliRunner()
    for path in generator._commands(main, []):
        if not path:
            continue
        output = runner.invoke(main, [*path, "--help"]).output
        assert "Example" in output, f"`{' '.join(path)} --help` has no example"


def test_readme_names_every_top_level_command() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in main.list_commands(None):  # type: ignore[arg-type]
        assert f"grantex-archive {name}" in readme, name
