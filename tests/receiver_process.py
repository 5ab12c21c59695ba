"""The real ``grantex-archive receive`` as a child process, and signed deliveries to it."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from ingest.receiver.signature import sign
from tests.conftest import spawn

SECRET = "whsec_5f1e0c2d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"
LISTENING = re.compile(r"receiving webhooks on (http://\S+?)(/\S*) for source")


@dataclass
class Running:
    process: subprocess.Popen[str]
    base_url: str
    webhook_url: str
    stderr: list[str] = field(default_factory=list)

    def post(
        self,
        body: bytes,
        secret: str = SECRET,
        timestamp: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return httpx.post(
            self.webhook_url, content=body, headers=headers or signed(body, secret, timestamp)
        )

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit code."""
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout)

    def output(self) -> str:
        """Everything the process wrote (stdout after it ended, and stderr)."""
        out = (
            self.process.stdout.read()
            if self.process.stdout and self.process.poll() is not None
            else ""
        )
        return out + "".join(self.stderr)


def signed(body: bytes, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    """The headers the service sends with a delivery."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/json",
        "User-Agent": "Grantex-Webhooks/0.1",
        "X-Grantex-Timestamp": stamp,
        "X-Grantex-Signature-V2": sign(secret.encode(), stamp, body),
    }


@contextmanager
def receiver(url: str, tmp_path: Path, *extra: str, secrets: str = SECRET) -> Iterator[Running]:
    """Start the receiver on a free loopback port; stop it (SIGTERM) afterwards."""
    secret_file = tmp_path / "webhook-secret"
    secret_file.write_text(secrets + "\n")
    process = spawn(
        ["receive", "--db", url, "--listen", "127.0.0.1:0", "--secret-file", str(secret_file),
         *extra]
    )  # fmt: skip
    lines: list[str] = []
    threading.Thread(target=_drain, args=(process, lines), daemon=True).start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = next((m for line in list(lines) if (m := LISTENING.search(line))), None)
            if found:
                base = found.group(1)
                yield Running(process, base, base + found.group(2), lines)
                return
            if process.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"receiver exited {process.returncode}: {''.join(lines)}")
            time.sleep(0.05)
        raise AssertionError(f"receiver did not start: {''.join(lines)}")
    finally:
        if process.poll() is None:
            process.terminate()
            process.wait(30)


def _drain(process: subprocess.Popen[str], lines: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        lines.append(line)
