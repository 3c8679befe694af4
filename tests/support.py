"""Test support: real server processes on port 0, fixture audio and references, WER."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from echopanel.evaluation import normalize as normalize  # re-exported for the tests
from echopanel.evaluation import wer as wer

FIXTURES = Path(__file__).parent / "fixtures" / "audio"
LIBRIVOX = FIXTURES / "librivox"
PHONE = FIXTURES / "phone"
CARDS = FIXTURES / "cards"
READY = re.compile(r"EchoPanel ready: ws://([\d.]+):(\d+)/v1/live")


def librivox_refs() -> dict[str, str]:
    refs = {}
    for line in (LIBRIVOX / "transcription").read_text().splitlines():
        m = re.match(r"<s> (.*) </s> \((.*)\)", line.strip())
        if m:
            refs[m.group(2)] = m.group(1)
    return refs


def phone_ref(start_s: float = 0.0) -> str:
    words = []
    for line in (PHONE / "sample.stm").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and float(parts[3]) >= start_s:
            words.append(parts[5])
    return " ".join(words)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    host: str
    port: int
    log: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/v1/live"

    @property
    def http(self) -> str:
        return f"http://{self.host}:{self.port}"


@contextmanager
def run_server(
    tmp: Path, *, env: dict[str, str] | None = None, args: list[str] | None = None
) -> Iterator[ServerProcess]:
    """Start ``echopanel serve --port 0`` as a real process; yield once it logged its ready line."""
    full_env = {**os.environ, "ECHOPANEL_LOG_LEVEL": "info", **(env or {})}
    cmd = [sys.executable, "-m", "echopanel", "serve", "--port", "0", "--data-dir", str(tmp), *(args or [])]
    proc = subprocess.Popen(cmd, env=full_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    assert proc.stderr is not None
    lines: list[str] = []
    found: list[tuple[str, int]] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line.rstrip())
            m = READY.search(line)
            if m and not found:
                found.append((m.group(1), int(m.group(2))))
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(120) or not found:
        proc.kill()
        raise RuntimeError("server did not become ready:\n" + "\n".join(lines[-40:]))
    server = ServerProcess(proc, found[0][0], found[0][1], lines)
    try:
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def wait_until(predicate: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.05)
    return False
