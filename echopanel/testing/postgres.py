"""A real PostgreSQL server for tests and demos: Debian's binaries, a cluster of its own in a temporary directory,
on 127.0.0.1 and a free port, stopped (and deleted) on exit.

    with postgres_server(tmp_path) as url:     # postgresql://echopanel@127.0.0.1:PORT/echopanel
        store = PostgresStore(url)

PostgreSQL refuses to run as root: as root, the cluster belongs to (and runs as) the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL binaries (the newest installed), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def postgres_server(
    root: Path | None = None, *, user: str = "echopanel", db: str = "echopanel", fsync: bool = False
) -> Iterator[str]:
    """Start a throwaway PostgreSQL; yields its URL (trust authentication on loopback only). Without ``fsync`` (tests)
    commits do not wait for the disk; benchmarks of commit latency turn it on, as a real deployment has it."""
    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
    as_root = os.geteuid() == 0
    # As root the cluster's user must reach it: the system temporary directory, not ``root`` (may be 0700).
    base = Path(tempfile.mkdtemp(prefix="echopanel-pg-", dir=None if as_root else root))
    data, sockets = base / "data", base / "run"
    data.mkdir()
    sockets.mkdir()
    if as_root:
        base.chmod(0o755)
        shutil.chown(data, "postgres")
        shutil.chown(sockets, "postgres")

    def run(*cmd: str) -> None:
        argv = ["runuser", "-u", "postgres", "--", *cmd] if as_root else list(cmd)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            log = sockets / "postgres.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise RuntimeError(f"{' '.join(cmd[:1])} failed ({done.returncode}): {done.stderr.strip()} {tail}")

    port = free_port()
    run(str(bindir / "initdb"), "-D", str(data), "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8")
    durability = "" if fsync else " -c fsync=off"
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets}{durability} -c max_connections=100"
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-o",
        options,
        "-l",
        str(sockets / "postgres.log"),
        "-w",
        "-t",
        "60",
        "start",
    )
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", user, db)
        yield f"postgresql://{user}@127.0.0.1:{port}/{db}"
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError, RuntimeError):
            run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


def fresh_database(url: str) -> str:
    """A new, empty database on the server at ``url``; returns its URL (tests: one database per test)."""
    import uuid

    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name
