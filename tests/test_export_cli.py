"""`export` and `verify-export` at the edges: what --force may replace, odd paths,
killed and interrupted exports, pipes that close early, suffixes, forged manifests.

The signal and pipe tests run the real command as a separate process over an
archive large enough (150,000 events) that an export takes a while.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from ingest import migrate
from ingest.events import normalise
from ingest.store import Received, Store
from queries.export import sha256_file
from tests.analytics_fixture import build_archive
from tests.conftest import cli_command, invoke

BIG_EVENTS = 150_000


@pytest.fixture
def small(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The hand-built SQLite archive (33 events) and a directory to export into."""
    url = f"sqlite:///{tmp_path / 'archive.db'}"
    build_archive(url)
    out = tmp_path / "out"
    out.mkdir()
    yield url, out


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite archive of 150,000 events with its analytics copy refreshed."""
    from ingest.simulator import generate_events

    url = f"sqlite:///{tmp_path_factory.mktemp('big') / 'big.db'}"
    migrate.upgrade(url)
    store = Store.open(url)
    now = datetime.now(timezone.utc)
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    batch = [
        Received(normalise(json.dumps(e)), now) for e in generate_events(5, start, BIG_EVENTS, 1.0)
    ]
    store.write_batch("default", None, batch)
    store.close()
    assert invoke(["refresh", "--db", url]).exit_code == 0
    return url


def export(url: str, *args: str) -> Any:
    return invoke(["export", *args, "--db", url])


def error_line(result: Any) -> str:
    """The output's only line, which must be an ``Error:`` line (no traceback)."""
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return str(lines[0])


def tree(path: Path) -> dict[str, bytes | None]:
    """What is under ``path``: relative name -> bytes (None for directories)."""
    out: dict[str, bytes | None] = {}
    for item in sorted(path.rglob("*")):
        out[item.relative_to(path).as_posix()] = None if item.is_dir() else item.read_bytes()
    return out


def temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", ".old")))


# --------------------------------------------------------------------------- --force


def test_force_does_not_replace_a_directory_that_is_not_an_export(
    small: tuple[str, Path],
) -> None:
    url, out = small
    target = out / "x.csv"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    for extra in ([], ["--force"]):
        result = export(url, "-o", str(target), *extra)
        assert result.exit_code == 1
        line = error_line(result)
        assert "is a directory" in line and "choose another PATH" in line
        assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in out.iterdir()) == ["x.csv"]


