"""The session store on SQLite and on a real PostgreSQL server (the same tests for both): writes, reads,
finalization, restart (interrupted, only the restarting node's sessions), deletion, retention, threads."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from echopanel.storage.postgres import PostgresStore
from echopanel.storage.recording import Recording, session_dir
from echopanel.storage.retention import DAY_S, sweep
from echopanel.storage.sql import SqlStore, StaleOwner
from echopanel.storage.sqlite import SqliteStore
from echopanel.storage.store import Finalization, SessionRecord, ShedSpan, SourceRecord, SpeakerRecord, StoredItem
from echopanel.testing.postgres import fresh_database


def record(sid: str = "sess_a", created: float = 1000.0) -> SessionRecord:
    return SessionRecord(sid, "active", created, ("mic", "system"), 16000, engine="whisper", model="tiny.en")


def item(sid: str, n: int, text: str = "hello there", **kw: object) -> StoredItem:
    return StoredItem(sid, f"item_mic_{n:05d}", "mic", text, n * 1000, n * 1000 + 800, **kw)  # type: ignore[arg-type]


Opener = Callable[..., SqlStore]  # opener(node_id="") -> a store on this test's database


@pytest.fixture(params=["sqlite", "postgresql"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    opened: list[SqlStore] = []
    url = fresh_database(request.getfixturevalue("pg_url")) if request.param == "postgresql" else ""

    def open_store(node_id: str = "") -> SqlStore:
        s: SqlStore = PostgresStore(url, node_id) if url else SqliteStore(tmp_path / "echopanel.db", node_id)
        opened.append(s)
        return s

    yield open_store
    for s in opened:
        s.close()


@pytest.fixture()
def store(opener: Opener) -> SqlStore:
    return opener()


def test_items_as_they_land_and_back(store: SqlStore) -> None:
    store.create_session(record(), [SourceRecord("mic", 0, 16000, recording="/x/mic.pcm")])
    words = ({"word": "hello", "start_ms": 1000, "end_ms": 1300, "confidence": 0.9},)
    store.add_item(item("sess_a", 2, "second", speaker="mic:S1"))
    store.add_item(item("sess_a", 1, "first", words=words, engine="whisper"))
    got = store.items("sess_a")
    assert [i.text for i in got] == ["first", "second"]  # time order
    assert got[0].words == words and got[1].speaker == "mic:S1" and got[0].engine == "whisper"
    rec = store.get_session("sess_a")
    assert rec is not None and rec.status == "active" and rec.items == 2 and rec.duration_ms == 2800
    assert rec.sources == ("mic", "system")
    store.set_speakers("sess_a", {"item_mic_00001": "mic:S2"})
    assert store.items("sess_a")[0].speaker == "mic:S2"
    assert store.get_session("nope") is None and store.items("nope") == []


def test_finalize_writes_everything_at_once(store: SqlStore) -> None:
    store.create_session(record(), [SourceRecord("mic", 0, 16000)])
    store.add_item(item("sess_a", 1))
    store.add_item(item("sess_a", 2, "cut", superseded=True))
    store.add_item(item("sess_a", 3, "again", repaired=True))
    fin = Finalization(
        status="completed",
        ended_at=2000.0,
        summary={"type": "session.summary", "summary": [{"text": "x"}]},
        speakers=(SpeakerRecord("mic:S1", "mic", 1600, 2),),
        shed_spans=(ShedSpan("mic", 1500, 2500),),
        sources=(SourceRecord("mic", 0, 16000, received_ms=4000, dropped_ms=1000),),
        relabelled={"item_mic_00001": "mic:S1"},
    )
    store.finalize("sess_a", fin)
    rec = store.get_session("sess_a")
    assert rec is not None and rec.status == "completed" and rec.ended_at == 2000.0
    assert [i.item_id for i in store.items("sess_a")] == ["item_mic_00001", "item_mic_00003"]  # superseded gone
    assert store.items("sess_a")[0].speaker == "mic:S1"
    assert store.summary("sess_a") == fin.summary
    assert store.speakers("sess_a") == [SpeakerRecord("mic:S1", "mic", 1600, 2)]
    assert store.shed_spans("sess_a") == [ShedSpan("mic", 1500, 2500)]
    assert store.sources("sess_a")[0].dropped_ms == 1000


def test_finalize_keeps_only_the_final_transcript(store: SqlStore) -> None:
    store.create_session(record(), [])
    for n in (1, 2, 3):
        store.add_item(item("sess_a", n))
    # item 2 was decoded again at finalization (e.g. by the primary engine after a fallback) as item 4
    store.add_item(item("sess_a", 4, "better", repaired=True))
    store.finalize(
        "sess_a", Finalization("completed", 2.0, {}, keep_items=("item_mic_00001", "item_mic_00003", "item_mic_00004"))
    )
    assert [i.item_id for i in store.items("sess_a")] == ["item_mic_00001", "item_mic_00003", "item_mic_00004"]


def test_restart_marks_active_sessions_interrupted(opener: Opener) -> None:
    first = opener("node-a")
    first.create_session(record("sess_live"), [])
    first.create_session(record("sess_done"), [])
    first.finalize("sess_done", Finalization("completed", 5.0, {}))
    first.add_item(item("sess_live", 1))
    other = opener("node-b")
    other.create_session(record("sess_elsewhere"), [])
    first.close()  # node-a dies (its connections go with its process); node-a starts again
    assert opener("node-c").mark_interrupted() == []  # another node restarting never ends node-a's sessions
    second = opener("node-a")
    assert second.mark_interrupted() == ["sess_live"]
    live = second.get_session("sess_live")
    assert live is not None and live.status == "interrupted" and live.ended_at is not None
    assert [i.text for i in second.items("sess_live")] == ["hello there"]
    assert second.get_session("sess_done").status == "completed"  # type: ignore[union-attr]
    assert second.mark_interrupted() == []
    assert second.get_session("sess_elsewhere").status == "active"  # type: ignore[union-attr]
    assert second.mark_interrupted(every_node=True) == ["sess_elsewhere"]  # the single-node store's sweep


def test_list_delete_and_cascade(store: SqlStore) -> None:
    for n in range(3):
        store.create_session(record(f"sess_{n}", created=1000.0 + n), [SourceRecord("mic", 0, 16000)])
        store.add_item(item(f"sess_{n}", 1))
    assert [r.id for r in store.list_sessions()] == ["sess_2", "sess_1", "sess_0"]  # newest first
    assert [r.id for r in store.list_sessions(limit=1, offset=1)] == ["sess_1"]
    assert store.delete_session("sess_1") is True and store.delete_session("sess_1") is False
    assert store.items("sess_1") == [] and store.sources("sess_1") == []
    assert [r.id for r in store.list_sessions()] == ["sess_2", "sess_0"]


def test_writes_from_many_threads(store: SqlStore) -> None:
    store.create_session(record(), [])

    def writer(k: int) -> None:
        for n in range(50):
            store.add_item(item("sess_a", k * 100 + n))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.items("sess_a")) == 200


def test_write_cost(store: SqlStore) -> None:
    """Prints the measured cost of one final's write (WAL, synchronous=NORMAL); no assertion on speed."""
    store.create_session(record(), [])
    words = tuple({"word": f"w{k}", "start_ms": k, "end_ms": k + 1, "confidence": 0.9} for k in range(12))
    t0 = time.perf_counter()
    for n in range(200):
        store.add_item(item("sess_a", n, "a typical final of a dozen words or so in a meeting", words=words))
    per = (time.perf_counter() - t0) / 200 * 1000
    print(f"store write: {per:.3f} ms per final (12 words)")
    assert len(store.items("sess_a")) == 200


