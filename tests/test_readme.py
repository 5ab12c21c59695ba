"""The README's cron entry, systemd units and install steps work as written.

The blocks are found by the HTML comments in front of them
(``<!-- cron: PATH -->``, ``<!-- unit: NAME -->``), never by line number.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import API_KEY, rows

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"<!-- (cron|unit): (\S+) -->\n```\w*\n(.*?)\n```", re.DOTALL)
# Where the README installs the command, and the command these tests installed.
README_EXE = "/opt/grantex-archive/bin/grantex-archive"
EXE = Path(sys.executable).with_name("grantex-archive")
SYSTEMD_ANALYZE = Path("/usr/bin/systemd-analyze")


def blocks(kind: str) -> dict[str, str]:
    return {name: body for k, name, body in BLOCK.findall(README) if k == kind}


def section(heading: str) -> str:
    start = README.index(f"\n## {heading}\n")
    end = README.find("\n## ", start + 1)
    return README[start : end if end != -1 else None]


# -- cron ----------------------------------------------------------------------


def parse_cron_file(text: str) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """A cron.d file's variable lines, and the schedule and command of each job line."""
    env: dict[str, str] = {}
    commands: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assignment = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)", line)
        if assignment:
            env[assignment[1]] = assignment[2]
            continue
        # minute hour day month weekday user command, or @reboot user command
        times = 1 if line.startswith("@") else 5
        fields = line.split(None, times + 1)
        assert len(fields) == times + 2, f"not a cron.d job line: {line}"
        assert re.fullmatch(r"[a-z_][a-z0-9_-]*", fields[times]), f"no user field: {line}"
        commands.append((" ".join(fields[:times]), fields[times + 1]))
    return env, commands


@pytest.fixture
def simulator_process() -> Iterator[tuple[str, str]]:
    """`grantex-archive simulate` on a free port: (base URL, start of its history)."""
    proc = subprocess.Popen(
        [str(EXE), "simulate", "--port", "0", "--backlog", "400", "--rate", "0"],
        env={"PATH": "/usr/bin:/bin", "GRANTEX_API_KEY": API_KEY},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        start = proc.stdout.readline().split()[-1]
        assert url.startswith("http://127.0.0.1:"), url
        yield url, start
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)


@pytest.mark.timeout(180)
def test_cron_entry_runs_under_crons_environment(
    tmp_path: Path, simulator_process: tuple[str, str]
) -> None:
    base_url, history_start = simulator_process
    (name, text), *others = blocks("cron").items()
    assert not others and name == "/etc/cron.d/grantex-archive"
    env, jobs = parse_cron_file(text)
    schedules = dict(jobs)
    assert set(schedules) == {"*/5 * * * *", "@reboot"}, jobs
    # The run at boot is the same run as every five minutes.
    assert len(set(schedules.values())) == 1, jobs
    command = schedules["@reboot"]
    assert command.count(README_EXE) == 2, "both commands by the absolute path"

    # The README's system paths, moved under tmp_path.
    moves = {
        README_EXE: str(EXE),
        "/var/lib/grantex/": f"{tmp_path}/state/",
        "/var/log/grantex/": f"{tmp_path}/logs/",
        "/etc/grantex/": f"{tmp_path}/conf/",
    }
    for old, new in moves.items():
        command = command.replace(old, new)
        env = {k: v.replace(old, new) for k, v in env.items()}
    rest = " ".join([command, *env.values()])
    for known in (str(tmp_path), str(EXE), "/dev/null"):
        rest = rest.replace(known, "")
    assert not re.search(r"/(opt|var|etc)/", rest), f"a path outside the test: {command}"
    # Rate 0 means the stream is idle as soon as the history is replayed:
    # shorten the waits that end the run, whichever of them the entry uses.
    command = re.sub(r"--until-idle\s+\S+", "--until-idle 1", command)
    command = re.sub(r"--max-runtime\s+\S+", "--max-runtime 15", command)
    assert "--until-idle" in command or "--max-runtime" in command, "a cron run must end"
    for directory in ("state", "logs", "conf", "home", "cwd"):
        (tmp_path / directory).mkdir()
    (tmp_path / "conf" / "key").write_text(API_KEY + "\n")

    archive = env["GRANTEX_ARCHIVE_DB"]
    assert archive == f"sqlite:///{tmp_path}/state/archive.db"
    # A new archive starts live (the service replays nothing it sent before),
    # so a first run by hand takes one event; cron resumes from it.
    subprocess.run(
        [
            *(str(EXE), "ingest", "--db", archive, "--base-url", base_url),
            *("--since", history_start, "--max-events", "1", "-q"),
        ],
        env={"PATH": "/usr/bin:/bin", "GRANTEX_API_KEY": API_KEY},
        check=True,
        timeout=60,
    )
    assert rows(archive, "SELECT count(*) FROM events") == [(1,)]

    cron_env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "SHELL": "/bin/sh",
        "LOGNAME": "grantex",
        **env,
        # The one setting that differs from the real service.
        "GRANTEX_BASE_URL": base_url,
    }
    result = subprocess.run(
        ["/bin/sh", "-c", command],
        env=cron_env,
        cwd=tmp_path / "cwd",
        capture_output=True,
        text=True,
        timeout=150,
    )
    log = "\n".join(p.read_text() for p in (tmp_path / "logs").iterdir())
    assert result.returncode == 0, (result.stdout, result.stderr, log)
    assert result.stdout == "" and result.stderr == "", "cron mails any output"
    assert rows(archive, "SELECT count(*) FROM events") == [(400,)]
    ((outcome,),) = rows(archive, "SELECT outcome FROM ingest_runs ORDER BY id DESC LIMIT 1")
    assert outcome in ("idle", "max_runtime")
    # The log holds the run's JSON lines (stderr goes there, not to cron's mail).
    assert log.strip() and all(json.loads(line) for line in log.splitlines())
    # refresh ran on the same archive: its copy is beside it, none in the cwd.
    assert (tmp_path / "state" / "archive.db.analytics").is_dir()
    assert list((tmp_path / "cwd").iterdir()) == []


