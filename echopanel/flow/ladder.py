"""The degrade ladder and adaptive cadence: pure functions of measured load and the clock (tested without sleeps).

Load is measured compute, not inferred from event timing. Partial re-decodes are best-effort filler that soaks up
idle capacity, so high total utilization alone is not overload (it only stretches the partial cadence). Overload is:
final decodes waiting for a worker (``final_wait_s``, p95), finals alone taking most of the capacity
(``final_utilization``: busy worker-seconds of finals / (workers x window)), or partials no longer served on time
(``partial_wait_s``, p95). The ladder climbs one step when load stays high for ``up_after_s`` and descends one step
when it stays low for ``down_after_s``; the gap between the two thresholds and the two delays is the hysteresis that
keeps it from flapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Level(IntEnum):
    NORMAL = 0
    SLOW_PARTIALS = 1  # partial cadence x3; live speaker labels pause (labelled at finalization)
    NO_SYSTEM_PARTIALS = 2  # partials only for the microphone
    NO_PARTIALS = 3  # finals only
    CHEAP_FINALS = 4  # greedy finals (beam 1)
    SHED_SYSTEM = 5  # system audio is recorded only; transcribed from the recording at finalization
    FALLBACK = 6  # not a load step: announced when an open breaker hands the work to the fallback engine


REASONS = {
    Level.NORMAL: "load is normal",
    Level.SLOW_PARTIALS: "high load: partial results less often; speaker labels when the session ends",
    Level.NO_SYSTEM_PARTIALS: "high load: no partial results for system audio",
    Level.NO_PARTIALS: "high load: final results only",
    Level.CHEAP_FINALS: "high load: faster, less accurate final decoding",
    Level.SHED_SYSTEM: "overload: system audio is recorded and transcribed after the session",
    Level.FALLBACK: "overload: fallback engine",
}


@dataclass(frozen=True)
class LoadSample:
    utilization: float  # 0..1 of inference capacity busy over the window (all decodes)
    final_wait_s: float  # p95 wait of final decodes for a worker
    final_utilization: float = 0.0  # 0..1 of capacity spent on final decodes
    partial_wait_s: float = 0.0  # p95 wait of partial decodes for a worker


@dataclass(frozen=True)
class LadderSettings:
    up_final_wait_s: float = 0.50
    up_final_utilization: float = 0.92  # wall time of contended decodes: ~2x their cost when both workers run
    up_partial_wait_s: float = 1.0
    down_final_wait_s: float = 0.20
    down_final_utilization: float = 0.50
    down_partial_wait_s: float = 0.35
    up_after_s: float = 2.0
    shed_after_s: float = 6.0  # the one lossy step (live system audio off) needs longer sustained overload
    down_after_s: float = 4.0
    settle_s: float = 3.0  # after a step, measurements from before it (the window) are not held against the new level
    # Severe overload (finals or partials waiting this many times their up-threshold, e.g. many sessions starting at
    # once) climbs the non-lossy steps faster: every final of a 20 s climb pays for it (bench/load.py, 8 sessions
    # started together: the slowest mic finals were all in the first 20 s). Shedding still needs ``shed_after_s``.
    severe_factor: float = 2.0
    severe_up_after_s: float = 1.0
    severe_settle_s: float = 1.5
    max_level: Level = Level.SHED_SYSTEM


class DegradeLadder:
    def __init__(self, settings: LadderSettings | None = None) -> None:
        self.s = settings or LadderSettings()
        self.level = Level.NORMAL
        self._high_since: float | None = None
        self._low_since: float | None = None
        self._changed_at = -1e9

    def update(self, now: float, load: LoadSample) -> Level | None:
        """Feed one measurement; returns the new level when it changed."""
        s = self.s
        high = (
            load.final_wait_s >= s.up_final_wait_s
            or load.final_utilization >= s.up_final_utilization
            or load.partial_wait_s >= s.up_partial_wait_s
        )
        low = (
            load.final_wait_s <= s.down_final_wait_s
            and load.final_utilization <= s.down_final_utilization
            and load.partial_wait_s <= s.down_partial_wait_s
        )
        severe = (
            load.final_wait_s >= s.severe_factor * s.up_final_wait_s
            or load.partial_wait_s >= s.severe_factor * s.up_partial_wait_s
        )
        if high and now - self._changed_at < (s.severe_settle_s if severe else s.settle_s):
            high = False  # the measurement window still covers the previous level: wait for its effect
        self._high_since = (self._high_since if self._high_since is not None else now) if high else None
        self._low_since = (self._low_since if self._low_since is not None else now) if low else None
        if self.level + 1 >= Level.SHED_SYSTEM:
            hold = s.shed_after_s
        else:
            hold = s.severe_up_after_s if severe else s.up_after_s
        if self._high_since is not None and now - self._high_since >= hold:
            if self.level < self.s.max_level:
                self.level = Level(self.level + 1)
                self._high_since = None  # the next step needs another full period of high load
                self._changed_at = now
                return self.level
        if self._low_since is not None and now - self._low_since >= self.s.down_after_s:
            if self.level > Level.NORMAL:
                self.level = Level(self.level - 1)
                self._low_since = None
                self._changed_at = now
                return self.level
        return None


def partial_interval_ms(base_ms: int, level: Level, utilization: float) -> int:
    """Adaptive cadence: fast partials when idle, fewer and larger as measured load rises."""
    if level >= Level.SLOW_PARTIALS:
        return base_ms * 3
    # Below the ladder: stretch smoothly from 1x at 50 % utilization to 2x at 90 %.
    stretch = min(1.0, max(0.0, (utilization - 0.5) / 0.4))
    return int(base_ms * (1.0 + stretch))
