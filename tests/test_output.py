"""How rows reach the user: pipes, terminals, files, and the process around them.

The pipe and terminal tests run the installed command as a separate process:
a closed pipe, Ctrl-C and a terminal only exist for a real process.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import platform
import re
import shlex
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click
import duckdb
import pytest

from ingest.cli import RootGroup
from queries.render import Layout, write_rows
from tests.conftest import cli_command, invoke

SUFFIXES = ".csv .json .jsonl .ndjson .md .markdown .txt"
# The syscall a process blocked reading standard input is in (/proc/PID/syscall).
READ_SYSCALL = {"x86_64": 0, "aarch64": 63}[platform.machine()]


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
    # Far more than a pipe holds; a table is built in memory first, so fewer rows.
    query = f"select * from range({200_000 if fmt == 'table' else 1_000_000})"
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


@pytest.fixture
def closed_pipe() -> Iterator[IO[str]]:
    """A pipe whose reader has gone, to stand for standard output (a descriptor of its own)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with open(write_end, "w") as stream:
        yield stream


def _duckdb_broken_pipe() -> duckdb.Error:
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        duckdb.sql(f"COPY (SELECT * FROM range(100000)) TO '/dev/fd/{write_end}' (FORMAT csv)")
    except duckdb.Error as exc:
        return exc
    finally:
        os.close(write_end)
    raise AssertionError("DuckDB wrote into a pipe nobody reads")


@pytest.mark.parametrize("how", ["python", "duckdb"])
def test_a_broken_pipe_reported_as_an_error_ends_quietly(
    closed_pipe: IO[str], how: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Set here, not in the fixture: pytest puts its own capture back for the test.
    monkeypatch.setattr(sys, "stdout", closed_pipe)

    @click.command()
    def writer() -> None:
        try:
            if how == "python":
                os.write(closed_pipe.fileno(), b"x")
            else:
                raise _duckdb_broken_pipe()
        except Exception as exc:
            # As commands report library errors: a new exception, from None.
            raise click.ClickException(f"writing failed: {exc}") from None

    group = RootGroup(commands={"writer": writer})
    with pytest.raises(SystemExit) as ended:
        group.main(["writer"])
    assert ended.value.code == 0
    # Whatever is still buffered now goes nowhere instead of failing at exit.
    closed_pipe.write("rest")
    closed_pipe.flush()


def test_the_same_error_with_a_reader_still_fails(capsys: pytest.CaptureFixture[str]) -> None:
    @click.command()
    def writer() -> None:
        try:
            raise _duckdb_broken_pipe()
        except Exception as exc:
            raise click.ClickException(f"writing failed: {exc}") from None

    with pytest.raises(SystemExit) as ended:
        RootGroup(commands={"writer": writer}).main(["writer"])
    assert ended.value.code == 1
    assert capsys.readouterr().err.startswith("Error: writing failed: IO Error")


def test_csv_on_a_pipe_ends_lines_with_lf(archive: str) -> None:
    command = shlex.join(
        [*console_script(), "sql", "select range as n from range(50001)", "--db", archive]
    )
    proc = subprocess.run(
        ["bash", "-c", f'last=$({command} | tail -1); printf "%s" "$last"'],
        capture_output=True,
        timeout=120,
    )
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"50000", b"")


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
    assert proc.returncode == 130, err
    assert out == ""
    assert err.strip() == "Interrupted"


# --------------------------------------------------------------------------- a terminal