def test_retention_deletes_old_recordings_only(tmp_path: Path, opener: Opener) -> None:
    store = opener()
    now = 100 * DAY_S
    for sid, ended in (("sess_old", now - 31 * DAY_S), ("sess_new", now - 1 * DAY_S)):
        store.create_session(record(sid), [])
        Recording(session_dir(tmp_path, sid) / "mic.pcm", 16000).close()
        store.finalize(sid, Finalization("completed", ended, {}))
    store.create_session(record("sess_running"), [])
    Recording(session_dir(tmp_path, "sess_running") / "mic.pcm", 16000).close()
    orphan = session_dir(tmp_path, "sess_orphan")
    Recording(orphan / "mic.pcm", 16000).close()
    os.utime(orphan, (now - 40 * DAY_S, now - 40 * DAY_S))
    gone = sweep(store, tmp_path, 30, now=now)
    assert sorted(gone) == ["sess_old", "sess_orphan"]
    assert not session_dir(tmp_path, "sess_old").exists() and session_dir(tmp_path, "sess_new").exists()
    assert session_dir(tmp_path, "sess_running").exists()  # a running session is never swept
    assert store.get_session("sess_old") is not None  # the transcript stays
    # 0 days: every ended session's recording goes at the next sweep; running ones stay.
    assert sweep(store, tmp_path, 0, now=now) == ["sess_new"]
    assert session_dir(tmp_path, "sess_running").exists()


