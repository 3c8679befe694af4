"""Session finalization (the contract in docs/protocol.md): ``finalize(session, status)`` drives a session to its end.

1. Flush every source (every live final sent), then repair from the recordings: shed spans, and items a fallback
   engine decoded or no engine could (``echopanel/session/repair.py``; the new finals are ``repaired``).
2. Settle speakers, per source: wait for the live labelling jobs, label the items that have no live label
   (repaired ones, those past the pending bound) from the recording, re-cluster the whole source, and send
   ``speaker.updated {item_id, source, speaker, previous}`` for every item whose label changed.
3. Build the summary over the whole transcript (``echopanel.analysis``, off the event loop).
4. Persist: items' final labels, speakers, shed spans, summary and the status, in one transaction.
5. Put ``session.summary`` in the outbox (after everything above, so a client that has it has everything).

Idempotent: a second call waits for the first's result.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import replace
from typing import Any

from echopanel.analysis import Utterance, analyse
from echopanel.events import SessionSummary, SpeakerUpdated
from echopanel.session.repair import redecode_items, repair_shed
from echopanel.session.session import Session
from echopanel.speakers.live import label_of_span
from echopanel.speakers.tracker import SpeakerTurn
from echopanel.storage.store import Finalization, ShedSpan, SourceRecord, SpeakerRecord

log = logging.getLogger(__name__)

STATUSES = ("completed", "interrupted")


async def finalize(session: Session, status: str, event_id: str | None = None) -> dict[str, Any]:
    """End the session with ``status`` ("completed" | "interrupted"); returns the summary document (and puts
    ``session.summary`` in the outbox). Called twice, the second call waits for the first's result."""
    if status not in STATUSES:
        raise ValueError(f"status must be 'completed' or 'interrupted', not {status!r}")
    if session.finalization is None:
        session.finalization = asyncio.get_running_loop().create_future()
        session.labels.stop()
        try:
            document = await _finalize(session, status, event_id)
        except BaseException as exc:
            session.finalization.set_exception(exc)
            session.finalization.exception()  # retrieved: the caller gets it raised
            raise
        session.finalization.set_result(document)
    return await asyncio.shield(session.finalization)


async def finish(session: Session) -> None:
    """Flush every source, then repair from the recordings (shed spans, fallback and failed items)."""
    await session.flush()
    for state in session.sources.values():
        if state.queue.shed_spans:
            await repair_shed(session, state)
    for state in session.sources.values():
        book = session.ledger.books[state.name]
        if book.fallback_items or book.failed_items:
            await redecode_items(session, state)


async def _finalize(session: Session, status: str, event_id: str | None) -> dict[str, Any]:
    started = time.monotonic()
    await finish(session)
    flushed = time.monotonic()
    talk_ms, relabelled, turns = await settle_speakers(session)
    settled = time.monotonic()
    transcript = session.ledger.in_time_order()
    utterances = [Utterance(t.item_id, t.source, t.speaker, t.start_ms, t.end_ms, t.text) for t in transcript]
    analysis = await asyncio.get_running_loop().run_in_executor(None, analyse, utterances, talk_ms)
    analysed = time.monotonic()
    totals = analysis.pop("totals")
    document: dict[str, Any] = {
        "session_id": session.id,
        "status": status,
        "transcript": [
            {
                "item_id": t.item_id,
                "source": t.source,
                "text": t.text,
                "start_ms": t.start_ms,
                "end_ms": t.end_ms,
                "speaker": t.speaker,
                "repaired": t.repaired,
            }
            for t in transcript
        ],
        "speaker_turns": [
            {
                "source": source,
                "speaker": t.speaker,
                "start_ms": round(t.start_s * 1000),
                "end_ms": round(t.end_s * 1000),
            }
            for source, t in turns
        ],
        **analysis,
        "stats": {
            "sources": session.stats(),
            **totals,
            "speaker_labels": {n: s.speakers.stats() for n, s in session.sources.items() if s.speakers is not None},
            "finalize_ms": {
                "flush": round((flushed - started) * 1000),
                "speakers": round((settled - flushed) * 1000),
                "analysis": round((analysed - settled) * 1000),
            },
        },
    }
    if session.store is not None:
        fin = Finalization(
            status=status,
            ended_at=time.time(),
            summary=document,
            speakers=tuple(
                SpeakerRecord(row["speaker"], row["source"], row["talk_ms"], row["items"])
                for row in analysis["speakers"]
            ),
            shed_spans=tuple(
                ShedSpan(name, session.ms(a), session.ms(b))
                for name, s in session.sources.items()
                for a, b in s.queue.shed_spans
            ),
            sources=tuple(
                SourceRecord(
                    name,
                    s.priority,
                    session.sample_rate,
                    session.ms(s.recording.samples),
                    session.ms(s.queue.dropped_samples),
                )
                for name, s in session.sources.items()
            ),
            relabelled=relabelled,
            keep_items=tuple(t.item_id for t in transcript),
        )
        await session.ledger.write(session.store.store.finalize, session.id, fin)
    await session.outbox.put(SessionSummary(document, event_id))
    log.info(
        "session %s finalized (%s): %d items, flush %.0f ms, speakers %.0f ms, analysis %.0f ms",
        session.id,
        status,
        len(transcript),
        (flushed - started) * 1000,
        (settled - flushed) * 1000,
        (analysed - settled) * 1000,
    )
    return document


async def settle_speakers(
    session: Session,
) -> tuple[dict[str, int], dict[str, str | None], list[tuple[str, SpeakerTurn]]]:
    """Final labels for every item (``speaker.updated`` for the changed ones); returns talk time per label (ms,
    from the final speaker turns), the changed labels, and the final turns (source, turn) in time order."""
    all_turns: list[tuple[str, SpeakerTurn]] = []
    talk: dict[str, int] = defaultdict(int)
    changed: dict[str, str | None] = {}
    items = session.ledger.items
    index = {t.item_id: n for n, t in enumerate(items)}
    for name, state in session.sources.items():
        if state.speakers is None:
            continue
        mine = session.ledger.of(name)
        missing = [(t.number, t.start_ms, t.end_ms) for t in mine]
        labels, turns = await state.speakers.settle(missing)
        all_turns.extend((name, t) for t in turns)
        for turn in turns:
            talk[turn.speaker] += round((turn.end_s - turn.start_s) * 1000)
        for t in mine:
            label = labels.get(t.number) or label_of_span(turns, t.start_ms / 1000, t.end_ms / 1000)
            if label is None:
                label = _nearest(turns, t.start_ms / 1000, t.end_ms / 1000)
            if label != t.speaker:
                items[index[t.item_id]] = replace(t, speaker=label)
                changed[t.item_id] = label
                await session.outbox.put(SpeakerUpdated(t.item_id, name, label, t.speaker))
    all_turns.sort(key=lambda st: (st[1].start_s, st[0]))
    return dict(talk), changed, all_turns


def _nearest(turns: list[SpeakerTurn], start_s: float, end_s: float) -> str | None:
    """The speaker of the turn closest in time (for items too short to embed)."""
    if not turns:
        return None
    mid = (start_s + end_s) / 2
    return min(turns, key=lambda t: max(t.start_s - mid, mid - t.end_s, 0.0)).speaker
