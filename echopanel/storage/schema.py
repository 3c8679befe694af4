"""The store's schema, one text for SQLite and PostgreSQL (``echopanel/storage/sql.py`` runs it; ``sqlite.py`` and
``postgres.py`` migrate older databases to it). Columns that hold unix seconds are ``DOUBLE PRECISION`` (in SQLite
a REAL); flags are integers."""

from __future__ import annotations

SCHEMA_VERSION = 4  # 2: sessions.owner, 3: sessions.epoch, 4: sessions.handoff and detached_at, fleet_slots

SCHEMA = """
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY,
    status TEXT NOT NULL CHECK (status IN ('active', 'completed', 'interrupted')),
    created_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    sources TEXT NOT NULL,
    sample_rate INTEGER NOT NULL,
    dialect TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    language TEXT NOT NULL,
    owner TEXT NOT NULL DEFAULT '',
    epoch INTEGER NOT NULL DEFAULT 1,
    handoff TEXT NOT NULL DEFAULT '',
    detached_at DOUBLE PRECISION
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
    compute_ms DOUBLE PRECISION NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
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
    created_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS shed_spans (
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    source TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS shed_session ON shed_spans (session_id);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    heartbeat_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS fleet_slots (
    id TEXT PRIMARY KEY,
    node TEXT NOT NULL,
    taken_at DOUBLE PRECISION NOT NULL
);
"""
