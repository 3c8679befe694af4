"""Repair at finalization: decode spans of a source's recording again, with finals only. One path, two uses.

- ``repair_shed``: audio shed from live transcription under load (and the utterances those gaps cut) is decoded
  from the recording; the new finals are ``repaired: true``.
- ``redecode_items``: items a fallback engine decoded are decoded again by the primary (when its breaker lets work
  through), and items no engine could decode by whichever engine works now. The new finals are ``repaired: true``
  and name the items they replace (``replaces``); the ledger drops the replaced ones.

Both read the span from the recording, resample it to the engine rate, append 0.5 s of silence (so the last turn
ends), run it through a fresh finals-only stream of the same engine whose item numbers continue the source's, and
shift the results onto the source clock (``decode_span``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from echopanel.audio.convert import pcm16_to_float, resample
from echopanel.engines.base import StreamOptions
from echopanel.events import ItemFailed, SourceEvent, TextFinal, Word, item_id

if TYPE_CHECKING:
    from echopanel.session.session import Session, SourceState

log = logging.getLogger(__name__)

TAIL_S = 0.5  # silence appended to a span so its last utterance closes
PAD_MS = 300  # audio taken around a re-decoded item (word times are tight; the utterance had pre-roll)
BRIDGE_MS = 1500  # neighbouring items closer than this, with no kept item between, are decoded as one span
TOLERANCE_MS = 200  # a superseded utterance touching a shed span within this widens it


async def decode_span(
    session: Session, state: SourceState, start_ms: int, end_ms: int, *, primary_only: bool = False
) -> list[TextFinal | ItemFailed]:
    """Finals (and failures) for [start_ms, end_ms) of the source's recording, on the source clock, in order."""
    rate = session.sample_rate
    engine_rate = session.engine.capabilities.sample_rate
    pcm = state.recording.read(start_ms * rate // 1000, end_ms * rate // 1000)
    if not pcm:
        return []
    audio = resample(pcm16_to_float(pcm), rate, engine_rate)
    audio = np.concatenate([audio, np.zeros(int(engine_rate * TAIL_S), np.float32)])
    book = session.ledger.books[state.name]
    first = max(state.stream.next_item, book.max_item + 1)
    stream = session.engine.open_stream(
        StreamOptions(
            source=state.name,
            priority=state.priority,
            first_item=first,
            language=session.language,
            partials=False,
            primary_only=primary_only,
        )
    )
    events: list[TextFinal | ItemFailed] = []

    async def collect() -> None:
        async for ev in stream.events():
            if isinstance(ev, TextFinal | ItemFailed):
                events.append(ev)

    reader = asyncio.create_task(collect())
    try:
        for i in range(0, len(audio), engine_rate):
            await stream.push(audio[i : i + engine_rate])
        await stream.flush()
    finally:
        book.max_item = max(book.max_item, stream.next_item - 1)
        await stream.aclose()
        await reader
    return [_shift(ev, start_ms) for ev in events]


def _shift(ev: TextFinal | ItemFailed, offset_ms: int) -> TextFinal | ItemFailed:
    if isinstance(ev, ItemFailed):
        if ev.start_ms is None or ev.end_ms is None:
            return ev
        return replace(ev, start_ms=ev.start_ms + offset_ms, end_ms=ev.end_ms + offset_ms)
    words = tuple(Word(w.text, w.start_ms + offset_ms, w.end_ms + offset_ms, w.confidence) for w in ev.words)
    return replace(ev, start_ms=ev.start_ms + offset_ms, end_ms=ev.end_ms + offset_ms, words=words, repaired=True)


# -- shed spans ------------------------------------------------------------------------------------------------------


async def repair_shed(session: Session, state: SourceState) -> None:
    """Transcribe the spans shed under load from the recording, with finals only, and send them as repaired."""
    ms = session.ms
    live = [(t.start_ms, t.end_ms) for t in session.ledger.of(state.name) if not t.repaired]
    shed = [[ms(a), ms(b)] for a, b in state.queue.shed_spans]
    cut = session.ledger.books[state.name].superseded
    for start, end in widen(shed, cut, live, tolerance=TOLERANCE_MS, bridge=BRIDGE_MS):
        for ev in await decode_span(session, state, start, end):
            if isinstance(ev, TextFinal):
                session.ledger.record(state.name, ev)
                await session.ledger.persist(state.name, ev, None)
            await session.outbox.put(SourceEvent(state.name, ev))
        log.info("session %s: repaired %d ms of %s from the recording", session.id, end - start, state.name)


def widen(
    spans: list[list[int]], cut: list[tuple[int, int]], live: list[tuple[int, int]], tolerance: int, bridge: int
) -> list[tuple[int, int]]:
    """Shed spans grown to whole utterances, so repair starts and ends at utterance edges.

    A span grows over each utterance it cut (``cut``: superseded live items). Two spans are joined when the kept
    audio between them is shorter than ``bridge`` and no live final was delivered there (``live``): such short
    fragments were never transcribed live on their own, and they are in the recording too.
    """
    grown = sorted([a, b] for a, b in spans)
    for s, e in cut:
        for span in grown:
            if s <= span[1] + tolerance and e >= span[0] - tolerance:  # the utterance touches this gap
                span[0], span[1] = min(span[0], s), max(span[1], e)
    grown.sort()
    merged: list[list[int]] = []
    for a, b in grown:
        if merged:
            prev_end = merged[-1][1]
            between_live = any(ls < a and le > prev_end for ls, le in live)
            if a <= prev_end or (a - prev_end < bridge and not between_live):
                merged[-1][1] = max(prev_end, b)
                continue
        merged.append([a, b])
    return [(a, b) for a, b in merged]


# -- fallback and failed items ----------------------------------------------------------------------------------


async def redecode_items(session: Session, state: SourceState) -> None:
    book = session.ledger.books[state.name]
    primary_ok = session.engine.primary_available()
    targets = list(book.failed_items)
    if primary_ok:
        targets += book.fallback_items
    elif book.fallback_items:
        log.info(
            "session %s: %d %s items from the fallback engine kept (the primary engine is still failing)",
            session.id,
            len(book.fallback_items),
            state.name,
        )
    if not targets:
        return
    targets.sort(key=lambda t: t[1])
    ids = {item_id(state.name, n) for n, _, _ in targets}
    kept = sorted((t.start_ms, t.end_ms) for t in session.ledger.of(state.name) if t.item_id not in ids)
    spans: list[tuple[int, int, list[int]]] = []
    for n, a, b in targets:
        lo = max(0, a - PAD_MS, max((e for s, e in kept if e <= a), default=0))
        hi = min(b + PAD_MS, min((s for s, e in kept if s >= b), default=b + PAD_MS))
        if spans:
            plo, phi, pn = spans[-1]
            between = any(s >= phi and e <= lo for s, e in kept)
            if lo <= phi or (lo - phi < BRIDGE_MS and not between):
                spans[-1] = (plo, max(phi, hi), [*pn, n])
                continue
        spans.append((lo, hi, [n]))
    for lo, hi, span_items in spans:
        events = await decode_span(session, state, lo, hi, primary_only=primary_ok)
        finals = [ev for ev in events if isinstance(ev, TextFinal)]
        if len(finals) < len(events) or not any(f.text for f in finals):
            log.info("session %s: re-decoding %s %d-%d ms gave nothing; items kept", session.id, state.name, lo, hi)
            continue
        replaced = tuple(sorted(span_items))
        session.ledger.replace(state.name, replaced)
        for i, ev in enumerate(finals):
            ev = replace(ev, replaces=replaced if i == 0 else ())
            session.ledger.record(state.name, ev)
            await session.ledger.persist(state.name, ev, None)
            await session.outbox.put(SourceEvent(state.name, ev))
        log.info(
            "session %s: re-decoded %d %s items (%d ms) with %s",
            session.id,
            len(replaced),
            state.name,
            hi - lo,
            "the primary engine" if primary_ok else "the engine available",
        )
