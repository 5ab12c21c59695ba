"""The progress line: nothing for quick work, click's bar once work has run half a second."""

from __future__ import annotations

import io

import pytest

from ingest.cli.progress import Progress, progress_for


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_quick_work_shows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    clock = Clock()
    progress = Progress("Refreshing", clock=clock)
    clock.now += 0.4
    progress(10, 100)
    progress.done()
    assert err.getvalue() == ""


def test_long_work_shows_the_label_and_ends_its_line(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    clock = Clock()
    progress = Progress("Exporting", clock=clock)
    clock.now += 0.6
    progress(10, 100)
    progress(60, 120)  # the total may grow while the work goes on
    progress.done()
    text = err.getvalue()
    assert text.startswith("Exporting") and text.endswith("\n")
    progress.done()  # a second end writes nothing more
    assert err.getvalue() == text


def test_no_progress_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress_for("Exporting") is None
