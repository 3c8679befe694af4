"""A fleet on one machine: PostgreSQL, N EchoPanel nodes sharing a data directory, and HAProxy in front, all from
Debian's packages on 127.0.0.1 (docs/deployment.md). The fleet tests use it; so does ``deploy/fleet.sh``:

    with fleet(3, root) as f:         # f.url: ws://127.0.0.1:PORT/v1/live through HAProxy
        f.kill(0)                     # SIGKILL node 0 (its sessions resume on another node)
        f.restart(0)                  # start it again on its port, same node id
        f.stop(1)                     # SIGTERM: node 1 drains (hands its sessions off), then exits

Each node keeps its port for its whole life (a restart comes back where HAProxy expects it); HAProxy's config is
``deploy/haproxy.cfg`` with the listening address and one ``server`` line per node filled in.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from echopanel.client.resilient import ResilientClient
from echopanel.flow.breaker import BreakerSettings
from echopanel.testing.postgres import fresh_database, postgres_server
from echopanel.testing.server import CHECKOUT, ServerProcess, free_port, start_server

HAPROXY_CONFIG = CHECKOUT / "deploy" / "haproxy.cfg"


def haproxy_config(front_port: int, node_ports: Sequence[int], template: Path = HAPROXY_CONFIG) -> str:
    servers = "\n".join(f"    server node{i} 127.0.0.1:{port} check" for i, port in enumerate(node_ports))
    return template.read_text().replace("@FRONT@", f"127.0.0.1:{front_port}").replace("@SERVERS@", servers)


@dataclass
class Fleet:
    store: str  # the PostgreSQL URL every node uses
    data_dir: Path  # shared by every node (recordings)
    front_port: int
    ports: list[int]
    args: list[str]
    env: dict[str, str]
    nodes: list[ServerProcess | None] = field(default_factory=list)
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    _node_stacks: list[contextlib.ExitStack] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.front_port}/v1/live"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.front_port}"

    def node(self, i: int) -> ServerProcess:
        node = self.nodes[i]
        assert node is not None, f"node {i} is not running"
        return node

    def start(self, i: int) -> ServerProcess:
        stack = contextlib.ExitStack()
        args = ["--store", self.store, "--node-id", f"node{i}", "--port", str(self.ports[i]), *self.args]
        node = stack.enter_context(start_server(args=args, data_dir=self.data_dir, env=self.env))
        self.nodes[i] = node
        self._node_stacks[i] = stack
        return node

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (a crash: nothing is flushed, handed off or closed)."""
        node = self.node(i)
        node.proc.kill()
        node.proc.wait(10)
        self._close(i)

    def stop(self, i: int, timeout_s: float = 60.0) -> float:
        """SIGTERM node ``i`` and wait for it to exit (it drains first); returns the seconds it took."""
        node = self.node(i)
        started = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        node.proc.wait(timeout_s)
        took = time.monotonic() - started
        self._close(i)
        return took

    def owner(self, session_id: str) -> int:
        """The index of the node that owns ``session_id`` now (read from the store)."""
        from echopanel.storage.postgres import PostgresStore

        store = PostgresStore(self.store)
        try:
            found = store.owner(session_id)
        finally:
            store.close()
        if found is None:
            raise LookupError(f"no session {session_id} in the store")
        return int(found[0].removeprefix("node"))

    def client(self, url: str | None = None, sources: Sequence[str] = ("mic",)) -> ResilientClient:
        """The project's resilient client, reconnecting fast and never giving up (a fleet test's outages are many
        and short), to the balancer or ``url``."""
        return ResilientClient(
            url or self.url,
            sources=list(sources),
            backoff_base_s=0.05,
            backoff_max_s=0.5,
            breaker=BreakerSettings(failure_threshold=10_000),
        )

    def pause(self, i: int) -> None:
        os.kill(self.node(i).pid, signal.SIGSTOP)

    def resume(self, i: int) -> None:
        os.kill(self.node(i).pid, signal.SIGCONT)

    def restart(self, i: int) -> ServerProcess:
        if self.nodes[i] is not None:
            self.stop(i)
        node = self.start(i)
        wait_up(self.front_port, node.port)
        return node

    def close_all(self) -> None:
        for i, node in enumerate(self.nodes):
            if node is not None:
                self._close(i)

    def _close(self, i: int) -> None:
        stack = self._node_stacks[i]
        self.nodes[i] = None
        stack.close()


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def wait_up(front_port: int, node_port: int, timeout_s: float = 15.0) -> None:
    """Until HAProxy's health checks see the node (``rise 2`` x ``fastinter``: about 1 s)."""
    wait_port(node_port, timeout_s)
    time.sleep(1.5)


@contextlib.contextmanager
def fleet(
    n: int,
    root: Path,
    *,
    store: str | None = None,
    args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    fsync: bool = False,
) -> Iterator[Fleet]:
    """PostgreSQL (a fresh database on ``store``'s server, or a server of its own: with ``fsync``, commits wait for
    the disk as in production), ``n`` nodes, HAProxy."""
    haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(haproxy).exists():
        raise RuntimeError("HAProxy is not installed (Debian: apt-get install haproxy)")
    with contextlib.ExitStack() as stack:
        url = fresh_database(store) if store else stack.enter_context(postgres_server(root, fsync=fsync))
        data_dir = root / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        ports = [free_port() for _ in range(n)]
        f = Fleet(url, data_dir, free_port(), ports, list(args), dict(env or {}))
        f.nodes = [None] * n
        f._node_stacks = [contextlib.ExitStack() for _ in range(n)]
        stack.callback(f.close_all)
        for i in range(n):
            f.start(i)
        config = root / "haproxy.cfg"
        config.write_text(haproxy_config(f.front_port, ports))
        log = open(root / "haproxy.log", "wb")
        stack.callback(log.close)
        proxy = subprocess.Popen([haproxy, "-db", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
        stack.callback(_end, proxy)
        try:
            wait_port(f.front_port)
        except RuntimeError:
            raise RuntimeError("HAProxy did not start: " + (root / "haproxy.log").read_text()[-2000:]) from None
        time.sleep(1.5)  # the first health checks
        yield f


def _end(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def main(argv: list[str] | None = None) -> None:
    """``deploy/fleet.sh``: bring a fleet up on this machine and keep it until Ctrl-C."""
    p = argparse.ArgumentParser(prog="fleet", description=__doc__.split("\n\n")[0])
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--root", type=Path, default=None, help="where the database, recordings and config go (temp)")
    p.add_argument("--store", default=None, help="a PostgreSQL server to use (a fresh database is made on it)")
    a = p.parse_args(argv)
    root = a.root or Path(os.environ.get("TMPDIR", "/tmp")) / f"echopanel-fleet-{os.getpid()}"
    root.mkdir(parents=True, exist_ok=True)
    with fleet(a.nodes, root, store=a.store, fsync=True) as f:
        print(f"fleet up: {a.nodes} nodes behind HAProxy at {f.url} (page: {f.http}/); store {f.store}", flush=True)
        for i, port in enumerate(f.ports):
            print(f"  node{i}: http://127.0.0.1:{port}/ready (pid {f.node(i).pid})", flush=True)
        print("Ctrl-C stops everything", flush=True)

        def stop(signum: int, frame: object) -> None:
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main(sys.argv[1:])