def run_in_terminal(args: list[str], columns: int = 80) -> tuple[int, bytes, str]:
    """Run the CLI with a terminal of ``columns`` as standard output; its bytes as written."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    attrs = termios.tcgetattr(slave)
    attrs[1] &= ~termios.OPOST  # no \n -> \r\n by the terminal: see what the program wrote
    termios.tcsetattr(slave, termios.TCSANOW, attrs)
    proc = subprocess.Popen(
        [*console_script(), *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=child_env(),
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the program closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    proc.stderr.close()
    return proc.wait(timeout=60), b"".join(chunks), err


def test_csv_on_a_terminal_ends_lines_with_lf(archive: str) -> None:
    code, out, err = run_in_terminal(
        ["sql", "select 1 as a, 'x' as b", "--format", "csv", "--db", archive]
    )
    assert (code, out, err) == (0, b"a,b\n1,x\n", "")


WIDE = "select " + ", ".join(f"{i} * 1000 as column_{i:02d}" for i in range(1, 31))


def test_a_wide_table_fits_the_terminal(archive: str) -> None:
    code, out, err = run_in_terminal(["sql", WIDE, "--db", archive], columns=70)
    assert (code, err) == (0, "")
    lines = out.decode().splitlines()
    assert all(len(line) <= 70 for line in lines), lines
    header = lines[0].split()
    assert header[0] == "column_01" and header[-1] == "column_30" and "…" in header
    assert lines[2].split()[0] == "1000" and lines[2].split()[-1] == "30000"
    assert re.fullmatch(r"\(1 row; \d+ of 30 columns shown\)", lines[-1]), lines[-1]


def test_a_table_on_a_terminal_has_a_footer(archive: str) -> None:
    code, out, err = run_in_terminal(["status", "--db", archive], columns=200)
    assert (code, err) == (0, "")
    lines = out.decode().splitlines()
    assert lines[0].split() == ["section", "name", "value"]
    assert lines[-1] == f"({len(lines) - 3} rows)"


# --------------------------------------------------------------------------- line ends


@pytest.mark.parametrize(
    "args",
    [
        ["sql", "select 'a' as text, 2 as n union all select 'b', 3"],
        ["report", "event-volume"],
        ["status"],
    ],
)
def test_csv_line_ends_lf_on_stdout_crlf_in_files(
    archive: str, tmp_path: Path, args: list[str]
) -> None:
    piped = invoke([*args, "--db", archive])
    assert piped.exit_code == 0, piped.output
    data = piped.stdout_bytes
    assert data.endswith(b"\n") and b"\r" not in data
    target = tmp_path / "out.csv"
    written = invoke([*args, "--db", archive, "-o", str(target)])
    assert (written.exit_code, written.output) == (0, "")
    raw = target.read_bytes()
    assert raw.count(b"\r\n") == raw.count(b"\n") == data.count(b"\n") > 1
    assert raw.endswith(b"\r\n")


def test_sql_csv_with_a_newline_in_a_value_round_trips(archive: str) -> None:
    result = invoke(["sql", "select 'a\r\nb' as text, 2 as n", "--db", archive])
    assert result.stdout_bytes == b'text,n\n"a\r\nb",2\n'


# --------------------------------------------------------------------------- -o FILE


OUTPUT_COMMANDS = [
    ["report", "event-volume"],
    ["sql", "select 1 as one"],
    ["status"],
]


@pytest.mark.parametrize("args", OUTPUT_COMMANDS)
def test_an_unknown_suffix_needs_format(archive: str, tmp_path: Path, args: list[str]) -> None:
    target = tmp_path / "out.xlsx"
    result = invoke([*args, "--db", archive, "-o", str(target)])
    assert result.exit_code == 2, result.output
    assert errors(result.output) == [
        f"Error: cannot tell the format from the suffix of {target} "
        f"(known: {SUFFIXES}): give --format"
    ]
    assert not target.exists() and not list(tmp_path.glob("*.xlsx*"))
    # Said explicitly, it is what the user asked for.
    result = invoke([*args, "--db", archive, "-o", str(target), "--format", "json"])
    assert result.exit_code == 0, result.output
    assert isinstance(json.loads(target.read_text()), list)


@pytest.mark.parametrize("args", OUTPUT_COMMANDS)
def test_a_format_that_contradicts_the_suffix_is_refused(
    archive: str, tmp_path: Path, args: list[str]
) -> None:
    target = tmp_path / "out.csv"
    result = invoke([*args, "--db", archive, "-o", str(target), "--format", "json"])
    assert result.exit_code == 2, result.output
    assert errors(result.output) == [
        f"Error: --format json contradicts the suffix of {target} (.csv is csv)"
    ]
    assert not target.exists()
    agreeing = invoke([*args, "--db", archive, "-o", str(target), "--format", "csv"])
    assert agreeing.exit_code == 0, agreeing.output


@pytest.mark.parametrize("args", OUTPUT_COMMANDS)
@pytest.mark.parametrize("name", ["out.csv", "out.json", "out.txt"])
@pytest.mark.parametrize("parent", ["missing", "a-file"])
def test_output_into_a_missing_or_non_directory_is_one_error_line(
    archive: str, tmp_path: Path, args: list[str], name: str, parent: str
) -> None:
    (tmp_path / "a-file").write_text("not a directory\n")
    target = tmp_path / parent / name
    result = invoke([*args, "--db", archive, "-o", str(target)])
    assert result.exit_code == 1, result.output
    problem = "does not exist" if parent == "missing" else "is not a directory"
    assert result.output == f"Error: cannot write {target}: {tmp_path / parent} {problem}\n"


@pytest.mark.parametrize("args", OUTPUT_COMMANDS)
@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".md", ".txt"])
def test_files_hold_rows_only(archive: str, tmp_path: Path, args: list[str], suffix: str) -> None:
    target = tmp_path / f"out{suffix}"
    result = invoke([*args, "--db", archive, "-o", str(target)])
    assert (result.exit_code, result.output) == (0, "")
    text = target.read_text()
    assert text and not re.search(r"\(\d+ rows?", text), text


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


# --------------------------------------------------------------------------- tables


def test_a_table_column_has_one_number_format(archive: str) -> None:
    sql = (
        "select * from (values (1, 2.5, 'a'), (10, 100.0, 'bb'), (100, 0.125, 'c'), "
        "(null, null, null)) t(i, f, s) order by i nulls last"
    )
    result = invoke(["sql", sql, "--db", archive, "--format", "table"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "  i        f  s",
        "---  -------  --",
        "  1    2.500  a",
        " 10  100.000  bb",
        "100    0.125  c",
        "",
    ]


def test_a_table_of_whole_floats_and_decimals(archive: str) -> None:
    sql = (
        "select * from (values (3.0::double, 1.50::decimal(5,2)), (12.0, 10::decimal(5,2))) t(f, d)"
    )
    result = invoke(["sql", sql, "--db", archive, "--format", "table"])
    assert result.output.splitlines() == [
        " f      d",
        "--  -----",
        " 3   1.50",
        "12  10.00",
    ]


@pytest.mark.parametrize(
    ("columns", "shown", "footer"),
    [
        (["payload"], ["x" * 39 + "…"], "(1 row)"),
        (["id", "payload"], ["ev_1", "x" * 33 + "…"], "(1 row)"),
        (["id", "payload", "n"], ["ev_1", "…", "123456"], "(1 row; 2 of 3 columns shown)"),
    ],
)
def test_long_text_is_cut_or_elided_to_fit(
    columns: list[str], shown: list[str], footer: str
) -> None:
    values = {"id": "ev_1", "payload": "x" * 200, "n": 123456}
    out = io.StringIO()
    write_rows(out, "table", columns, [[values[c] for c in columns]], Layout(width=40, footer=True))
    lines = out.getvalue().splitlines()
    assert all(len(line) <= 40 for line in lines), lines
    assert lines[2].split() == shown
    assert lines[-1] == footer


# --------------------------------------------------------------------------- writing FILE


def test_a_file_is_written_whole_or_not_at_all(tmp_path: Path) -> None:
    from queries.render import OutputError, open_output, replace_output

    target = tmp_path / "out.csv"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), open_output(str(target)) as out:
        out.write("half")
        raise RuntimeError("stopped")
    assert target.read_text() == "old\n" and sorted(p.name for p in tmp_path.iterdir()) == [
        "out.csv"
    ]
    # A directory where FILE should go is never replaced.
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    (folder / "keep").write_text("mine")
    with pytest.raises(OutputError, match="cannot write"), open_output(str(folder)) as out:
        out.write("rows\n")
    assert (folder / "keep").read_text() == "mine"
    with pytest.raises(OutputError, match="cannot write"), open_output(str(tmp_path / "no" / "x")):
        pass
    with pytest.raises(OutputError, match="cannot write"):
        replace_output(tmp_path / "never-written", target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder.csv", "out.csv"]


# --------------------------------------------------------------------------- fields beside the rows


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table", "markdown"])
def test_json_fields_join_every_json_record_and_nothing_else(fmt: str) -> None:
    """A report's ``uncovered`` field: added to each JSON record after the row's own
    keys; formats without records are written exactly as without it."""
    fields = {"uncovered": {"gaps": 2, "seconds": 38.0}}
    rows = [("a", 1), ("b", None)]
    plain, extended = io.StringIO(), io.StringIO()
    assert write_rows(plain, fmt, ["k", "n"], rows) == 2
    assert write_rows(extended, fmt, ["k", "n"], rows, json_fields=fields) == 2
    if fmt not in ("json", "jsonl"):
        assert extended.getvalue() == plain.getvalue()
        return
    text = extended.getvalue()
    records = json.loads(text) if fmt == "json" else [json.loads(x) for x in text.splitlines()]
    assert records == [
        {"k": "a", "n": 1, "uncovered": {"gaps": 2, "seconds": 38.0}},
        {"k": "b", "n": None, "uncovered": {"gaps": 2, "seconds": 38.0}},
    ]
    assert [list(r)[:2] for r in records] == [["k", "n"], ["k", "n"]]
    # No rows: the same empty output as without the field.
    empty = io.StringIO()
    write_rows(empty, fmt, ["k"], [], json_fields=fields)
    assert empty.getvalue() == ("[]\n" if fmt == "json" else "")
