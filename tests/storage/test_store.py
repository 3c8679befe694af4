"""The SQLite session store: writes, reads, finalization, restart (interrupted), deletion, retention, threads."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from echopanel.storage.recording import Recording, session_dir
from echopanel.storage.retention import DAY_S, sweep
from echopanel.storage.sqlite import SqliteStore
from echopanel.storage.store import Finalization, SessionRecord, ShedSpan, SourceRecord, SpeakerRecord, StoredItem


def record(sid: str = "sess_a", created: float = 1000.0) -> SessionRecord:
    return SessionRecord(sid, "active", created, ("mic", "system"), 16000, engine="whisper", model="tiny.en")


def item(sid: str, n: int, text: str = "hello there", **kw: object) -> StoredItem:
    return StoredItem(sid, f"item_mic_{n:05d}", "mic", text, n * 1000, n * 1000 + 800, **kw)  # type: ignore[arg-type]


@pytest.fixture()
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "echopanel.db")
    yield s  # type: ignore[misc]
    s.close()


def test_items_as_they_land_and_back(store: SqliteStore) -> None:
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


def test_finalize_writes_everything_at_once(store: SqliteStore) -> None:
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


def test_finalize_keeps_only_the_final_transcript(store: SqliteStore) -> None:
    store.create_session(record(), [])
    for n in (1, 2, 3):
        store.add_item(item("sess_a", n))
    # item 2 was decoded again at finalization (e.g. by the primary engine after a fallback) as item 4
    store.add_item(item("sess_a", 4, "better", repaired=True))
    store.finalize(
        "sess_a", Finalization("completed", 2.0, {}, keep_items=("item_mic_00001", "item_mic_00003", "item_mic_00004"))
    )
    assert [i.item_id for i in store.items("sess_a")] == ["item_mic_00001", "item_mic_00003", "item_mic_00004"]


def test_restart_marks_active_sessions_interrupted(tmp_path: Path) -> None:
    first = SqliteStore(tmp_path / "db")
    first.create_session(record("sess_live"), [])
    first.create_session(record("sess_done"), [])
    first.finalize("sess_done", Finalization("completed", 5.0, {}))
    first.add_item(item("sess_live", 1))
    # no close: as if the process died
    second = SqliteStore(tmp_path / "db")
    assert second.mark_interrupted() == ["sess_live"]
    live = second.get_session("sess_live")
    assert live is not None and live.status == "interrupted" and live.ended_at is not None
    assert [i.text for i in second.items("sess_live")] == ["hello there"]
    assert second.get_session("sess_done").status == "completed"  # type: ignore[union-attr]
    assert second.mark_interrupted() == []
    second.close()
    first.close()


def test_list_delete_and_cascade(store: SqliteStore) -> None:
    for n in range(3):
        store.create_session(record(f"sess_{n}", created=1000.0 + n), [SourceRecord("mic", 0, 16000)])
        store.add_item(item(f"sess_{n}", 1))
    assert [r.id for r in store.list_sessions()] == ["sess_2", "sess_1", "sess_0"]  # newest first
    assert [r.id for r in store.list_sessions(limit=1, offset=1)] == ["sess_1"]
    assert store.delete_session("sess_1") is True and store.delete_session("sess_1") is False
    assert store.items("sess_1") == [] and store.sources("sess_1") == []
    assert [r.id for r in store.list_sessions()] == ["sess_2", "sess_0"]


def test_writes_from_many_threads(store: SqliteStore) -> None:
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


def test_write_cost(store: SqliteStore) -> None:
    """Prints the measured cost of one final's write (WAL, synchronous=NORMAL); no assertion on speed."""
    store.create_session(record(), [])
    words = tuple({"word": f"w{k}", "start_ms": k, "end_ms": k + 1, "confidence": 0.9} for k in range(12))
    t0 = time.perf_counter()
    for n in range(200):
        store.add_item(item("sess_a", n, "a typical final of a dozen words or so in a meeting", words=words))
    per = (time.perf_counter() - t0) / 200 * 1000
    print(f"store write: {per:.3f} ms per final (12 words)")
    assert len(store.items("sess_a")) == 200


def test_retention_deletes_old_recordings_only(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db")
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
    store.close()
