"""Progress on a terminal, for long work that reports ``(done, total)``."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import click


class Progress:
    """A ``click.progressbar`` on standard error, shown once the work has run half a second.

    Called as ``progress(done, total)``; ``done()`` ends the line. Quick work
    shows nothing.
    """

    def __init__(self, label: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.label = label
        self._clock = clock
        self._started = clock()
        self._bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            if self._clock() - self._started < 0.5:
                return
            self._bar = click.progressbar(
                length=max(total, 1),
                label=self.label,
                file=sys.stderr,
                show_pos=True,
                item_show_func=None,
            )
            self._bar.__enter__()
        if total and total != self._bar.length:
            self._bar.length = total
        self._bar.update(done - self._bar.pos)

    def done(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)
            self._bar = None


def progress_for(label: str, show: bool = True) -> Progress | None:
    """A :class:`Progress` when standard error is a terminal (and ``show``), else None."""
    return Progress(label) if show and sys.stderr.isatty() else None
