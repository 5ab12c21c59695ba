"""How rows reach the user: pipes, terminals, files, and the process around them.

The pipe and terminal tests run the installed command as a separate process:
a closed pipe, Ctrl-C and a terminal only exist for a real process.
"""

from __future__ import annotations

import os
import platform
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.analytics_fixture import build_archive
from tests.conftest import cli_command, invoke

# The syscall a process blocked reading standard input is in (/proc/PID/syscall).
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}[platform.machine()]


@pytest.fixture
def archive(sqlite_archive: str) -> str:
    build_archive(sqlite_archive)
    return sqlite_archive


def console_script() -> list[str]:
    """The ``grantex-archive`` executable pyproject.toml installs, as users run it."""
    exe = Path(sys.executable).parent / "grantex-archive"
    return [str(exe)] if exe.exists() else cli_command()


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(extra)
    return env


def errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error:")]


# --------------------------------------------------------------------------- pipes


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "table"])
def test_head_ends_a_large_result_quietly(archive: str, fmt: str) -> None:
    query = "select * from range(1000000)"
    command = shlex.join([*console_script(), "sql", query, "--db", archive, "--format", fmt])
    proc = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {command} | head -1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=child_env(),
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.strip() == ('{"range": 0}' if fmt == "jsonl" else "range")


@pytest.mark.parametrize(
    "args",
    [
        ["report", "event-volume", "--db", "{db}"],
        ["report", "event-volume", "--format", "json", "--db", "{db}"],
        ["sql", "select 1 as one", "--db", "{db}"],
        ["status", "--db", "{db}"],
        ["status", "--format", "table", "--db", "{db}"],
        ["export", "-o", "-", "--db", "{db}"],
        ["export", "-o", "-", "--format", "jsonl", "--gzip", "--db", "{db}"],
        ["report", "--list"],
        ["sql", "--help"],
        ["--help"],
    ],
)
def test_a_closed_standard_output_ends_quietly_with_exit_0(archive: str, args: list[str]) -> None:
    # The reader is gone before the command starts: every write it makes fails.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [*console_script(), *(archive if a == "{db}" else a for a in args)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
            env=child_env(),
        )
    finally:
        os.close(write_end)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_a_failure_on_a_closed_pipe_keeps_its_exit_code(archive: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [*console_script(), "sql", "select nope", "--db", archive],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1
    assert errors(proc.stderr) and errors(proc.stderr)[0].startswith("Error: Binder Error")


# --------------------------------------------------------------------------- Ctrl-C


def _blocked_reading_stdin(pid: int) -> bool:
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return len(fields) > 1 and fields[0] == str(READ_SYSCALL) and int(fields[1], 16) == 0


def test_ctrl_c_exits_130_without_a_traceback(archive: str) -> None:
    proc = subprocess.Popen(
        [*console_script(), "sql", "-", "--db", archive],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _blocked_reading_stdin(proc.pid):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130
    assert out == ""
    assert err.strip() == "Interrupted"


# --------------------------------------------------------------------------- names and flags


def test_a_mistyped_report_name_gets_a_suggestion(archive: str) -> None:
    result = invoke(["report", "top_agents", "--db", archive])
    assert result.exit_code == 2
    assert errors(result.output) == [
        "Error: no report named 'top_agents'; did you mean top-agents? "
        "(`grantex-archive report --list` lists them all)"
    ]


def test_refresh_does_not_offer_no_refresh(archive: str) -> None:
    assert "--no-refresh" not in invoke(["refresh", "--help"]).output
    result = invoke(["refresh", "--no-refresh", "--db", archive])
    assert result.exit_code == 2
    assert errors(result.output) == ["Error: No such option '--no-refresh'."]
