"""The reconnect policy (docs/protocol.md "Reconnect policy"): full jitter, the client breaker, the grace trial.

Pure, so the clock is a number and the randomness a ``random.Random`` that answers the ends of its range.
"""

from __future__ import annotations

import random

from echopanel.client.reconnect import ReconnectPolicy, Step
from echopanel.flow.breaker import BreakerState


class Highest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b


class Lowest(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def delays(policy: ReconnectPolicy, failures: int) -> float:
    policy.failures = failures
    step = policy.next(0.0)
    assert step.attempt
    return step.delay_s


def test_full_jitter_from_zero_to_a_doubling_cap() -> None:
    high = ReconnectPolicy(rng=Highest())
    assert [delays(high, n) for n in (0, 1, 2, 4, 5, 50)] == [0.25, 0.5, 1.0, 4.0, 8.0, 10.0]  # capped at 10 s
    low = ReconnectPolicy(rng=Lowest())
    assert delays(low, 3) == 0.0  # full jitter: any wait from nothing up to the cap


def test_five_failures_open_the_breaker_for_60_s_then_one_trial() -> None:
    policy = ReconnectPolicy(rng=Highest())
    policy.outage(0.0, None)  # no session yet (the first connection): no grace trial
    now = 0.0
    for _ in range(5):
        step = policy.next(now)
        assert step.attempt
        now += step.delay_s
        policy.failed(now)
    assert policy.breaker.state(now) is BreakerState.OPEN
    opened = now
    assert policy.next(now) == Step(60.0, False)  # open: only wait
    assert policy.next(now + 30) == Step(30.0, False)
    trial = policy.next(opened + 60)
    assert trial.attempt and not trial.grace_trial  # the breaker's own trial (half-open)
    policy.failed(opened + 60)
    assert policy.next(opened + 60) == Step(60.0, False)  # failed: open again for 60 s
    assert policy.next(opened + 120).attempt
    policy.succeeded(opened + 121)
    assert policy.breaker.state(opened + 121) is BreakerState.CLOSED and policy.failures == 0


def test_an_open_breaker_still_tries_once_at_75_percent_of_the_resume_grace() -> None:
    policy = ReconnectPolicy(rng=Lowest())
    policy.outage(100.0, 30_000)  # dropped at t = 100 s; the server keeps the session for 30 s
    for i in range(5):
        assert policy.next(100.0 + i).attempt
        policy.failed(100.0 + i)
    step = policy.next(104.0)
    assert step == Step(18.5, True, grace_trial=True)  # at 100 + 0.75 * 30 = 122.5 s, not at 164 s
    policy.failed(122.5)
    assert policy.next(122.5) == Step(41.5, False)  # once only: then the breaker's own wait


def test_a_grace_trial_that_gets_through_closes_the_breaker() -> None:
    policy = ReconnectPolicy(rng=Lowest())
    policy.outage(0.0, 30_000)
    for _ in range(5):
        policy.failed(1.0)
    assert policy.next(1.0).grace_trial
    policy.succeeded(22.5)  # resumed while the breaker was open
    assert policy.breaker.state(22.5) is BreakerState.CLOSED and policy.next(22.5).attempt


def test_no_grace_trial_once_the_grace_is_nearly_over() -> None:
    policy = ReconnectPolicy(rng=Lowest())
    policy.outage(0.0, 4_000)  # trial due at 3 s
    for _ in range(5):
        policy.failed(3.5)  # the breaker opens only after that moment
    assert policy.next(3.5) == Step(60.0, False)
