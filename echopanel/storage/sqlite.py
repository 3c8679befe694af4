"""``SessionStore`` on SQLite (the embedded default): one file (``<data_dir>/echopanel.db``), WAL journal, one
connection per thread. The statements are ``echopanel/storage/sql.py``'s, shared with PostgreSQL.

WAL with ``synchronous=NORMAL``: a commit is in the OS's page cache when ``add_item`` returns, so a killed server
process (even ``kill -9``) loses nothing it committed; only a power cut can lose the last commits before a
checkpoint. Readers never block the writer. One server uses one SQLite file: a fleet needs PostgreSQL.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

from echopanel.storage.sql import SCHEMA, SCHEMA_VERSION, Cursor, SqlStore


class SqliteStore(SqlStore):
    """The default store. Safe to use from several threads (each gets its own connection)."""

    kind = "sqlite"

    def __init__(self, path: Path, node_id: str = "") -> None:
        super().__init__(node_id)
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            # 1: before sessions.owner, 2: before sessions.epoch, 3: before sessions.handoff and detached_at
            if version == 1:
                conn.execute("ALTER TABLE sessions ADD COLUMN owner TEXT NOT NULL DEFAULT ''")
            if version in (1, 2):
                conn.execute("ALTER TABLE sessions ADD COLUMN epoch INTEGER NOT NULL DEFAULT 1")
            if version in (1, 2, 3):
                conn.execute("ALTER TABLE sessions ADD COLUMN handoff TEXT NOT NULL DEFAULT ''")
                conn.execute("ALTER TABLE sessions ADD COLUMN detached_at DOUBLE PRECISION")
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=10.0, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA busy_timeout = 10000")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Cursor]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn.cursor()
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        yield self._conn().cursor()

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass  # made in another thread that is gone; closed when collected
        self._local = threading.local()
