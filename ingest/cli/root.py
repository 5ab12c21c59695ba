"""The ``grantex-archive`` group: assembled here from the command modules, nothing else."""

from __future__ import annotations

import sys
from typing import Any

import click

from .db import db
from .demo import demo
from .export import export_command, verify_export_command
from .help_format import HelpContext, use_help_format
from .ingest import ingest
from .integrity import seal_command, verify_archive_command
from .receive import receive
from .reconcile import reconcile
from .report import report, sql_command
from .simulate import simulate
from .status import refresh_command, status
from .unix import silence_stdout, stdout_closed, unix_endings


class RootGroup(click.Group):
    """The root command: maps how a command ends to Unix conventions (see :mod:`.unix`)."""

    context_class = HelpContext

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


for _command in (
    db,
    ingest,
    receive,
    reconcile,
    simulate,
    demo,
    report,
    sql_command,
    status,
    refresh_command,
    export_command,
    seal_command,
    verify_archive_command,
    verify_export_command,
):
    main.add_command(_command)
use_help_format(main)
