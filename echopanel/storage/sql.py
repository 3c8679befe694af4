"""The SQL behind both stores: one schema, one set of statements, for SQLite and PostgreSQL.

``SqlStore`` implements ``SessionStore`` over a DB-API cursor; a backend gives it ``_tx`` (a transaction: commit on
success, roll back on error) and ``_read`` (a cursor for reads), and its placeholder style. Statements are written
with ``?`` and use only what both databases have (``ON CONFLICT ... DO UPDATE``, ``CREATE ... IF NOT EXISTS``).
Columns that hold unix seconds are ``DOUBLE PRECISION`` (in SQLite a REAL); flags are integers.

Ownership (docs/deployment.md): each session records the node that runs it (``owner``) and an ``epoch`` that grows
by one at every takeover (``take_over``). Every write to a session this store created or took over checks, in its
own transaction, that the row still names this node and that epoch: a node that lost a session (hung, partitioned,
taken over meanwhile) gets ``StaleOwner`` and writes nothing. A node that starts marks its own sessions left
``active`` as ``interrupted`` and no other node's.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from echopanel.storage.schema import SCHEMA, SCHEMA_VERSION
from echopanel.storage.store import (
    Finalization,
    Handoff,
    SessionRecord,
    ShedSpan,
    SourceRecord,
    SpeakerRecord,
    StaleOwner,
    StoredItem,
)

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Cursor", "SqlStore", "StaleOwner"]


class Cursor(Protocol):
    """What ``SqlStore`` needs of a DB-API cursor (sqlite3 and psycopg both have it)."""

    @property
    def rowcount(self) -> int: ...

    def execute(self, sql: Any, params: Sequence[Any] = ..., /) -> Any: ...

    def executemany(self, sql: Any, params: Sequence[Sequence[Any]], /) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


_SESSION_COLUMNS = (
    "s.id, s.status, s.created_at, s.ended_at, s.sources, s.sample_rate, s.dialect, s.engine, s.model, s.language, "
    "(SELECT COUNT(*) FROM items i WHERE i.session_id = s.id AND i.superseded = 0), "
    "(SELECT COALESCE(MAX(i.end_ms), 0) FROM items i WHERE i.session_id = s.id)"
)


class SqlStore:
    """``SessionStore`` in SQL. Subclasses: ``SqliteStore`` (the default), ``PostgresStore`` (a fleet)."""

    placeholder = "?"
    kind = "sql"  # what ``/ready`` and ``session.created`` name as the store

    def __init__(self, node_id: str = "") -> None:
        self.node_id = node_id  # recorded as each new session's owner
        self._epochs: dict[str, int] = {}  # sessions this store created or took over -> the epoch it holds

    # -- ownership -------------------------------------------------------------------------------------------------

    def _fence(self, c: Cursor, session_id: str) -> None:
        """Within a write's transaction: the session is still this node's, at the epoch it holds (row locked until
        the transaction ends), else ``StaleOwner``. Sessions this store never owned are not fenced."""
        epoch = self._epochs.get(session_id)
        if epoch is None:
            return
        self._exec(
            c,
            "UPDATE sessions SET owner = owner WHERE id = ? AND owner = ? AND epoch = ?",
            (session_id, self.node_id, epoch),
        )
        if c.rowcount != 1:  # (the epoch stays: every later write of this node to the session fails too)
            raise StaleOwner(f"session {session_id} is no longer owned by {self.node_id!r} at epoch {epoch}")

    def take_over(self, session_id: str) -> int:
        """Make this node the owner of an ``active`` session (its node died or hung); returns the new epoch. The
        previous owner's writes fail from now on. ``LookupError`` if there is no such active session."""
        with self._tx() as c:
            self._exec(
                c,
                "UPDATE sessions SET owner = ?, epoch = epoch + 1, detached_at = NULL"
                " WHERE id = ? AND status = 'active'",
                (self.node_id, session_id),
            )
            if c.rowcount != 1:
                raise LookupError(f"no active session {session_id}")
            epoch = int(self._exec(c, "SELECT epoch FROM sessions WHERE id = ?", (session_id,)).fetchone()[0])
        self._epochs[session_id] = epoch
        return epoch

    def heartbeat(self, now: float | None = None) -> None:
        """This node is alive and not hung (written every ``HEARTBEAT_S`` by a server on a shared store)."""
        with self._tx() as c:
            self._exec(
                c,
                "INSERT INTO nodes (id, heartbeat_at) VALUES (?, ?) ON CONFLICT (id)"
                " DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                (self.node_id, time.time() if now is None else now),
            )

    def node_alive(self, node_id: str) -> bool:
        """Whether ``node_id``'s process is still running. The single-node store has no other nodes: any other
        owner is a previous run of this server, dead."""
        return node_id == self.node_id

    def takeable(self, session_id: str, stale_after_s: float, now: float | None = None) -> bool:
        """An ``active`` session another node owns may be taken over: its client left it (detached, waiting for a
        resume), its node died (at once), or it is hung (no heartbeat for ``stale_after_s``)."""
        rows = self._rows(
            "SELECT s.owner, n.heartbeat_at, s.detached_at FROM sessions s LEFT JOIN nodes n ON n.id = s.owner"
            " WHERE s.id = ? AND s.status = 'active'",
            (session_id,),
        )
        if not rows:
            return False
        owner, beat, detached = str(rows[0][0]), rows[0][1], rows[0][2]
        if owner == self.node_id or detached is not None or not self.node_alive(owner):
            return True
        return beat is not None and (time.time() if now is None else now) - float(beat) > stale_after_s

    def set_detached(self, session_id: str, at: float | None) -> None:
        """The session's client dropped (``at``: when) or came back (None): a detached session may be taken over by
        the node its client resumes on."""
        with self._tx() as c:
            self._fence(c, session_id)
            self._exec(c, "UPDATE sessions SET detached_at = ? WHERE id = ?", (at, session_id))

    def still_owner(self, session_id: str) -> bool:
        """Whether this node still owns the session at the epoch it holds (False: another node took it over)."""
        epoch = self._epochs.get(session_id)
        if epoch is None:
            return False
        return self.owner(session_id) == (self.node_id, epoch)

    def handoff(self, session_id: str) -> Handoff | None:
        """What a node needs to go on with an ``active`` session another node ran (None: no such active session)."""
        rows = self._rows(
            "SELECT s.created_at, s.sources, s.sample_rate, s.dialect, s.language, s.handoff FROM sessions s"
            " WHERE s.id = ? AND s.status = 'active'",
            (session_id,),
        )
        if not rows:
            return None
        r = rows[0]
        extra = dict(json.loads(r[5])) if r[5] else {}
        return Handoff(session_id, float(r[0]), tuple(json.loads(r[1])), int(r[2]), str(r[3]), str(r[4]), extra)

    # -- the fleet-wide session limit (--fleet-max-sessions) ----------------------------------------------------------

    def _lock_fleet(self, c: Cursor) -> None:
        """Within a transaction: fleet admissions one at a time (SQLite's BEGIN IMMEDIATE already is)."""

    def take_fleet_slot(self, slot: str, limit: int, stale_after_s: float, force: bool = False) -> bool:
        """One of the fleet's ``limit`` session slots for this node (``force``: a resumed session, taken even at the
        limit). Slots of nodes whose heartbeat is older than ``stale_after_s`` are freed first (a dead node's)."""
        now = time.time()
        with self._tx() as c:
            self._lock_fleet(c)
            self._exec(
                c,
                "DELETE FROM fleet_slots WHERE node IN (SELECT id FROM nodes WHERE heartbeat_at < ?)",
                (now - stale_after_s,),
            )
            taken = int(self._exec(c, "SELECT COUNT(*) FROM fleet_slots").fetchone()[0])
            if taken >= limit and not force:
                return False
            self._exec(c, "INSERT INTO fleet_slots (id, node, taken_at) VALUES (?, ?, ?)", (slot, self.node_id, now))
        return True

    def free_fleet_slots(self, slots: Sequence[str] = ()) -> None:
        """Free ``slots`` (every slot of this node's without any: at start, what a previous run left)."""
        with self._tx() as c:
            if slots:
                self._many(c, "DELETE FROM fleet_slots WHERE id = ? AND node = ?", [(s, self.node_id) for s in slots])
            else:
                self._exec(c, "DELETE FROM fleet_slots WHERE node = ?", (self.node_id,))

    def owner(self, session_id: str) -> tuple[str, int] | None:
        """(owner node, epoch) of a session, or None."""
        rows = self._rows("SELECT owner, epoch FROM sessions WHERE id = ?", (session_id,))
        return (str(rows[0][0]), int(rows[0][1])) if rows else None

    @contextlib.contextmanager
    def _tx(self) -> Iterator[Cursor]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    @contextlib.contextmanager
    def _read(self) -> Iterator[Cursor]:
        raise NotImplementedError

    def _q(self, sql: str) -> str:
        return sql if self.placeholder == "?" else sql.replace("?", self.placeholder)

    def _exec(self, c: Cursor, sql: str, params: Sequence[Any] = ()) -> Cursor:
        c.execute(self._q(sql), params)
        return c

    def _many(self, c: Cursor, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if rows:
            c.executemany(self._q(sql), rows)

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._read() as c:
            return list(self._exec(c, sql, params).fetchall())

    # -- writes ----------------------------------------------------------------------------------------------------

    def create_session(self, record: SessionRecord, sources: list[SourceRecord]) -> None:
        with self._tx() as c:
            self._exec(
                c,
                "INSERT INTO sessions (id, status, created_at, ended_at, sources, sample_rate, dialect, engine, model,"
                " language, owner, handoff) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                    self.node_id,
                    json.dumps(record.handoff, separators=(",", ":")) if record.handoff else "",
                ),
            )
            self._epochs[record.id] = 1
            self._many(
                c,
                "INSERT INTO sources (session_id, name, priority, sample_rate, received_ms, dropped_ms, recording)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (record.id, s.name, s.priority, s.sample_rate, s.received_ms, s.dropped_ms, s.recording)
                    for s in sources
                ],
            )

    def add_item(self, item: StoredItem) -> None:
        with self._tx() as c:
            self._fence(c, item.session_id)
            self._exec(
                c,
                "INSERT INTO items (session_id, item_id, source, text, start_ms, end_ms, speaker, words, engine,"
                " repaired, superseded, compute_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (session_id, item_id) DO UPDATE SET source = excluded.source, text = excluded.text,"
                " start_ms = excluded.start_ms, end_ms = excluded.end_ms, speaker = excluded.speaker,"
                " words = excluded.words, engine = excluded.engine, repaired = excluded.repaired,"
                " superseded = excluded.superseded, compute_ms = excluded.compute_ms,"
                " created_at = excluded.created_at",
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
            self._fence(c, session_id)
            self._many(
                c,
                "UPDATE items SET speaker = ? WHERE session_id = ? AND item_id = ?",
                [(label, session_id, iid) for iid, label in labels.items()],
            )

    def finalize(self, session_id: str, fin: Finalization) -> None:
        with self._tx() as c:
            self._fence(c, session_id)
            self._many(
                c,
                "UPDATE items SET speaker = ? WHERE session_id = ? AND item_id = ?",
                [(label, session_id, iid) for iid, label in fin.relabelled.items()],
            )
            if fin.keep_items is None:
                self._exec(c, "DELETE FROM items WHERE session_id = ? AND superseded = 1", (session_id,))
            else:
                keep = set(fin.keep_items)
                stored = [
                    r[0]
                    for r in self._exec(c, "SELECT item_id FROM items WHERE session_id = ?", (session_id,)).fetchall()
                ]
                self._many(
                    c,
                    "DELETE FROM items WHERE session_id = ? AND item_id = ?",
                    [(session_id, iid) for iid in stored if iid not in keep],
                )
            self._exec(c, "DELETE FROM speakers WHERE session_id = ?", (session_id,))
            self._many(
                c,
                "INSERT INTO speakers (session_id, label, source, talk_ms, items) VALUES (?, ?, ?, ?, ?)",
                [(session_id, s.label, s.source, s.talk_ms, s.items) for s in fin.speakers],
            )
            self._exec(c, "DELETE FROM shed_spans WHERE session_id = ?", (session_id,))
            self._many(
                c,
                "INSERT INTO shed_spans (session_id, source, start_ms, end_ms) VALUES (?, ?, ?, ?)",
                [(session_id, s.source, s.start_ms, s.end_ms) for s in fin.shed_spans],
            )
            for s in fin.sources:
                self._exec(
                    c,
                    "UPDATE sources SET received_ms = ?, dropped_ms = ? WHERE session_id = ? AND name = ?",
                    (s.received_ms, s.dropped_ms, session_id, s.name),
                )
            self._exec(
                c,
                "INSERT INTO summaries (session_id, payload, created_at) VALUES (?, ?, ?) ON CONFLICT (session_id)"
                " DO UPDATE SET payload = excluded.payload, created_at = excluded.created_at",
                (session_id, json.dumps(fin.summary, separators=(",", ":"), ensure_ascii=False), time.time()),
            )
            self._exec(
                c, "UPDATE sessions SET status = ?, ended_at = ? WHERE id = ?", (fin.status, fin.ended_at, session_id)
            )
        self._epochs.pop(session_id, None)  # ended: nothing more to fence (and the map stays bounded)

    def mark_interrupted(self, every_node: bool = False) -> list[str]:
        """This node's sessions left ``active`` (it died meanwhile) become ``interrupted`` (every node's with
        ``every_node``: the embedded single-node store); returns their ids."""
        with self._tx() as c:
            if every_node:
                self._exec(c, "SELECT id FROM sessions WHERE status = 'active'")
            else:
                self._exec(c, "SELECT id FROM sessions WHERE status = 'active' AND owner = ?", (self.node_id,))
            ids = [r[0] for r in c.fetchall()]
            now = time.time()
            for sid in ids:
                last = self._exec(c, "SELECT MAX(created_at) FROM items WHERE session_id = ?", (sid,)).fetchone()[0]
                self._exec(
                    c, "UPDATE sessions SET status = 'interrupted', ended_at = ? WHERE id = ?", (last or now, sid)
                )
        return ids

    def delete_session(self, session_id: str) -> bool:
        with self._tx() as c:
            cur = self._exec(c, "DELETE FROM sessions WHERE id = ?", (session_id,))
            return cur.rowcount > 0

    def forget_recordings(self, session_id: str) -> None:
        with self._tx() as c:
            self._exec(c, "UPDATE sources SET recording = '' WHERE session_id = ?", (session_id,))

    # -- reads -----------------------------------------------------------------------------------------------------

    def list_sessions(self, limit: int = 100, offset: int = 0) -> list[SessionRecord]:
        rows = self._rows(
            f"SELECT {_SESSION_COLUMNS} FROM sessions s ORDER BY s.created_at DESC, s.id LIMIT ? OFFSET ?",
            (limit, offset),
        )
        return [_session(r) for r in rows]

    def get_session(self, session_id: str) -> SessionRecord | None:
        rows = self._rows(f"SELECT {_SESSION_COLUMNS} FROM sessions s WHERE s.id = ?", (session_id,))
        return _session(rows[0]) if rows else None

    def items(self, session_id: str) -> list[StoredItem]:
        rows = self._rows(
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
        rows = self._rows("SELECT payload FROM summaries WHERE session_id = ?", (session_id,))
        return dict(json.loads(rows[0][0])) if rows else None

    def speakers(self, session_id: str) -> list[SpeakerRecord]:
        rows = self._rows(
            "SELECT label, source, talk_ms, items FROM speakers WHERE session_id = ? ORDER BY source, talk_ms DESC",
            (session_id,),
        )
        return [SpeakerRecord(*r) for r in rows]

    def shed_spans(self, session_id: str) -> list[ShedSpan]:
        rows = self._rows(
            "SELECT source, start_ms, end_ms FROM shed_spans WHERE session_id = ? ORDER BY source, start_ms",
            (session_id,),
        )
        return [ShedSpan(*r) for r in rows]

    def sources(self, session_id: str) -> list[SourceRecord]:
        rows = self._rows(
            "SELECT name, priority, sample_rate, received_ms, dropped_ms, recording FROM sources WHERE session_id = ?"
            " ORDER BY priority, name",
            (session_id,),
        )
        return [SourceRecord(*r) for r in rows]

    def ended_before(self, cutoff: float) -> list[str]:
        rows = self._rows(
            "SELECT id FROM sessions WHERE status != 'active' AND COALESCE(ended_at, created_at) < ?", (cutoff,)
        )
        return [r[0] for r in rows]


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
