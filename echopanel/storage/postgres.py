"""``SessionStore`` on PostgreSQL, for a fleet of nodes sharing one database (docs/deployment.md).

psycopg 3 with a small connection pool (``psycopg_pool``): each write is one transaction, committed when the
statement block ends (rolled back on error); the schema is created, or migrated, at start under an advisory lock, so
nodes starting together do not race. The statements are ``echopanel/storage/sql.py``'s, shared with SQLite.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from psycopg_pool import ConnectionPool

from echopanel.storage.sql import SCHEMA, Cursor, SqlStore

MIGRATE_LOCK = 0x45_50_53_43  # pg_advisory_xact_lock key while the schema is created or migrated ("EPSC")
MIGRATIONS = (  # schema 1 -> 3
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS owner TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE sessions ADD COLUMN IF NOT EXISTS epoch INTEGER NOT NULL DEFAULT 1",
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
        except BaseException:
            self.pool.close()
            raise

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
