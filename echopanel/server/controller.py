"""The flow controller: measures inference load, moves the degrade ladder, sets the decode policy, tells sessions.

Every ``tick_s`` it reads the scheduler's busy time (utilization over the last window) and the p95 wait of final
decodes, feeds them to the pure ``DegradeLadder``, and applies the result: the adaptive partial cadence, which
streams get partials, the final beam size, and whether system audio is live. Sessions hear about each step as
``session.degraded``.
"""

from __future__ import annotations

import asyncio
import logging
import time

from echopanel.engines.base import DecodePolicy
from echopanel.engines.chain import ChainNotice
from echopanel.events import Degraded
from echopanel.flow.ladder import DegradeLadder, Level, LoadSample, partial_interval_ms
from echopanel.inference.scheduler import InferenceScheduler
from echopanel.metrics import ServerMetrics
from echopanel.session.session import Session

log = logging.getLogger(__name__)


class FlowController:
    def __init__(
        self,
        *,
        scheduler: InferenceScheduler,
        policy: DecodePolicy,
        base_interval_ms: int,
        metrics: ServerMetrics,
        ladder: DegradeLadder | None = None,
        tick_s: float = 0.5,
        window_s: float = 3.0,
    ) -> None:
        self.scheduler = scheduler
        self.policy = policy
        self.base_interval_ms = base_interval_ms
        self.metrics = metrics
        self.ladder = ladder or DegradeLadder()
        self.tick_s = tick_s
        self.window_s = window_s
        self.sessions: set[Session] = set()
        self.utilization = 0.0
        self.final_wait_s = 0.0
        self.final_utilization = 0.0
        self.partial_wait_s = 0.0
        self.loop_lag_s = 0.0
        self._history: list[tuple[float, float, float]] = []  # (time, busy seconds, final busy seconds)

    @property
    def level(self) -> Level:
        return self.ladder.level

    def register(self, session: Session) -> None:
        self.sessions.add(session)
        self.metrics.sessions_active.set(len(self.sessions))

    def unregister(self, session: Session) -> None:
        self.sessions.discard(session)
        self.metrics.sessions_active.set(len(self.sessions))

    def announce_engines(self, notice: ChainNotice) -> None:
        """The fallback chain switched engines: ``session.degraded`` (cause "engine") to every live session."""
        for session in list(self.sessions):
            if notice.mode == "primary":
                level, name = int(session.level), session.level.name.lower()
            else:
                level, name = int(Level.FALLBACK), "fallback" if notice.mode == "fallback" else "engines_down"
            session.outbox.put_nowait(Degraded(level, name, notice.reason, cause="engine"))

    async def run(self) -> None:
        while True:
            planned = time.monotonic() + self.tick_s
            await asyncio.sleep(self.tick_s)
            now = time.monotonic()
            self.loop_lag_s = max(0.0, now - planned)  # how late the event loop let us run
            self.metrics.loop_lag.set(self.loop_lag_s)
            try:
                self.tick(now)
            except Exception:
                log.exception("flow controller tick failed")

    def tick(self, now: float) -> None:
        busy, final_busy = self.scheduler.busy_seconds()
        self._history.append((now, busy, final_busy))
        while len(self._history) > 2 and now - self._history[1][0] >= self.window_s:
            self._history.pop(0)
        t0, b0, f0 = self._history[0]
        capacity = (now - t0) * self.scheduler.workers
        self.utilization = min(1.0, (busy - b0) / capacity) if capacity > 0 else 0.0
        self.final_utilization = min(1.0, (final_busy - f0) / capacity) if capacity > 0 else 0.0
        since = now - self.window_s
        self.final_wait_s = self.scheduler.final_wait_p95(since)
        self.partial_wait_s = self.scheduler.partial_wait_p95(since)
        load = LoadSample(self.utilization, self.final_wait_s, self.final_utilization, self.partial_wait_s)
        changed = self.ladder.update(now, load)
        self.apply(self.ladder.level)
        if changed is not None:
            log.warning(
                "degrade level %d (%s): utilization %.2f (finals %.2f), wait p95 final %.2f s partial %.2f s,"
                " loop lag %.3f s",
                changed,
                changed.name.lower(),
                self.utilization,
                self.final_utilization,
                self.final_wait_s,
                self.partial_wait_s,
                self.loop_lag_s,
            )
            for session in list(self.sessions):
                session.degrade(changed)

    def apply(self, level: Level) -> None:
        p = self.policy
        p.partial_interval_ms = partial_interval_ms(self.base_interval_ms, level, self.utilization)
        if level >= Level.NO_PARTIALS:
            p.partial_max_priority = -1
        elif level >= Level.NO_SYSTEM_PARTIALS:
            p.partial_max_priority = 0
        else:
            p.partial_max_priority = 1
        p.final_beam_size = 1 if level >= Level.CHEAP_FINALS else 5
        m = self.metrics
        m.degrade_level.set(int(level))
        m.utilization.set(self.utilization)
        m.final_wait.set(self.final_wait_s)
        m.partial_interval.set(p.partial_interval_ms / 1000)
