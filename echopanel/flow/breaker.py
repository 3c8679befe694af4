"""A circuit breaker: CLOSED -> OPEN -> HALF_OPEN -> CLOSED. Pure: the clock is passed in (tested without sleeps).

- CLOSED: every call is allowed. ``failure_threshold`` consecutive failures open the breaker.
- OPEN: no call is allowed until ``reset_timeout_s`` has passed since it opened; then it is HALF_OPEN.
- HALF_OPEN: exactly one trial call is allowed. Its success closes the breaker; its failure opens it again for
  another ``reset_timeout_s``. A trial that was granted but never ran (cancelled) is given back with ``release``.

Results of calls that started before the breaker opened and finish while it is open change nothing.
Used on the server around each engine of the fallback chain, and in the client around reconnection.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BreakerSettings:
    failure_threshold: int = 5  # consecutive failures that open the breaker
    reset_timeout_s: float = 60.0  # time open before one trial is allowed

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if self.reset_timeout_s < 0:
            raise ValueError("reset_timeout_s must not be negative")


@dataclass(frozen=True)
class Transition:
    """A state change, returned by the call that caused it (for logs, metrics and notices)."""

    old: BreakerState
    new: BreakerState
    at: float
    failures: int  # consecutive failures counted when it happened


class CircuitBreaker:
    def __init__(self, settings: BreakerSettings | None = None) -> None:
        self.settings = settings or BreakerSettings()
        self._state = BreakerState.CLOSED
        self.failures = 0  # consecutive failures (CLOSED), or of the trials since opening
        self.opened_at: float | None = None
        self._trial_out = False  # HALF_OPEN: the one trial was granted and has not reported yet
        self.total_failures = 0
        self.total_successes = 0
        self.opened_count = 0

    # -- reading ---------------------------------------------------------------------------------------------------

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (an OPEN breaker whose timeout passed reads as HALF_OPEN)."""
        if self._state is BreakerState.OPEN and self._timeout_passed(now):
            return BreakerState.HALF_OPEN
        return self._state

    def retry_in(self, now: float) -> float:
        """Seconds until a trial is allowed (0 when calls are allowed now)."""
        if self._state is BreakerState.OPEN and self.opened_at is not None:
            return max(0.0, self.opened_at + self.settings.reset_timeout_s - now)
        return 0.0

    def available(self, now: float) -> bool:
        """Whether ``allow`` would grant a call now (without taking it)."""
        state = self.state(now)
        if state is BreakerState.CLOSED:
            return True
        if state is BreakerState.HALF_OPEN:
            return not self._trial_out
        return False

    # -- using -----------------------------------------------------------------------------------------------------

    def allow(self, now: float) -> tuple[bool, Transition | None]:
        """May a call go through now? In HALF_OPEN this takes the one trial."""
        transition = None
        if self._state is BreakerState.OPEN and self._timeout_passed(now):
            transition = self._move(BreakerState.HALF_OPEN, now)
        if self._state is BreakerState.CLOSED:
            return True, transition
        if self._state is BreakerState.HALF_OPEN and not self._trial_out:
            self._trial_out = True
            return True, transition
        return False, transition

    def reset(self, now: float) -> Transition | None:
        """A success seen outside the breaker's own trial (the client's last resume attempt before the server's grace
        period ends succeeded while the breaker was OPEN): close it."""
        self._trial_out = False
        self.failures = 0
        if self._state is BreakerState.CLOSED:
            return None
        return self._move(BreakerState.CLOSED, now)

    def release(self) -> None:
        """A granted trial never ran (the call was cancelled): let the next call be the trial."""
        self._trial_out = False

    def record_success(self, now: float) -> Transition | None:
        self.total_successes += 1
        if self._state is BreakerState.CLOSED:
            self.failures = 0
            return None
        if self._state is BreakerState.HALF_OPEN:
            self._trial_out = False
            self.failures = 0
            return self._move(BreakerState.CLOSED, now)
        return None  # OPEN: a call from before the breaker opened; it proves nothing about now

    def record_failure(self, now: float) -> Transition | None:
        self.total_failures += 1
        if self._state is BreakerState.CLOSED:
            self.failures += 1
            if self.failures >= self.settings.failure_threshold:
                return self._open(now)
            return None
        if self._state is BreakerState.HALF_OPEN:
            self._trial_out = False
            self.failures += 1
            return self._open(now)
        return None  # OPEN already

    # -- internals -------------------------------------------------------------------------------------------------

    def _timeout_passed(self, now: float) -> bool:
        return self.opened_at is not None and now - self.opened_at >= self.settings.reset_timeout_s

    def _open(self, now: float) -> Transition:
        self.opened_at = now
        self.opened_count += 1
        return self._move(BreakerState.OPEN, now)

    def _move(self, new: BreakerState, now: float) -> Transition:
        old, self._state = self._state, new
        return Transition(old, new, now, self.failures)
