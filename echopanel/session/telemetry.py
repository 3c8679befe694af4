"""What a session measures and reports: first-partial and final latency, compute, ``session.metrics``, stats.

Latency is measured from when the audio it refers to *arrived* (``SourceState.arrivals``): first partial from the
speech onset, final from the end of the last voiced window. Windows are bounded (``LatencyWindow``).
"""

from __future__ import annotations

import time
from typing import Any

from echopanel.engines.base import SpeechEngine
from echopanel.events import Latency, SessionMetrics, SourceMetrics, TextDelta, TextFinal
from echopanel.flow.ladder import Level
from echopanel.metrics import ServerMetrics, source_kind
from echopanel.session.ledger import SourceBook
from echopanel.session.source import SourceState


def measure(state: SourceState, ev: TextDelta | TextFinal, metrics: ServerMetrics | None) -> None:
    now = time.monotonic()
    kind = source_kind(state.priority)
    if ev.item != state.last_text_item and (ev.text if isinstance(ev, TextFinal) else ev.delta or ev.tentative):
        state.last_text_item = ev.item
        onset_at = state.arrivals.time_of(ev.start_ms)
        if onset_at is not None:
            state.first_partial.add(now - onset_at)
            if metrics is not None:
                metrics.first_partial.labels(kind).observe(now - onset_at)
    if isinstance(ev, TextFinal) and not (ev.repaired or ev.superseded):
        state.compute_ms += ev.compute_ms
        if metrics is not None:
            metrics.compute.inc(ev.compute_ms / 1000)
        end_at = state.arrivals.time_of(ev.speech_end_ms if ev.speech_end_ms is not None else ev.end_ms)
        if end_at is not None:
            state.final_latency.add(now - end_at)
            if metrics is not None:
                metrics.final.labels(kind).observe(now - end_at)


def ms(samples: int, rate: int) -> int:
    return samples * 1000 // rate


def snapshot(
    session_id: str, states: dict[str, SourceState], engine: SpeechEngine, level: Level, rate: int
) -> SessionMetrics:
    """The ``session.metrics`` event of now."""
    policy = engine.policy
    sources = {}
    for name, s in states.items():
        processed_ms = s.stream.audio_ms
        partials = s.live and s.priority <= policy.partial_max_priority
        first, final = s.first_partial.summary_ms(), s.final_latency.summary_ms()
        sources[name] = SourceMetrics(
            received_ms=ms(s.recording.samples, rate),
            queued_ms=ms(s.queue.queued_samples, rate),
            processed_ms=round(processed_ms),
            dropped_ms=ms(s.queue.dropped_samples, rate),
            rtf=round(s.compute_ms / processed_ms, 3) if processed_ms else None,
            first_partial_latency=Latency(first["p50"], first["p95"]),
            final_latency=Latency(final["p50"], final["p95"]),
            partial_interval_ms=policy.partial_interval_ms if partials else None,
            live=s.live,
            backpressure=s.queue.level,
        )
    status = engine.status()
    return SessionMetrics(
        session_id, sources, int(level), level.name.lower(), status.engine, status.breaker, status.breakers
    )


def source_stats(states: dict[str, SourceState], books: dict[str, SourceBook], rate: int) -> dict[str, Any]:
    """Per-source figures for the summary's stats."""
    return {
        name: {
            "received_ms": ms(s.recording.samples, rate),
            "queued_ms": ms(s.queue.queued_samples, rate),
            "max_queued_ms": ms(s.queue.max_queued_samples, rate),
            "queue_limit_ms": ms(s.queue.limit_samples, rate),
            "processed_ms": round(s.stream.audio_ms),
            "dropped_ms": ms(s.queue.dropped_samples, rate),
            "shed_spans": [[ms(a, rate), ms(b, rate)] for a, b in s.queue.shed_spans[:100]],
            "repaired_items": books[name].repaired,
            "finals": books[name].finals,
            "live": s.live,
        }
        for name, s in states.items()
    }
