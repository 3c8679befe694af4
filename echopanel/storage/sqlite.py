"""``SessionStore`` on SQLite: one file (``<data_dir>/echopanel.db``), WAL journal, one connection per thread.

WAL with ``synchronous=NORMAL``: a commit is in the OS's page cache when ``add_item`` returns, so a killed server
process (even ``kill -9``) loses nothing it committed; only a power cut can lose the last commits before a
checkpoint. Readers never block the writer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from echopanel.storage.store import (
    Finalization,
    SessionRecord,
    ShedSpan,
    SourceRecord,
    SpeakerRecord,
    StoredItem,
)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('active', 'completed', 'interrupted')),
    created_at REAL NOT NULL,
    ended_at REAL,
    sources TEXT NOT NULL,
    sample_rate INTEGER NOT NULL,
    dialect TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    language TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sessions_created ON sessions (created_at);
CREATE TABLE IF NOT EXISTS sources (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    priority INTEGER NOT NULL,
    sample_rate INTEGER NOT NULL,
    received_ms INTEGER NOT NULL DEFAULT 0,
    dropped_ms INTEGER NOT NULL DEFAULT 0,
    recording TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (session_id, name)
);
CREATE TABLE IF NOT EXISTS items (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    item_id TEXT NOT NULL,
    source TEXT NOT NULL,
    text TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    speaker TEXT,
    words TEXT NOT NULL,
    engine TEXT NOT NULL,
    repaired INTEGER NOT NULL,
    superseded INTEGER NOT NULL,
    compute_ms REAL NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (session_id, item_id)
);
CREATE INDEX IF NOT EXISTS items_time ON items (session_id, start_ms);
CREATE TABLE IF NOT EXISTS speakers (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    source TEXT NOT NULL,
    talk_ms INTEGER NOT NULL,
    items INTEGER NOT NULL,
    PRIMARY KEY (session_id, label)
);
CREATE TABLE IF NOT EXISTS summaries (
    session_id TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    payload TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS shed_spans (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS shed_session ON shed_spans (session_id);
"""

_SESSION_COLUMNS = (
    "s.id, s.status, s.created_at, s.ended_at, s.sources, s.sample_rate, s.dialect, s.engine, s.model, s.language, "
    "(SELECT COUNT(*) FROM items i WHERE i.session_id = s.id AND i.superseded = 0), "
    "(SELECT COALESCE(MAX(i.end_ms), 0) FROM items i WHERE i.session_id = s.id)"
)


