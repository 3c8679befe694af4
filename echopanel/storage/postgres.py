"""``SessionStore`` on PostgreSQL, for a fleet of nodes sharing one database (docs/deployment.md).

psycopg 3 with a small connection pool (``psycopg_pool``): each write is one transaction, committed when the
statement block ends (rolled back on error); the schema is created, or migrated, at start under an advisory lock, so
nodes starting together do not race. The statements are ``echopanel/storage/sql.py``'s, shared with SQLite.

Node liveness: a node holds a session-level advisory lock keyed by its node id on a connection of its own for as
long as it runs. When its process dies, PostgreSQL drops the connection and the lock with it, so other nodes see it
dead at once (``node_alive``); a node that hangs keeps its lock but stops its heartbeat (``takeable``). A second
process started with the same node id is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from echopanel.storage.sql import SCHEMA, Cursor, SqlStore

MIGRATE_LOCK = 0x45_50_53_43  # pg_advisory_xact_lock key while the schema is created or migrated ("EPSC")
FLEET_LOCK = 0x45_50_46_4C  # pg_advisory_xact_lock key while a fleet slot is counted and taken ("EPFL")
MIGRATIONS = (  # schema 1 -> 4
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS owner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS epoch INTEGER NOT NULL DEFAULT 1",
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS handoff TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS detached_at DOUBLE PRECISION",
)


class PostgresStore(SqlStore):
    """Safe to use from several threads: each call borrows a pooled connection."""

    placeholder = "%s"
    kind = "postgresql"

    def __init__(self, url: str, node_id: str = "", *, max_connections: int = 4, timeout_s: float = 10.0) -> None:
        super().__init__(node_id)
        self.url = url
        self.pool: ConnectionPool[Any] = ConnectionPool(
            url, min_size=1, max_size=max_connections, timeout=timeout_s, open=False, name="echopanel-store"
        )
        self.pool.open(wait=True, timeout=timeout_s)
        try:
            with self.pool.connection() as conn:
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                for statement in MIGRATIONS:
                    conn.execute(statement)
            self._life: psycopg.Connection[Any] | None = None
            if node_id:
                self._life = psycopg.connect(url, autocommit=True, connect_timeout=int(timeout_s))
                held = self._life.execute("SELECT pg_try_advisory_lock(%s)", (node_key(node_id),)).fetchone()
                if not held or not held[0]:
                    raise RuntimeError(f"node id {node_id!r} is in use by another running node")
        except BaseException:
            if getattr(self, "_life", None) is not None:
                self._life.close()  # type: ignore[union-attr]
            self.pool.close()
            raise

    def _lock_fleet(self, c: Cursor) -> None:
        c.execute("SELECT pg_advisory_xact_lock(%s)", (FLEET_LOCK,))

    def node_alive(self, node_id: str) -> bool:
        if node_id == self.node_id:
            return True
        key = node_key(node_id)
        with self.pool.connection() as conn:
            row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            free = bool(row and row[0])
            if free:
                conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        return not free

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.cursor() as cur:  # commits on success, rolls back on error
            yield cur

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        with self.pool.connection() as conn, conn.cursor() as cur:
            yield cur

    def close(self) -> None:
        self.pool.close()
        if self._life is not None:
            self._life.close()  # the node's lock goes with it


def node_key(node_id: str) -> int:
    """The advisory-lock key of a node id (64-bit, signed, as PostgreSQL's bigint)."""
    return int.from_bytes(hashlib.blake2b(node_id.encode(), digest_size=8).digest(), "big", signed=True)