def test_a_node_that_lost_its_session_cannot_write_to_it(opener: Opener) -> None:
    node_a, node_b = opener("node-a"), opener("node-b")
    node_a.create_session(record("sess_x"), [SourceRecord("mic", 0, 16000)])
    node_a.add_item(item("sess_x", 1, "before the takeover"))
    assert node_a.owner("sess_x") == ("node-a", 1)
    assert node_b.take_over("sess_x") == 2  # node-a hung; node-b resumes the session
    assert node_b.owner("sess_x") == ("node-b", 2)
    with pytest.raises(StaleOwner):  # node-a wakes up: none of its writes land
        node_a.add_item(item("sess_x", 2, "stale"))
    with pytest.raises(StaleOwner):
        node_a.set_speakers("sess_x", {"item_mic_00001": "mic:S9"})
    with pytest.raises(StaleOwner):
        node_a.finalize("sess_x", Finalization("interrupted", 3.0, {}))
    node_b.add_item(item("sess_x", 2, "after the takeover"))
    assert [i.text for i in node_b.items("sess_x")] == ["before the takeover", "after the takeover"]
    assert node_b.items("sess_x")[0].speaker is None
    node_b.finalize("sess_x", Finalization("completed", 4.0, {}))
    assert node_b.get_session("sess_x").status == "completed"  # type: ignore[union-attr]
    with pytest.raises(LookupError):  # an ended session cannot be taken over
        node_a.take_over("sess_x")
    with pytest.raises(LookupError):
        node_a.take_over("sess_nope")


def test_a_dead_or_hung_node_s_sessions_are_takeable(opener: Opener) -> None:
    node_a, node_b = opener("node-a"), opener("node-b")
    node_a.create_session(record("sess_x"), [])
    node_a.heartbeat(now=1000.0)
    if isinstance(node_a, PostgresStore):
        assert node_b.node_alive("node-a")
        assert not node_b.takeable("sess_x", stale_after_s=10, now=1005.0)  # alive, beating: not takeable
        assert node_b.takeable("sess_x", stale_after_s=10, now=1011.0)  # hung: no heartbeat for 11 s
        with pytest.raises(RuntimeError):
            opener("node-a")  # one process per node id
        node_a.close()  # its process ends: its advisory lock goes with the connection
        assert not node_b.node_alive("node-a")
    else:
        assert not node_b.node_alive("node-a")  # one SQLite file, one server: another owner is a dead run
    assert node_b.takeable("sess_x", stale_after_s=10, now=1005.0)
    assert node_b.take_over("sess_x") == 2
    assert not node_b.takeable("sess_nope", stale_after_s=10)


def test_a_detached_session_is_takeable_with_what_its_next_node_needs(opener: Opener) -> None:
    """A node whose client dropped marks the session detached: another node may take it over (no waiting for a
    heartbeat), with the settings it was created with; taking it over clears the mark and fences the old node."""
    node_a, node_b = opener("node-a"), opener("node-b")
    handoff = {"token_sha256": "ab" * 32, "turn_detection": False, "overflow": "block"}
    rec = SessionRecord("sess_d", "active", 1000.0, ("mic",), 24000, language="en", handoff=handoff)
    node_a.create_session(rec, [SourceRecord("mic", 0, 24000)])
    node_a.heartbeat(now=1000.0)
    found = node_b.handoff("sess_d")
    assert found is not None
    assert (found.sources, found.sample_rate, found.language, found.dialect) == (("mic",), 24000, "en", "native")
    assert found.extra == handoff
    assert "handoff" not in node_b.get_session("sess_d").as_dict()  # type: ignore[union-attr]  # never listed
    if isinstance(node_a, PostgresStore):
        assert not node_b.takeable("sess_d", stale_after_s=10, now=1001.0)  # alive, beating, client attached
    node_a.set_detached("sess_d", 1001.0)
    assert node_b.takeable("sess_d", stale_after_s=10, now=1001.0)
    assert node_a.still_owner("sess_d")
    node_a.set_detached("sess_d", None)  # its client came back to it
    if isinstance(node_a, PostgresStore):
        assert not node_b.takeable("sess_d", stale_after_s=10, now=1001.0)
    node_a.set_detached("sess_d", 1002.0)
    assert node_b.take_over("sess_d") == 2
    assert not node_a.still_owner("sess_d") and node_b.still_owner("sess_d")
    with pytest.raises(StaleOwner):
        node_a.set_detached("sess_d", 1003.0)
    if isinstance(node_a, PostgresStore):  # taken: no longer detached, and its new node is alive
        assert not opener("node-c").takeable("sess_d", stale_after_s=10, now=1001.0)
    node_b.finalize("sess_d", Finalization("completed", 5.0, {}))
    assert node_b.handoff("sess_d") is None  # ended: nothing to hand off


