"""Which store a server uses, from ``--store`` / ``ECHOPANEL_STORE``: SQLite (the embedded default) or PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from echopanel.storage.sql import SqlStore

DEFAULT_FILE = "echopanel.db"


def store_kind(url: str) -> str:
    """ "postgresql" or "sqlite" (a path, ``sqlite:///PATH``, or "" for the data directory's file)."""
    return "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"


def sqlite_path(url: str, data_dir: Path) -> Path:
    if not url:
        return data_dir / DEFAULT_FILE
    return Path(url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite://"))


def open_store(url: str, data_dir: Path, node_id: str = "") -> SqlStore:
    """The store ``url`` names (the PostgreSQL driver is imported only for a PostgreSQL URL)."""
    if store_kind(url) == "postgresql":
        from echopanel.storage.postgres import PostgresStore

        return PostgresStore(url, node_id)
    from echopanel.storage.sqlite import SqliteStore

    return SqliteStore(sqlite_path(url, data_dir), node_id)
