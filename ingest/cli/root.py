"""The ``grantex-archive`` group: assembled here from the command modules, nothing else.

A command's module is imported when the command runs (or its help is shown): ``ingest``,
which cron starts every minute, does not load DuckDB and the analytics it never uses.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from .help_format import HelpContext, use_help_format
from .unix import silence_stdout, stdout_closed, unix_endings

COMMANDS = {
    "db": ("db", "db"),
    "ingest": ("ingest", "ingest"),
    "receive": ("receive", "receive"),
    "reconcile": ("reconcile", "reconcile"),
    "simulate": ("simulate", "simulate"),
    "demo": ("demo", "demo"),
    "report": ("report", "report"),
    "sql": ("report", "sql_command"),
    "status": ("status", "status"),
    "refresh": ("status", "refresh_command"),
    "export": ("export", "export_command"),
    "seal": ("integrity", "seal_command"),
    "verify-archive": ("integrity", "verify_archive_command"),
    "verify-export": ("export", "verify_export_command"),
}
"""Each command: its module in this package and its name there."""


class RootGroup(click.Group):
    """The root command: maps how a command ends to Unix conventions (see :mod:`.unix`),
    and loads each command from :data:`COMMANDS` when it is asked for."""

    context_class = HelpContext

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, name = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"{__package__}.{module}"), name)
            assert isinstance(command, click.Command) and command.name == cmd_name
            use_help_format(command)
            self.add_command(command)
        return super().get_command(ctx, cmd_name)

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        # `--help` and `--version` write while the command line is read.
        with unix_endings():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with unix_endings():
            result = super().invoke(ctx)
            # Rows still buffered must meet a closed pipe here, not at exit.
            sys.stdout.flush()
            return result

    def main(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().main(*args, **kwargs)
        finally:
            # An error message left in the buffer for a closed pipe would make
            # the interpreter's last flush fail and print a traceback.
            if stdout_closed():
                silence_stdout()


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="grantex-archive")
def main() -> None:
    """Keep, query and hand over the record of what your Grantex agents were allowed to do.

    \b
    Quick start (a local simulator, no account needed):
      grantex-archive demo
    Archive your account's events until caught up (cron):
      GRANTEX_API_KEY=... grantex-archive ingest --until-idle 60 --max-runtime 3300
    """
