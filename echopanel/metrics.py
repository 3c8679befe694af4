"""Metrics: bounded latency windows for ``session.metrics``, and the Prometheus figures for ``/metrics``."""

from __future__ import annotations

import bisect
import math
import os
from collections import deque
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


def rss_bytes() -> int:
    """This process's resident memory (Linux: /proc/self/statm; 0 where unknown)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


LATENCY_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


def percentile(values: Iterable[float], q: float, *, method: str = "linear") -> float | None:
    """The ``q`` quantile (0..1) of ``values``; None for no values. The one percentile of EchoPanel: session
    metrics, the scheduler's wait p95 (the degrade ladder's load signal), speaker labelling stats, the benchmarks.

    ``method`` (numpy's names): ``"linear"`` interpolates between the two nearest ranks (reported figures);
    ``"lower"`` takes the lower of them. The degrade ladder's thresholds were tuned on ``"lower"``: with
    ``"linear"`` the wait p95 reads higher on the few samples of a 3 s window, and at 8 meeting sessions the ladder
    climbed one step more (level 4 instead of 3 in 3 runs of bench/load.py; mic first-partial p50 2.1-2.3 s instead
    of 1.4 s, server CPU 1.25 instead of 1.5 cores, no finals faster)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be within 0..1, not {q}")
    if method not in ("linear", "lower"):
        raise ValueError(f"method must be 'linear' or 'lower', not {method!r}")
    ordered = sorted(values)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q
    lo = math.floor(pos)
    if method == "lower":
        return ordered[lo]
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class LatencyWindow:
    """The last ``size`` latencies (seconds), with percentiles. Bounded."""

    def __init__(self, size: int = 200) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        self.values.append(value)

    def percentile(self, q: float) -> float | None:
        return percentile(self.values, q)

    def summary_ms(self) -> dict[str, int | None]:
        p50, p95 = self.percentile(0.5), self.percentile(0.95)
        return {
            "p50": None if p50 is None else round(p50 * 1000),
            "p95": None if p95 is None else round(p95 * 1000),
        }


class Arrivals:
    """When each stretch of a source's audio arrived (monotonic time), for the last ``size`` chunks. Bounded."""

    def __init__(self, size: int = 4096) -> None:
        self._ends: deque[int] = deque(maxlen=size)  # end of each chunk, ms of the source clock
        self._times: deque[float] = deque(maxlen=size)

    def add(self, end_ms: int, at: float) -> None:
        self._ends.append(end_ms)
        self._times.append(at)

    def time_of(self, ms: int) -> float | None:
        """Arrival time of the chunk that contained ``ms`` (None if it is older than the window)."""
        ends = self._ends
        if not ends or ms < ends[0] - 10_000:
            return None
        i = bisect.bisect_left(ends, ms)
        if i >= len(ends):
            return None
        return self._times[i]


class ServerMetrics:
    """Prometheus figures aggregated over every session (one registry per app)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions_active = Gauge("echopanel_sessions_active", "Sessions open now", registry=r)
        self.sessions_refused = Counter("echopanel_sessions_refused", "Sessions refused at the limit", registry=r)
        self.audio_received = Counter("echopanel_audio_received_seconds", "Audio accepted", ["source_kind"], registry=r)
        self.audio_dropped = Counter(
            "echopanel_audio_dropped_seconds", "Audio shed from live transcription", ["source_kind"], registry=r
        )
        self.compute = Counter("echopanel_compute_seconds", "Inference time spent", registry=r)
        self.first_partial = Histogram(
            "echopanel_first_partial_latency_seconds",
            "Speech onset received -> first text of the utterance",
            ["source_kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.final = Histogram(
            "echopanel_final_latency_seconds",
            "End of speech received -> final result",
            ["source_kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.degrade_level = Gauge("echopanel_degrade_level", "Current step of the degrade ladder", registry=r)
        self.utilization = Gauge("echopanel_inference_utilization", "Share of inference capacity busy", registry=r)
        self.final_wait = Gauge("echopanel_final_wait_p95_seconds", "p95 wait of final decodes", registry=r)
        self.loop_lag = Gauge("echopanel_event_loop_lag_seconds", "How late the controller's timer fired", registry=r)
        self.partial_interval = Gauge("echopanel_partial_interval_seconds", "Current partial cadence", registry=r)
        # Resilience (engines/chain.py): breaker state per engine (0 closed, 1 half-open, 2 open), decodes and
        # failures per engine (kind: error, timeout, died), resumes of detached sessions.
        self.breaker_state = Gauge("echopanel_breaker_state", "Circuit breaker state", ["engine"], registry=r)
        self.engine_decodes = Counter("echopanel_engine_decodes", "Decodes completed", ["engine"], registry=r)
        self.engine_failures = Counter("echopanel_engine_failures", "Decodes failed", ["engine", "kind"], registry=r)
        self.engine_active = Gauge(
            "echopanel_engine_active", "1 for the engine new work goes to", ["engine"], registry=r
        )
        self.sessions_detached = Gauge("echopanel_sessions_detached", "Sessions waiting for a resume", registry=r)
        self.resumes = Counter("echopanel_session_resumes", "Sessions resumed after a dropped connection", registry=r)
        self.sessions_interrupted = Counter(
            "echopanel_sessions_interrupted", "Detached sessions finalized at the end of the grace period", registry=r
        )


def source_kind(priority: int) -> str:
    return "mic" if priority == 0 else "system"