def test_a_node_killed_with_sigkill_is_dead_at_once(pg_url: str) -> None:
    url = fresh_database(pg_url)
    watcher = PostgresStore(url, "node-w")
    code = (
        "import sys, time; from echopanel.storage.postgres import PostgresStore; "
        f"s = PostgresStore({url!r}, 'node-k'); print('up', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "up"
        assert watcher.node_alive("node-k")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.monotonic() + 10
        while watcher.node_alive("node-k") and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not watcher.node_alive("node-k")
        print(f"a killed node is seen dead after {10 - (deadline - time.monotonic()):.2f} s")
    finally:
        proc.kill()
        watcher.close()


def test_the_fleet_limit_is_taken_at_n_and_refused_at_n_plus_1(opener: Opener) -> None:
    node_a, node_b = opener("node-a"), opener("node-b")
    node_a.heartbeat(now=time.time())
    node_b.heartbeat(now=time.time())
    assert node_a.take_fleet_slot("s1", 3, 10.0) and node_b.take_fleet_slot("s2", 3, 10.0)
    assert node_a.take_fleet_slot("s3", 3, 10.0)  # N = 3
    assert not node_b.take_fleet_slot("s4", 3, 10.0)  # N + 1, from either node
    assert node_b.take_fleet_slot("s4", 3, 10.0, True)  # a resumed session is taken even at the limit
    node_b.free_fleet_slots(["s4", "s1"])  # s1 is node-a's: node-b cannot free it
    assert not node_b.take_fleet_slot("s5", 3, 10.0)
    node_a.free_fleet_slots(["s1"])
    assert node_b.take_fleet_slot("s5", 3, 10.0)
    node_a.heartbeat(now=time.time() - 60)  # node-a died (no heartbeat for a minute): its slot s3 is freed
    assert node_b.take_fleet_slot("s6", 3, 10.0)  # s2, s5, s6
    assert not node_b.take_fleet_slot("s7", 3, 10.0)
    node_b.free_fleet_slots()  # a restarting node-b frees what its previous run held
    assert node_a.take_fleet_slot("s9", 1, 10.0) is True


def test_an_older_sqlite_file_is_migrated_in_place(tmp_path: Path) -> None:
    """A data directory from before sessions.handoff/detached_at (schema 3) opens: the columns are added, the old
    sessions stay, new ones take the new fields."""
    import sqlite3

    from echopanel.storage.sql import SCHEMA

    old = SCHEMA.replace("    handoff TEXT NOT NULL DEFAULT '',\n    detached_at DOUBLE PRECISION\n", "").replace(
        "epoch INTEGER NOT NULL DEFAULT 1,", "epoch INTEGER NOT NULL DEFAULT 1"
    )
    assert "handoff" not in old
    path = tmp_path / "echopanel.db"
    conn = sqlite3.connect(path)
    conn.executescript(old + ";PRAGMA user_version = 3;")
    conn.execute(
        "INSERT INTO sessions (id, status, created_at, sources, sample_rate, dialect, engine, model, language)"
        " VALUES ('sess_old', 'completed', 1.0, '[\"mic\"]', 16000, 'native', 'whisper', 'tiny.en', 'en')"
    )
    conn.commit()
    conn.close()
    store = SqliteStore(path, "node-a")
    try:
        assert store.get_session("sess_old") is not None
        store.create_session(
            SessionRecord("sess_new", "active", 2.0, ("mic",), 16000, handoff={"overflow": "shed"}), []
        )
        found = store.handoff("sess_new")
        assert found is not None and found.extra == {"overflow": "shed"}
    finally:
        store.close()
