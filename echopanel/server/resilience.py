"""Server glue for resilience: engine state in metrics and notices, re-decoding at finalization, fault injection.

- ``engine_fields``: the ``engine`` / ``breaker`` / ``breakers`` fields of ``session.metrics``.
- ``announce``: the fallback chain switched engines -> ``session.degraded`` to every live session.
- ``redecode_items``: at finalization, items a fallback engine decoded are decoded again by the primary (when its
  breaker lets work through), and items no engine could decode are decoded by whichever engine works now, from the
  recording. The new finals are ``repaired: true`` and name the items they replace (``replaces``).
- ``fault_routes``: ``POST /faults`` (only with ``fault_injection``) sets failpoints on the engines.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from echopanel.audio.convert import pcm16_to_float, resample
from echopanel.engines.base import SpeechEngine, StreamOptions
from echopanel.engines.chain import ChainNotice
from echopanel.engines.faults import KINDS, MODES, FaultSwitch
from echopanel.events import ItemFailed, SourceEvent, TextFinal, item_id
from echopanel.flow.ladder import Level

if TYPE_CHECKING:
    from echopanel.session.session import Session, SourceState

log = logging.getLogger(__name__)

PAD_MS = 300  # audio taken around a re-decoded item (word times are tight; the utterance had pre-roll)
BRIDGE_MS = 1500  # neighbouring items closer than this, with no kept item between, are decoded as one span


def engine_fields(engine: SpeechEngine) -> dict[str, Any]:
    status = engine.status()
    out: dict[str, Any] = {"engine": status.engine, "breaker": status.breaker}
    if status.breakers is not None:
        out["breakers"] = status.breakers
    return out


def announce(sessions: Iterable[Session], notice: ChainNotice) -> None:
    """Tell every session that the chain switched engines (``session.degraded``)."""
    from echopanel.session.session import Degraded

    for session in list(sessions):
        if notice.mode == "primary":
            level, name = int(session.level), session.level.name.lower()
        else:
            level, name = int(Level.FALLBACK), "fallback" if notice.mode == "fallback" else "engines_down"
        try:
            session.outbox.put_nowait(Degraded(level, name, notice.reason))
        except asyncio.QueueFull:
            log.warning("outbox full; engine notice for session %s skipped", session.id)


# -- re-decoding at finalization ---------------------------------------------------------------------------------


async def redecode_items(session: Session, state: SourceState) -> None:
    primary_ok = session.engine.primary_available()
    targets = list(state.failed_items)
    if primary_ok:
        targets += state.fallback_items
    elif state.fallback_items:
        log.info(
            "session %s: %d %s items from the fallback engine kept (the primary engine is still failing)",
            session.id,
            len(state.fallback_items),
            state.name,
        )
    if not targets:
        return
    targets.sort(key=lambda t: t[1])
    numbers = {n for n, _, _ in targets}
    ids = {item_id(state.name, n) for n in numbers}
    kept = sorted((t.start_ms, t.end_ms) for t in session.transcript if t.source == state.name and t.item_id not in ids)
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
        finals = await _decode_span(session, state, lo, hi, primary_only=primary_ok)
        if finals is None or not any(f.text for f in finals):
            log.info("session %s: re-decoding %s %d-%d ms gave nothing; items kept", session.id, state.name, lo, hi)
            continue
        replaced = tuple(sorted(span_items))
        gone = {item_id(state.name, n) for n in replaced}
        session.transcript[:] = [t for t in session.transcript if t.item_id not in gone]
        for i, ev in enumerate(finals):
            ev = replace(ev, replaces=replaced if i == 0 else ())
            session._record_final(state, ev)
            await session._persist(state, ev, None)
            await session.outbox.put(SourceEvent(state.name, ev))
        state.fallback_items = [t for t in state.fallback_items if t[0] not in replaced]
        state.failed_items = [t for t in state.failed_items if t[0] not in replaced]
        log.info(
            "session %s: re-decoded %d %s items (%d ms) with %s",
            session.id,
            len(replaced),
            state.name,
            hi - lo,
            "the primary engine" if primary_ok else "the engine available",
        )


async def _decode_span(
    session: Session, state: SourceState, start_ms: int, end_ms: int, *, primary_only: bool
) -> list[TextFinal] | None:
    """Finals for [start_ms, end_ms) of the recording, times on the source clock; None if a decode failed."""
    from echopanel.session.session import _shift

    rate = session.sample_rate
    engine_rate = session.engine.capabilities.sample_rate
    pcm = state.recording.read(start_ms * rate // 1000, end_ms * rate // 1000)
    if not pcm:
        return None
    audio = resample(pcm16_to_float(pcm), rate, engine_rate)
    audio = np.concatenate([audio, np.zeros(engine_rate // 2, np.float32)])  # let the last turn end
    first = max(state.stream.next_item, state.max_item + 1)
    stream = session.engine.open_stream(
        StreamOptions(
            source=state.name, priority=state.priority, first_item=first, partials=False, primary_only=primary_only
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
        state.max_item = max(state.max_item, stream.next_item - 1)
        await stream.aclose()
        await reader
    if any(isinstance(ev, ItemFailed) for ev in events):
        return None
    return [_shift(ev, start_ms) for ev in events if isinstance(ev, TextFinal)]


# -- fault injection ---------------------------------------------------------------------------------------------


def fault_routes(switch: FaultSwitch, engine_names: list[str]) -> list[Route]:
    """``POST /faults {engine, mode: ok|fail|hang|die, count?, kinds?}``, ``DELETE /faults``, ``GET /faults``."""

    async def faults(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(switch.snapshot())
        if request.method == "DELETE":
            switch.clear()
            return JSONResponse(switch.snapshot())
        try:
            body = json.loads(await request.body())
            engine, mode = str(body["engine"]), str(body["mode"])
            count = body.get("count")
            kinds = frozenset(body["kinds"]) if body.get("kinds") is not None else None
            if engine not in engine_names:
                raise ValueError(f"engine must be one of {engine_names}")
            switch.set(engine, mode, None if count is None else int(count), kinds)
        except (ValueError, KeyError, TypeError) as exc:
            detail = f"{exc}; body: {{engine: {engine_names}, mode: {list(MODES)}, count?, kinds?: {sorted(KINDS)}}}"
            return JSONResponse({"error": detail}, status_code=400)
        log.warning("fault injection: %s -> %s (count %s)", engine, mode, count)
        return JSONResponse(switch.snapshot())

    return [Route("/faults", faults, methods=["GET", "POST", "DELETE"])]
