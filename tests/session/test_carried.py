"""What a session carries from the node that ran it before (``echopanel/session/carried.py``): item numbering after
the highest stored item, the restart point after the last stored final, the seeded ledger and the replay window."""

from __future__ import annotations

from echopanel.events import Replayed, TextFinal
from echopanel.session.carried import Carried, number_of, token_hash
from echopanel.session.ledger import Ledger
from echopanel.storage.store import Handoff, StoredItem


def stored(source: str, n: int, start: int, end: int, *, at: float, text: str = "words", **kw: bool) -> StoredItem:
    words = ({"word": text, "start_ms": start, "end_ms": end, "confidence": 0.8},)
    return StoredItem("sess_x", f"item_{source}_{n:05d}", source, text, start, end, "mic:S1", words, "whisper",
                      created_at=at, **kw)  # fmt: skip


def carried(*items: StoredItem) -> Carried:
    handoff = Handoff("sess_x", 1.0, ("mic", "system"), 16000, "native", "en", {})
    return Carried("sess_x", "tok", 1.0, 2, items, handoff)


def test_numbering_and_the_restart_point_follow_the_stored_items_per_source() -> None:
    c = carried(
        stored("mic", 1, 0, 900, at=10.0),
        stored("mic", 3, 2000, 3500, at=12.0),
        stored("mic", 4, 3600, 5000, at=13.0, superseded=True),  # cut by a shed span: not a final
        stored("system", 2, 500, 1500, at=11.0),
    )
    assert c.next_item("mic") == 5 and c.next_item("system") == 3  # after every stored number, superseded too
    assert c.restart_ms("mic") == 3500 and c.restart_ms("system") == 1500  # the end of the last stored *final*
    assert carried().next_item("mic") == 1 and carried().restart_ms("mic") == 0
    assert number_of("item_mic_00042") == 42


def test_the_ledger_starts_with_the_stored_transcript() -> None:
    c = carried(stored("mic", 1, 0, 900, at=10.0, text="hello"), stored("mic", 2, 1000, 1500, at=11.0, superseded=True))
    ledger = Ledger("sess_x", "whisper", ["mic", "system"], None)
    c.seed(ledger)
    assert [(t.item_id, t.text, t.speaker, t.number) for t in ledger.items] == [
        ("item_mic_00001", "hello", "mic:S1", 1)
    ]
    book = ledger.books["mic"]
    assert (book.finals, book.max_item, book.superseded) == (1, 2, [(1000, 1500)])


def test_the_replay_is_the_recent_stored_finals_oldest_first() -> None:
    c = carried(
        stored("mic", 1, 0, 900, at=10.0),
        stored("system", 1, 0, 900, at=30.0, text="late"),
        stored("mic", 2, 1000, 1900, at=20.0, text="recent"),
        stored("mic", 3, 2000, 2900, at=25.0, superseded=True),
    )
    replay = c.replay(since=15.0, limit=10)
    assert all(isinstance(r, Replayed) for r in replay)
    assert [(r.event.source, r.event.event.text) for r in replay] == [("mic", "recent"), ("system", "late")]
    final = replay[0].event.event
    assert isinstance(final, TextFinal) and final.item == 2 and final.words[0].confidence == 0.8
    assert len(c.replay(since=0.0, limit=1)) == 1


def test_the_store_keeps_a_hash_of_the_resume_token() -> None:
    assert token_hash("tok") == token_hash("tok") != token_hash("tok2")
    assert "tok" not in token_hash("tok") and len(token_hash("tok")) == 64
