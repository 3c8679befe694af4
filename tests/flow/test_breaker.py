"""The circuit breaker's transitions and timings, with an injected clock (no sleeps)."""

from __future__ import annotations

import pytest

from echopanel.flow.breaker import BreakerSettings, BreakerState, CircuitBreaker

CLOSED, OPEN, HALF = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


def fail_n(b: CircuitBreaker, n: int, now: float) -> None:
    for _ in range(n):
        assert b.allow(now)[0]
        b.record_failure(now)


def test_defaults_are_five_failures_and_sixty_seconds() -> None:
    s = CircuitBreaker().settings
    assert (s.failure_threshold, s.reset_timeout_s) == (5, 60.0)


def test_four_failures_keep_it_closed_the_fifth_opens_it() -> None:
    b = CircuitBreaker()
    fail_n(b, 4, 10.0)
    assert b.state(10.0) is CLOSED and b.allow(10.0)[0]
    t = b.record_failure(10.5)
    assert t is not None and (t.old, t.new, t.at, t.failures) == (CLOSED, OPEN, 10.5, 5)
    assert b.state(10.5) is OPEN
    assert b.allow(10.5) == (False, None)


def test_a_success_resets_the_consecutive_count() -> None:
    b = CircuitBreaker()
    fail_n(b, 4, 0.0)
    b.record_success(1.0)
    fail_n(b, 4, 2.0)
    assert b.state(2.0) is CLOSED
    fail_n(b, 1, 3.0)
    assert b.state(3.0) is OPEN


def test_open_refuses_until_the_timeout_then_allows_exactly_one_trial() -> None:
    b = CircuitBreaker(BreakerSettings(failure_threshold=5, reset_timeout_s=60.0))
    fail_n(b, 5, 100.0)
    assert b.retry_in(100.0) == 60.0
    assert b.allow(159.999)[0] is False
    assert b.retry_in(159.0) == pytest.approx(1.0)
    assert b.state(160.0) is HALF
    ok, t = b.allow(160.0)
    assert ok and t is not None and (t.old, t.new) == (OPEN, HALF)
    assert b.allow(160.0) == (False, None)  # one trial at a time
    assert not b.available(161.0)


def test_trial_success_closes_it() -> None:
    b = CircuitBreaker(BreakerSettings(reset_timeout_s=60.0))
    fail_n(b, 5, 0.0)
    assert b.allow(60.0)[0]
    t = b.record_success(60.4)
    assert t is not None and (t.old, t.new) == (HALF, CLOSED)
    assert b.state(60.4) is CLOSED and b.allow(60.4)[0] and b.allow(60.4)[0]
    fail_n(b, 4, 61.0)
    assert b.state(61.0) is CLOSED  # the count starts again from zero


def test_trial_failure_reopens_for_another_full_period() -> None:
    b = CircuitBreaker(BreakerSettings(reset_timeout_s=60.0))
    fail_n(b, 5, 0.0)
    assert b.allow(60.0)[0]
    t = b.record_failure(61.0)
    assert t is not None and (t.old, t.new) == (HALF, OPEN)
    assert b.allow(120.9)[0] is False  # 60 s from the failed trial, not from the first opening
    assert b.allow(121.0)[0]
    assert b.opened_count == 2


def test_a_cancelled_trial_is_given_back() -> None:
    b = CircuitBreaker(BreakerSettings(reset_timeout_s=1.0))
    fail_n(b, 5, 0.0)
    assert b.allow(1.0)[0]
    assert not b.allow(1.0)[0]
    b.release()
    assert b.allow(1.0)[0]


def test_results_arriving_while_open_change_nothing() -> None:
    b = CircuitBreaker(BreakerSettings(reset_timeout_s=10.0))
    fail_n(b, 5, 0.0)
    assert b.record_success(1.0) is None and b.state(1.0) is OPEN
    assert b.record_failure(2.0) is None and b.retry_in(2.0) == 8.0


def test_reset_closes_an_open_breaker_and_clears_the_count() -> None:
    b = CircuitBreaker(BreakerSettings(reset_timeout_s=60.0))
    fail_n(b, 5, 0.0)
    t = b.reset(20.0)
    assert t is not None and (t.old, t.new) == (OPEN, CLOSED) and b.state(20.0) is CLOSED
    fail_n(b, 4, 21.0)  # a fresh count: four failures keep it closed
    assert b.state(21.0) is CLOSED and b.reset(22.0) is None


@pytest.mark.parametrize("threshold", [1, 3])
def test_threshold_is_configurable_at_n_and_n_minus_one(threshold: int) -> None:
    b = CircuitBreaker(BreakerSettings(failure_threshold=threshold, reset_timeout_s=0.0))
    fail_n(b, threshold - 1, 0.0)
    assert b.state(0.0) is CLOSED
    fail_n(b, 1, 0.0)
    assert b._state is OPEN
    assert b.state(0.0) is HALF  # a zero timeout: a trial is allowed at once


def test_invalid_settings() -> None:
    with pytest.raises(ValueError):
        BreakerSettings(failure_threshold=0)
    with pytest.raises(ValueError):
        BreakerSettings(reset_timeout_s=-1)