def test_force_does_not_replace_a_file_without_a_manifest(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv"
    target.write_text("keep me")
    result = export(url, "-o", str(target), "--force")
    assert result.exit_code == 1
    line = error_line(result)
    assert "is not an export (no x.csv.manifest.json beside it)" in line
    assert target.read_text() == "keep me"


def test_force_replaces_a_previous_export_of_the_same_shape(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv"
    assert export(url, "-o", str(target), "--type", "grant.revoked").exit_code == 0
    result = export(url, "-o", str(target))
    assert result.exit_code == 1
    assert "x.csv exists (use --force to replace it)" in error_line(result)
    assert export(url, "-o", str(target), "--force").exit_code == 0
    assert json.loads((out / "x.csv.manifest.json").read_text())["rows"] == 29
    assert invoke(["verify-export", str(target)]).exit_code == 0

    lake = out / "lake.parquet"
    assert export(url, "-o", str(lake), "--partition-by", "day").exit_code == 0
    assert export(url, "-o", str(lake), "--partition-by", "month", "--force").exit_code == 0
    assert sorted(p.name for p in lake.iterdir()) == ["occurred_month=2026-03"]
    assert invoke(["verify-export", str(lake)]).exit_code == 0
    assert temps(out) == []


def test_force_refuses_a_partitioned_export_holding_other_files(small: tuple[str, Path]) -> None:
    url, out = small
    lake = out / "lake.parquet"
    assert export(url, "-o", str(lake), "--partition-by", "day").exit_code == 0
    (lake / "notes.txt").write_text("mine")
    before = tree(lake)
    result = export(url, "-o", str(lake), "--partition-by", "day", "--force")
    assert result.exit_code == 1
    line = error_line(result)
    assert "notes.txt" in line and "does not list" in line
    assert tree(lake) == before


@pytest.mark.parametrize("first", ["file", "partitioned"])
def test_force_refuses_an_export_of_another_shape(small: tuple[str, Path], first: str) -> None:
    url, out = small
    lake = out / "lake.parquet"
    partitioned = ["--partition-by", "day"]
    assert (
        export(url, "-o", str(lake), *(partitioned if first == "partitioned" else [])).exit_code
        == 0
    )
    before = tree(out)
    result = export(url, "-o", str(lake), "--force", *(partitioned if first == "file" else []))
    assert result.exit_code == 1
    assert "choose another PATH" in error_line(result)
    assert tree(out) == before


def test_force_refuses_a_manifest_that_is_not_an_export_s(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv"
    target.write_text("keep me")
    (out / "x.csv.manifest.json").write_text('{"hello": 1}')
    result = export(url, "-o", str(target), "--force")
    assert result.exit_code == 1
    assert "not a readable export manifest" in error_line(result)
    assert target.read_text() == "keep me"


@pytest.mark.parametrize("partition", [True, False])
def test_a_symlink_as_path_is_refused(small: tuple[str, Path], partition: bool) -> None:
    url, out = small
    real = out / "real.parquet"
    args = ["--partition-by", "day"] if partition else []
    assert export(url, "-o", str(real), *args).exit_code == 0
    (real if partition else out / "keep").mkdir(exist_ok=True)
    link = out / "link.parquet"
    link.symlink_to(real)
    before = tree(out)
    result = export(url, "-o", str(link), *args, "--force")
    assert result.exit_code == 1
    assert "is a symbolic link" in error_line(result)
    assert tree(out) == before
    assert link.is_symlink()


def test_a_symlink_as_the_manifest_is_refused(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv"
    assert export(url, "-o", str(target)).exit_code == 0
    elsewhere = out / "elsewhere.json"
    manifest = out / "x.csv.manifest.json"
    manifest.rename(elsewhere)
    manifest.symlink_to(elsewhere)
    before = tree(out)
    result = export(url, "-o", str(target), "--force")
    assert result.exit_code == 1
    assert "x.csv.manifest.json is a symbolic link" in error_line(result)
    assert tree(out) == before


def test_only_this_path_s_unheld_leftovers_are_removed(small: tuple[str, Path]) -> None:
    url, out = small
    ours = [".x.csv.0123abcd.tmp", ".x.csv.manifest.json.0123abcd.tmp"]
    for name in ours:
        (out / name).write_text("left by a killed export")
    (out / ".x.csv.4567cdef.old").mkdir()
    (out / ".x.csv.4567cdef.old" / "part.parquet").write_text("x")
    others = [".y.csv.0123abcd.tmp", ".x.csv.gz.0123abcd.tmp", ".x.csv.notes.tmp", "x.csv.tmp"]
    for name in others:
        (out / name).write_text("not ours")
    assert export(url, "-o", str(out / "x.csv")).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [*others, "x.csv", "x.csv.manifest.json"]
    )


# --------------------------------------------------------------------------- odd paths


def test_a_missing_directory_is_not_created(small: tuple[str, Path]) -> None:
    url, out = small
    result = export(url, "-o", str(out / "nope" / "deeper" / "x.csv"))
    assert result.exit_code == 1
    assert "no directory" in error_line(result)
    assert list(out.iterdir()) == []


def test_a_path_under_a_file_is_refused(small: tuple[str, Path]) -> None:
    url, out = small
    (out / "file").write_text("x")
    result = export(url, "-o", str(out / "file" / "x.csv"))
    assert result.exit_code == 1
    assert "is not a directory" in error_line(result)


def test_an_unwritable_directory_is_one_error_line(small: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = small
    if os.geteuid() == 0:
        # Root ignores permission bits; /proc refuses new files whoever asks.
        target = Path("/proc/x.csv")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        target = locked / "x.csv"
    result = export(url, "-o", str(target))
    assert result.exit_code == 1
    assert f"cannot write in {target.parent}" in error_line(result)
    assert not target.exists()


# --------------------------------------------------------------------------- suffixes


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("g.csv", ["--gzip"], "--gzip writes gzip"),
        ("x.jsonl", ["--format", "csv"], "ends in .jsonl but --format is csv"),
        ("x.csv", ["--format", "jsonl"], "ends in .csv but --format is jsonl"),
        ("x.csv.gz", ["--format", "parquet"], "--gzip is for csv and jsonl"),
        ("out.xlsx", [], "cannot tell the format"),
        ("out.gz", [], "cannot tell the format"),
        ("out", [], "cannot tell the format"),
        ("out", ["--format", "jsonl", "--gzip"], "--gzip writes gzip"),
    ],
)
def test_a_suffix_that_disagrees_with_the_content_is_refused(
    small: tuple[str, Path], name: str, args: list[str], message: str
) -> None:
    url, out = small
    result = export(url, "-o", str(out / name), *args)
    assert result.exit_code == 2, result.output
    (error,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert message in error
    assert list(out.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "args", "gzipped"),
    [
        ("x.csv.gz", [], True),
        ("x.csv.gz", ["--gzip"], True),
        ("x.ndjson", ["--format", "jsonl"], False),
        ("x.txt", ["--format", "csv"], False),
        ("export", ["--format", "jsonl"], False),
    ],
)
def test_suffixes_that_agree_are_written(
    small: tuple[str, Path], name: str, args: list[str], gzipped: bool
) -> None:
    url, out = small
    target = out / name
    result = export(url, "-o", str(target), *args)
    assert result.exit_code == 0, result.output
    assert (target.read_bytes()[:2] == b"\x1f\x8b") is gzipped
    assert invoke(["verify-export", str(target)]).exit_code == 0


def test_stdout_takes_any_format(small: tuple[str, Path]) -> None:
    url, _ = small
    result = export(url, "-o", "-", "--format", "jsonl", "--type", "grant.revoked")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 5


# --------------------------------------------------------------------------- verify-export


def _manifest(target: Path) -> tuple[Path, dict[str, Any]]:
    path = target.with_name(target.name + ".manifest.json")
    return path, json.loads(path.read_text())


def verify_error(target: Path) -> str:
    result = invoke(["verify-export", str(target)])
    assert result.exit_code == 1, result.output
    line = error_line(result)
    assert line.startswith("Error: verification failed: ")
    return line


def test_verify_refuses_a_manifest_that_lists_nothing(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv"
    assert export(url, "-o", str(target)).exit_code == 0
    path, record = _manifest(target)
    record["files"], record["rows"] = [], 0
    path.write_text(json.dumps(record))
    assert "must list exactly x.csv" in verify_error(target)
    target.write_text("anything at all")
    assert "must list exactly x.csv" in verify_error(target)


def test_verify_refuses_a_file_listed_under_another_name(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv"
    assert export(url, "-o", str(target)).exit_code == 0
    path, record = _manifest(target)
    record["files"][0]["path"] = "other.csv"
    path.write_text(json.dumps(record))
    assert "must list exactly x.csv" in verify_error(target)


def test_verify_refuses_an_emptied_partition_manifest(small: tuple[str, Path]) -> None:
    url, out = small
    lake = out / "lake.parquet"
    assert export(url, "-o", str(lake), "--partition-by", "day").exit_code == 0
    path, record = _manifest(lake)
    record["files"], record["rows"] = [], 0
    path.write_text(json.dumps(record))
    assert "is not in the manifest" in verify_error(lake)


def test_verify_reports_a_truncated_gzip(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv.gz"
    assert export(url, "-o", str(target)).exit_code == 0
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    path, record = _manifest(target)
    record["files"][0]["sha256"] = sha256_file(target)
    path.write_text(json.dumps(record))
    line = verify_error(target)
    assert "cannot be read as gzip csv" in line


def test_verify_reports_a_corrupt_parquet_file(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.parquet"
    assert export(url, "-o", str(target)).exit_code == 0
    target.write_bytes(b"PAR1 not really")
    path, record = _manifest(target)
    record["files"][0]["sha256"] = sha256_file(target)
    path.write_text(json.dumps(record))
    assert "cannot be read as parquet" in verify_error(target)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda r: r.pop("files"), "'files' is missing"),
        (lambda r: r.update(files="x.csv"), "'files' must be a list, not str"),
        (lambda r: r.update(rows="33"), "'rows' must be a whole number"),
        (lambda r: r.update(rows=True), "'rows' must be a whole number"),
        (lambda r: r.pop("export"), "'export' is missing"),
        (lambda r: r["export"].update(format="xml"), "'export.format' must be one of"),
        (lambda r: r["export"].update(gzip="no"), "'export.gzip' must be true or false"),
        (lambda r: r["export"].update(partition_by="week"), "'export.partition_by' must be"),
        (lambda r: r.update(format=2), "manifest format 2"),
        (lambda r: r["files"].append(5), "'files[1]' must be an object"),
        (lambda r: r["files"][0].pop("sha256"), "'files[0].sha256' is missing"),
        (lambda r: r["files"][0].update(sha256="abc"), "'files[0].sha256' must be 64"),
        (lambda r: r["files"][0].update(rows=-1), "'files[0].rows' must be a whole number"),
        (lambda r: r["files"][0].update(path="../x.csv"), "'files[0].path' must be a relative"),
        (lambda r: r["files"][0].update(path=7), "'files[0].path' must be a string"),
        (
            lambda r: r.update(rows=34),
            "the manifest's files hold 29 rows in all, but its 'rows' says 34",
        ),
    ],
)
def test_verify_checks_the_manifest_s_structure(
    small: tuple[str, Path], edit: Any, message: str
) -> None:
    url, out = small
    target = out / "x.csv"
    assert export(url, "-o", str(target)).exit_code == 0
    path, record = _manifest(target)
    edit(record)
    path.write_text(json.dumps(record))
    assert message in verify_error(target)


@pytest.mark.parametrize("text", ["[1, 2]", "null", '"text"'])
def test_verify_refuses_a_manifest_that_is_not_an_object(
    small: tuple[str, Path], text: str
) -> None:
    url, out = small
    target = out / "x.csv"
    assert export(url, "-o", str(target)).exit_code == 0
    (out / "x.csv.manifest.json").write_text(text)
    assert "not a JSON object" in verify_error(target)


# --------------------------------------------------------------------------- processes


def _start(url: str, target: Path, *args: str, nice: bool = False) -> subprocess.Popen[bytes]:
    """The export as a child process; ``nice`` gives it a low CPU priority, so that
    the test, polling for its progress, acts on what it sees before the export moves on."""
    return subprocess.Popen(
        [*cli_command(), "export", "-o", str(target), "--db", url, "--no-refresh", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=(lambda: os.nice(10)) if nice else None,
    )


def _data_temps(directory: Path, name: str) -> list[Path]:
    """The export's own temporary file or directory (``.NAME.<8 hex>.tmp``), not the
    manifest's, whose name (``.NAME.manifest.json.<8 hex>.tmp``) the export writes after
    the data is in place."""
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{8}}\.tmp")
    return [p for p in directory.iterdir() if pattern.fullmatch(p.name)]


def _wait_for_temp(
    proc: subprocess.Popen[bytes], directory: Path, name: str, known: Sequence[str] = ()
) -> Path:
    """The export's temporary file (not one of ``known``), once it holds some bytes."""
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, "the export ended first"
        assert time.monotonic() < deadline, "no temporary file after 60 s"
        found = [
            p
            for p in _data_temps(directory, name)
            if p.name not in known and p.exists() and p.stat().st_size > 0
        ]
        if found:
            return found[0]
        time.sleep(0.002)


@pytest.mark.slow
def test_a_killed_export_s_temp_file_is_cleaned_by_the_next(big: str, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    left: list[str] = []
    for _ in range(2):
        proc = _start(big, target)
        _wait_for_temp(proc, tmp_path, "out.csv", left)
        proc.kill()
        proc.communicate(timeout=30)
        # Each run removed what the run before it left.
        assert len(temps(tmp_path)) == 1 and temps(tmp_path) != left
        left = temps(tmp_path)
    result = invoke(["export", "-o", str(target), "--db", big, "--no-refresh"])
    assert result.exit_code == 0, result.output
    assert temps(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "out.csv.manifest.json"]
    verified = invoke(["verify-export", str(target)])
    assert verified.exit_code == 0 and f"holds {BIG_EVENTS} rows" in verified.output


@pytest.mark.slow
def test_a_running_export_s_temp_file_is_left_alone(big: str, tmp_path: Path) -> None:
    target = tmp_path / "out.csv"
    quick = ["export", "-o", str(target), "--db", big, "--no-refresh", "--type", "sso.login"]
    assert invoke(quick).exit_code == 0
    proc = _start(big, target, "--force")
    try:
        live = _wait_for_temp(proc, tmp_path, "out.csv")
        proc.send_signal(signal.SIGSTOP)  # still running, and holding its temporary file
        result = invoke([*quick, "--force"])
        assert result.exit_code == 0, result.output
        assert live.exists()
    finally:
        proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert temps(tmp_path) == []
    verified = invoke(["verify-export", str(target)])
    assert verified.exit_code == 0 and f"holds {BIG_EVENTS} rows" in verified.output


def _caught_writing(proc: subprocess.Popen[bytes], directory: Path, name: str) -> bool:
    """Whether the export's temporary file was seen before the export ended."""
    deadline = time.monotonic() + 200
    while not _data_temps(directory, name):
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no temporary file after 200 s"
        time.sleep(0.002)
    return True


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("args", [[], ["--partition-by", "day"]])
def test_ctrl_c_ends_an_export_with_130_and_leaves_nothing(
    big: str, tmp_path: Path, args: list[str]
) -> None:
    name = "out.parquet" if args else "out.csv"
    for _ in range(3):
        # Lowered priority lets the test's polling act before the export moves on; on a
        # machine busy enough for the export to finish unseen, it simply runs again.
        proc = _start(big, tmp_path / name, *args, nice=True)
        if _caught_writing(proc, tmp_path, name):
            break
        proc.communicate(timeout=60)
        for path in tmp_path.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        pytest.fail("the export ended before its temporary file was seen, three times")
    # Frozen while it writes, the export meets the interrupt as soon as it runs again,
    # however busy the machine is (other test workers) when the file appears.
    proc.send_signal(signal.SIGSTOP)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    text = err.decode()
    assert "Traceback" not in text
    assert text.strip().splitlines() == [
        f"Error: interrupted; nothing was written to {tmp_path / name}"
    ]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_export_to_a_pipe_that_closes_early_ends_quietly(big: str, tmp_path: Path) -> None:
    errors = tmp_path / "stderr"
    with open(errors, "wb") as err:
        proc = subprocess.Popen(
            [*cli_command(), "export", "-o", "-", "--db", big, "--no-refresh"],
            stdout=subprocess.PIPE,
            stderr=err,
        )
        assert proc.stdout is not None
        header = proc.stdout.readline()
        proc.stdout.close()  # as `| head -1` does
        proc.wait(timeout=60)
    assert header.startswith(b"id,type,occurred_at")
    assert errors.read_bytes() == b""
    assert proc.returncode == 0


def test_gzip_to_stdout_still_works(small: tuple[str, Path]) -> None:
    url, _ = small
    proc = subprocess.run(
        [*cli_command(), "export", "-o", "-", "--gzip", "--db", url, "--type", "grant.revoked"],
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(gzip.decompress(proc.stdout).splitlines()) == 6


def test_verify_refuses_a_manifest_nested_too_deeply(small: tuple[str, Path]) -> None:
    url, out = small
    target = out / "x.csv"
    assert export(url, "-o", str(target)).exit_code == 0
    (out / "x.csv.manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert "JSON nested too deeply" in verify_error(target)
