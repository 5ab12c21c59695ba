"""How a command ends on Unix: a closed pipe is a quiet exit 0, Ctrl-C is 130."""

from __future__ import annotations

import errno
import os
import select
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from .errors import EXIT_INTERRUPTED


@contextmanager
def unix_endings() -> Iterator[None]:
    """A closed standard output ends the command quietly (exit 0), Ctrl-C with 130.

    Click would turn both into exit 1 ("Aborted!", or an ``Error:`` line for a
    broken pipe reported through a library error), so they are mapped before
    click sees them.
    """
    try:
        yield
    except (click.exceptions.Exit, SystemExit):
        raise
    except BaseException as exc:
        if stdout_closed() and _caused_by(exc, _is_broken_pipe):
            # `grantex-archive sql ... | head`: the reader has all it wanted.
            silence_stdout()
            raise click.exceptions.Exit(0) from None
        if isinstance(exc, click.ClickException):
            # A command that mapped an interrupt to its own message and exit
            # code (export: "nothing was written to PATH") keeps them.
            raise
        if _caused_by(exc, lambda e: isinstance(e, KeyboardInterrupt)):
            click.echo("Interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        raise


def _caused_by(exc: BaseException, test: Callable[[BaseException], bool]) -> bool:
    """Whether ``exc`` or an exception it was raised from or during passes ``test``.

    Commands report library errors ``from None``; the context still links them.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if test(current):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


def _is_broken_pipe(exc: BaseException) -> bool:
    """EPIPE from Python, or as DuckDB reports a write that failed with it."""
    if isinstance(exc, OSError):
        return exc.errno == errno.EPIPE
    return "Broken pipe" in str(exc)


def stdout_closed() -> bool:
    """Whether standard output is a pipe or socket nobody reads any more."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # replaced (tests) or closed
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        ready = poller.poll(0)
    except OSError:
        return False
    return any(events & (select.POLLERR | select.POLLHUP) for _fd, events in ready)


def silence_stdout() -> None:
    """Point standard output at /dev/null so that nothing more fails to be written."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file (the CLI run in-process)
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)
