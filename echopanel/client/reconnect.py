"""When to try the next connection after a drop: the client reconnect policy (docs/protocol.md, "Reconnect policy").

Pure (the clock is passed in, the randomness injected), so it is tested without sleeps. The web panel
(``echopanel/web/buffer.js``, ``ReconnectPolicy``) implements the same policy with the same numbers:

- **Full jitter.** The n-th failed attempt of an outage is followed by a wait of
  uniform(0, min(``backoff_max_s``, ``backoff_base_s`` x 2^n)): 0.25 s doubling to 10 s.
- **Circuit breaker** (``echopanel.flow.breaker``, the same one the server puts around its engines): 5 failed
  attempts in a row open it; while open no attempt is made; after 60 s one trial; its success closes it.
- **Grace trial.** The server keeps a dropped session for its resume grace (``session.created``
  ``limits.resume_grace_ms``, 30 s by default), shorter than the breaker's 60 s: while the breaker is open, one
  attempt is made at 75 % of the grace after the drop, so a short outage that happened to fail five quick attempts
  does not lose the session.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from echopanel.flow.breaker import BreakerSettings, BreakerState, CircuitBreaker

BACKOFF_BASE_S = 0.25
BACKOFF_MAX_S = 10.0
GRACE_TRIAL_AT = 0.75  # with the breaker open, one attempt at this fraction of the server's resume grace


@dataclass(frozen=True)
class Step:
    """What to do next: wait ``delay_s``, then attempt a connection if ``attempt`` (else only ask again)."""

    delay_s: float
    attempt: bool
    grace_trial: bool = False  # the one attempt made while the breaker is open, before the server's grace ends


class ReconnectPolicy:
    def __init__(
        self,
        *,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        breaker: BreakerSettings | None = None,
        grace_trial_at: float = GRACE_TRIAL_AT,
        rng: random.Random | None = None,
    ) -> None:
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.breaker = CircuitBreaker(breaker or BreakerSettings())
        self.grace_trial_at = grace_trial_at
        self.rng = rng or random.Random()
        self.failures = 0  # failed attempts in the current outage
        self._last_chance: float | None = None

    def outage(self, now: float, resume_grace_ms: int | float | None) -> None:
        """The connection was lost at ``now`` (or the first one is being made: no grace then)."""
        self.failures = 0
        grace_s = None if resume_grace_ms is None else resume_grace_ms / 1000
        self._last_chance = None if grace_s is None else now + self.grace_trial_at * grace_s

    def next(self, now: float) -> Step:
        """The next step. An allowed attempt must be reported with ``failed`` or ``succeeded``."""
        allowed, _ = self.breaker.allow(now)
        if allowed:
            cap = min(self.backoff_max_s, self.backoff_base_s * 2**self.failures)
            return Step(self.rng.uniform(0, cap), True)  # full jitter
        delay = self.breaker.retry_in(now)
        last = self._last_chance
        if last is not None and now < last and last - now < delay:
            self._last_chance = None  # one trial while the server still holds the session
            return Step(last - now, True, grace_trial=True)
        return Step(delay, False)

    def failed(self, now: float) -> None:
        self.failures += 1
        self.breaker.record_failure(now)

    def succeeded(self, now: float) -> None:
        self.failures = 0
        self.breaker.record_success(now)
        if self.breaker.state(now) is not BreakerState.CLOSED:
            self.breaker.reset(now)  # the grace trial got through while the breaker was open