# -- systemd -------------------------------------------------------------------


def unit_blocks() -> dict[str, str]:
    units = blocks("unit")
    assert units, "no unit blocks marked in the README"
    return units


def ini_value(text: str, key: str) -> str | None:
    found = re.findall(rf"^{key}=(.*)$", text, re.MULTILINE)
    return found[-1].strip() if found else None


def test_timer_starts_a_oneshot_service() -> None:
    units = unit_blocks()
    timers = [name for name in units if name.endswith(".timer")]
    assert timers
    for timer in timers:
        target = ini_value(units[timer], "Unit") or timer.removesuffix(".timer") + ".service"
        assert target in units, f"{timer} starts {target}, which the README does not show"
        assert ini_value(units[target], "Type") == "oneshot", f"{timer} starts {target}"
        assert "--until-idle" in (ini_value(units[target], "ExecStart") or "")


def test_every_unit_named_in_the_text_is_shown() -> None:
    units = unit_blocks()
    for name in re.findall(r"/etc/systemd/system/([\w.-]+)", README):
        assert name in units, name


@pytest.mark.skipif(not SYSTEMD_ANALYZE.exists(), reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    paths = []
    for name, body in unit_blocks().items():
        assert README_EXE in body or name.endswith(".timer"), name
        path = tmp_path / name
        # verify checks that ExecStart's program exists and is executable.
        path.write_text(body.replace(README_EXE, str(EXE)) + "\n")
        paths.append(path)
    result = subprocess.run(
        [str(SYSTEMD_ANALYZE), "verify", "--man=no", *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Lines about the host's own units are not ours to judge.
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if any(path.name in line for path in paths)
    ]
    assert result.returncode == 0 and not ours, result.stdout + result.stderr


# -- installing ----------------------------------------------------------------


def test_quick_start_says_where_the_command_is_and_installs_from_a_checkout() -> None:
    quick_start = section("Quick start")
    assert ".venv/bin/grantex-archive" in quick_start
    assert "source .venv/bin/activate" in quick_start
    assert "pip install '.[postgres]'" in quick_start


def test_configuration_says_where_a_postgresql_password_goes() -> None:
    configuration = section("Configuration")
    assert "PostgreSQL password never goes on the command line" in configuration
    for place in ("PGPASSFILE", ".pgpass", "EnvironmentFile="):
        assert place in configuration, place
    # No example puts a password in a --db flag.
    assert not re.search(r"--db\s+postgresql\S*://[^@\s/]*:[^@\s]*@", README)
