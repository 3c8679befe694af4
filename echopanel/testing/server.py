"""A real ``echopanel serve`` subprocess for tests and benchmarks, and CPU/RSS of a process tree.

    with start_server(env={"ECHOPANEL_RESUME_GRACE_S": "6"}) as server:   # port 0: any free port
        client = LiveClient(server.url, sources=["mic"])                  # ws://127.0.0.1:PORT/v1/live
        ...                                                               # server.http, server.port, server.log

The server runs from the checkout this ``echopanel`` package was imported from (its parent directory is the
working directory), so a test run in one worktree starts that worktree's server. Needs ``psutil`` (the test extra)
for the CPU and RSS figures only.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import echopanel

CHECKOUT = Path(echopanel.__file__).resolve().parent.parent  # the directory holding the imported package
READY = re.compile(r"EchoPanel ready: (ws://[\d.]+:\d+/v1/live)")


@dataclass
class ServerProcess:
    """A running ``echopanel serve`` subprocess; ``log`` keeps its last stderr lines."""

    proc: subprocess.Popen[str]
    url: str
    log: deque[str] = field(default_factory=lambda: deque(maxlen=2000))
    warnings: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1].split("/", 1)[0])

    @property
    def http(self) -> str:
        return self.url.replace("ws://", "http://").rsplit("/v1/", 1)[0]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its children so far."""
        return process_tree_cpu(self.proc.pid)

    def rss_bytes(self) -> int:
        return process_tree_rss(self.proc.pid)


def process_tree_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and all its descendants (those still alive)."""
    import psutil

    total = 0.0
    for p in _tree(pid):
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def process_tree_rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes."""
    import psutil

    total = 0
    for p in _tree(pid):
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _tree(pid: int) -> list[Any]:
    import psutil

    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for a server that must keep its port across a restart)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def start_server(
    *,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
    data_dir: str | Path | None = None,
    ready_timeout_s: float = 180.0,
    quiet: bool = True,
    keep_data: bool = False,
) -> Iterator[ServerProcess]:
    """Start ``python -m echopanel serve --port 0 [args]``; yield once it logged its ready line.

    The data dir is ``data_dir`` (kept) or a temporary one (removed on exit unless ``keep_data``). A later
    ``--port`` in ``args`` wins over the 0.

    Stderr is drained on a thread (lines with WARNING/ERROR/Traceback are kept in ``warnings``, and echoed unless
    ``quiet``). The server gets SIGTERM on exit, then SIGKILL if it has not stopped after 15 s; its data dir
    (session recordings) is removed unless ``keep_data``.
    """
    keep_data = keep_data or data_dir is not None
    data_dir = str(data_dir) if data_dir is not None else tempfile.mkdtemp(prefix="echopanel-server-")
    full_env = {**os.environ, "ECHOPANEL_LOG_LEVEL": "info", **(env or {})}
    cmd = [sys.executable, "-m", "echopanel", "serve", "--port", "0", "--data-dir", data_dir, *args]
    proc = subprocess.Popen(
        cmd,
        cwd=CHECKOUT,
        env=full_env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    server = ServerProcess(proc, "")
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.rstrip()
            server.log.append(line)
            if not server.url:
                m = READY.search(line)
                if m:
                    server.url = m.group(1)
                    ready.set()
            if any(word in line for word in ("WARNING", "ERROR", "CRITICAL", "Traceback", "Exception")):
                server.warnings.append(line)
                if not quiet:
                    print(f"[server] {line}", file=sys.stderr)
        ready.set()

    pump_thread = threading.Thread(target=pump, name="server-stderr", daemon=True)
    pump_thread.start()
    started = time.monotonic()
    try:
        if not ready.wait(ready_timeout_s) or not server.url:
            raise RuntimeError("server did not become ready:\n" + "\n".join(list(server.log)[-40:]))
        print(f"server pid {proc.pid} ready at {server.url} after {time.monotonic() - started:.1f}s", file=sys.stderr)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        pump_thread.join(timeout=5)
        if not keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