class SqliteStore:
    """The default store. Safe to use from several threads (each gets its own connection)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        conn = self._conn()
        with conn:
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

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

    def _tx(self) -> _Transaction:
        return _Transaction(self._conn())

    # -- writes ----------------------------------------------------------------------------------------------------

    def create_session(self, record: SessionRecord, sources: list[SourceRecord]) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO sessions (id, status, created_at, ended_at, sources, sample_rate, dialect, engine, model,"
                " language) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.status,
                    record.created_at,
                    record.ended_at,
                    json.dumps(list(record.sources)),
                    record.sample_rate,
                    record.dialect,
                    record.engine,
                    record.model,
                    record.language,
                ),
            )
            c.executemany(
                "INSERT INTO sources (session_id, name, priority, sample_rate, received_ms, dropped_ms, recording)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (record.id, s.name, s.priority, s.sample_rate, s.received_ms, s.dropped_ms, s.recording)
                    for s in sources
                ],
            )

    def add_item(self, item: StoredItem) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO items (session_id, item_id, source, text, start_ms, end_ms, speaker, words,"
                " engine, repaired, superseded, compute_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    item.session_id,
                    item.item_id,
                    item.source,
                    item.text,
                    item.start_ms,
                    item.end_ms,
                    item.speaker,
                    json.dumps(list(item.words), separators=(",", ":"), ensure_ascii=False),
                    item.engine,
                    int(item.repaired),
                    int(item.superseded),
                    item.compute_ms,
                    item.created_at,
                ),
            )

    def set_speakers(self, session_id: str, labels: dict[str, str | None]) -> None:
        if not labels:
            return
        with self._tx() as c:
            c.executemany(
                "UPDATE items SET speaker = ? WHERE session_id = ? AND item_id = ?",
                [(label, session_id, iid) for iid, label in labels.items()],
            )

    def finalize(self, session_id: str, fin: Finalization) -> None:
        with self._tx() as c:
            c.executemany(
                "UPDATE items SET speaker = ? WHERE session_id = ? AND item_id = ?",
                [(label, session_id, iid) for iid, label in fin.relabelled.items()],
            )
            if fin.keep_items is None:
                c.execute("DELETE FROM items WHERE session_id = ? AND superseded = 1", (session_id,))
            else:
                keep = set(fin.keep_items)
                stored = [r[0] for r in c.execute("SELECT item_id FROM items WHERE session_id = ?", (session_id,))]
                c.executemany(
                    "DELETE FROM items WHERE session_id = ? AND item_id = ?",
                    [(session_id, iid) for iid in stored if iid not in keep],
                )
            c.execute("DELETE FROM speakers WHERE session_id = ?", (session_id,))
            c.executemany(
                "INSERT INTO speakers (session_id, label, source, talk_ms, items) VALUES (?, ?, ?, ?, ?)",
                [(session_id, s.label, s.source, s.talk_ms, s.items) for s in fin.speakers],
            )
            c.execute("DELETE FROM shed_spans WHERE session_id = ?", (session_id,))
            c.executemany(
                "INSERT INTO shed_spans (session_id, source, start_ms, end_ms) VALUES (?, ?, ?, ?)",
                [(session_id, s.source, s.start_ms, s.end_ms) for s in fin.shed_spans],
            )
            for s in fin.sources:
                c.execute(
                    "UPDATE sources SET received_ms = ?, dropped_ms = ? WHERE session_id = ? AND name = ?",
                    (s.received_ms, s.dropped_ms, session_id, s.name),
                )
            c.execute(
                "INSERT OR REPLACE INTO summaries (session_id, payload, created_at) VALUES (?, ?, ?)",
                (session_id, json.dumps(fin.summary, separators=(",", ":"), ensure_ascii=False), time.time()),
            )
            c.execute(
                "UPDATE sessions SET status = ?, ended_at = ? WHERE id = ?", (fin.status, fin.ended_at, session_id)
            )

    def mark_interrupted(self) -> list[str]:
        with self._tx() as c:
            ids = [r[0] for r in c.execute("SELECT id FROM sessions WHERE status = 'active'")]
            now = time.time()
            for sid in ids:
                last = c.execute("SELECT MAX(created_at) FROM items WHERE session_id = ?", (sid,)).fetchone()[0]
                c.execute("UPDATE sessions SET status = 'interrupted', ended_at = ? WHERE id = ?", (last or now, sid))
        return ids

    def delete_session(self, session_id: str) -> bool:
        with self._tx() as c:
            cur = c.execute("DELETE FROM sessions WHERE id = ?", (session_id,))
            return cur.rowcount > 0

    def forget_recordings(self, session_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE sources SET recording = '' WHERE session_id = ?", (session_id,))

    # -- reads -----------------------------------------------------------------------------------------------------

    def list_sessions(self, limit: int = 100, offset: int = 0) -> list[SessionRecord]:
        rows = self._conn().execute(
            f"SELECT {_SESSION_COLUMNS} FROM sessions s ORDER BY s.created_at DESC, s.id LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_session(r) for r in rows]

    def get_session(self, session_id: str) -> SessionRecord | None:
        row = (
            self._conn().execute(f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.id = ?", (session_id,)).fetchone()
        )
        return None if row is None else _session(row)

    def items(self, session_id: str) -> list[StoredItem]:
        rows = self._conn().execute(
            "SELECT session_id, item_id, source, text, start_ms, end_ms, speaker, words, engine, repaired, superseded,"
            " compute_ms, created_at FROM items WHERE session_id = ? ORDER BY start_ms, source, item_id",
            (session_id,),
        )
        return [
            StoredItem(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                r[6],
                tuple(json.loads(r[7])),
                r[8],
                bool(r[9]),
                bool(r[10]),
                r[11],
                r[12],
            )
            for r in rows
        ]

    def summary(self, session_id: str) -> dict[str, Any] | None:
        row = self._conn().execute("SELECT payload FROM summaries WHERE session_id = ?", (session_id,)).fetchone()
        return None if row is None else dict(json.loads(row[0]))

    def speakers(self, session_id: str) -> list[SpeakerRecord]:
        rows = self._conn().execute(
            "SELECT label, source, talk_ms, items FROM speakers WHERE session_id = ? ORDER BY source, talk_ms DESC",
            (session_id,),
        )
        return [SpeakerRecord(*r) for r in rows]

    def shed_spans(self, session_id: str) -> list[ShedSpan]:
        rows = self._conn().execute(
            "SELECT source, start_ms, end_ms FROM shed_spans WHERE session_id = ? ORDER BY source, start_ms",
            (session_id,),
        )
        return [ShedSpan(*r) for r in rows]

    def sources(self, session_id: str) -> list[SourceRecord]:
        rows = self._conn().execute(
            "SELECT name, priority, sample_rate, received_ms, dropped_ms, recording FROM sources WHERE session_id = ?"
            " ORDER BY priority, name",
            (session_id,),
        )
        return [SourceRecord(*r) for r in rows]

    def ended_before(self, cutoff: float) -> list[str]:
        rows = self._conn().execute(
            "SELECT id FROM sessions WHERE status != 'active' AND COALESCE(ended_at, created_at) < ?", (cutoff,)
        )
        return [r[0] for r in rows]

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
        for conn in conns:
            try:
                conn.close()
            except sqlite3.ProgrammingError:
                pass  # made in another thread that is gone; closed when collected
        self._local = threading.local()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


def _session(r: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(
        id=r[0],
        status=r[1],
        created_at=r[2],
        ended_at=r[3],
        sources=tuple(json.loads(r[4])),
        sample_rate=r[5],
        dialect=r[6],
        engine=r[7],
        model=r[8],
        language=r[9],
        items=r[10],
        duration_ms=r[11],
    )
