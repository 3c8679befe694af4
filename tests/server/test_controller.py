"""The flow controller drives the ladder from measured compute time and applies each step to every session."""

from __future__ import annotations

from pathlib import Path

from echopanel.config import Settings
from echopanel.engines.base import DecodePolicy
from echopanel.events import Degraded
from echopanel.flow.ladder import Level
from echopanel.inference.scheduler import InferenceScheduler
from echopanel.metrics import ServerMetrics
from echopanel.server.controller import FlowController
from echopanel.session.session import Session

from fakes.engines import GatedEngine


class MeasuredScheduler(InferenceScheduler):
    """A scheduler whose busy time the test sets (the real one measures its worker threads)."""

    def __init__(self) -> None:
        super().__init__(workers=2)
        self.busy_total = 0.0
        self.final_total = 0.0
        self.wait = 0.0

    def busy_seconds(self) -> tuple[float, float]:
        return self.busy_total, self.final_total

    def final_wait_p95(self, since: float) -> float:
        return self.wait


def run_load(
    ctl: FlowController, sched: MeasuredScheduler, start: float, seconds: float, utilization: float, finals: float
) -> float:
    """``utilization``: share of capacity busy; ``finals``: the share spent on final decodes."""
    t = start
    while t < start + seconds:
        t += 0.5
        sched.busy_total += 0.5 * sched.workers * utilization
        sched.final_total += 0.5 * sched.workers * finals
        ctl.tick(t)
    return t


async def test_load_climbs_the_ladder_sessions_hear_it_and_it_recovers(tmp_path: Path) -> None:
    engine = GatedEngine()
    engine.policy = DecodePolicy()
    sched = MeasuredScheduler()
    ctl = FlowController(scheduler=sched, policy=engine.policy, base_interval_ms=300, metrics=ServerMetrics())
    settings = Settings(data_dir=tmp_path)
    session = Session(engine=engine, settings=settings, sources=["mic", "system"], sample_rate=16000)
    ctl.register(session)
    try:
        t = run_load(ctl, sched, 0.0, 3.0, 0.3, 0.1)
        assert ctl.level == Level.NORMAL and engine.policy.partial_interval_ms == 300
        t = run_load(ctl, sched, t, 10.0, 1.0, 0.3)  # busy with partials, finals prompt: no degradation
        assert ctl.level == Level.NORMAL and engine.policy.partial_interval_ms == 600  # cadence stretched
        t = run_load(ctl, sched, t, 11.0, 1.0, 0.95)  # finals alone fill the machine
        assert ctl.level == Level.NO_SYSTEM_PARTIALS
        assert engine.policy.partial_max_priority == 0 and engine.policy.partial_interval_ms == 900
        t = run_load(ctl, sched, t, 30.0, 1.0, 0.95)
        assert ctl.level == Level.SHED_SYSTEM and engine.policy.final_beam_size == 1
        assert not session.sources["system"].live and session.sources["mic"].live
        await session.append("system", b"\x00" * 3200)  # recorded, not queued
        assert session.sources["system"].queue.dropped_samples == 1600
        notices = [i for i in _drain(session) if isinstance(i, Degraded)]
        assert [n.level for n in notices] == [1, 2, 3, 4, 5]
        assert notices[-1].name == "shed_system" and "system audio" in notices[-1].reason
        run_load(ctl, sched, t, 30.0, 0.1, 0.05)  # load falls: back to full quality within 30 s, step by step
        assert ctl.level == Level.NORMAL
        assert engine.policy.partial_max_priority == 1 and engine.policy.final_beam_size == 5
        assert session.sources["system"].live
        assert [n.level for n in _drain(session) if isinstance(n, Degraded)] == [4, 3, 2, 1, 0]
    finally:
        await session.aclose()


def _drain(session: Session) -> list[object]:
    items = []
    while not session.outbox.empty():
        items.append(session.outbox.get_nowait())
    return items
