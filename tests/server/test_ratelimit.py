"""The sliding-window rate limiter, with an injected clock."""

from __future__ import annotations

import pytest

import tidesync
from tests.helpers.auth import FakeClock
from tidesync.server.ratelimit import RateLimit, RateLimiter, RateLimits, SlidingWindow


def test_a_window_allows_limit_hits_then_says_when_the_oldest_ages_out():
    clock = FakeClock()
    w = SlidingWindow(RateLimit(3, 60), clock)
    for _ in range(3):
        assert w.retry_after("k") is None
        w.hit("k")
        clock.advance(10)
    assert w.retry_after("k") == pytest.approx(30)   # first hit at t0, now t0+30
    assert w.retry_after("other") is None
    clock.advance(30)
    assert w.retry_after("k") is None                # the first hit aged out: it slides
    w.hit("k")
    assert w.retry_after("k") == pytest.approx(10)


def test_idle_keys_are_forgotten():
    clock = FakeClock()
    w = SlidingWindow(RateLimit(2, 5), clock)
    for i in range(SlidingWindow._SWEEP_EVERY):
        w.hit(f"addr-{i}")
    clock.advance(6)
    w.hit("late")
    w._sweep(clock())
    assert len(w) == 1


def test_login_counts_failures_per_account_and_attempts_per_address():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits(login_per_account=RateLimit(2, 60), login_per_address=RateLimit(5, 60),
                                     clock=clock))
    for _ in range(10):   # successes do not lock an account
        limiter.check("login", account="alice", address=None)
        limiter.record("login", account="alice", address=None, failed=False)
    for _ in range(2):
        limiter.check("login", account="bob", address="10.0.0.1")
        limiter.record("login", account="bob", address="10.0.0.1", failed=True)
    with pytest.raises(tidesync.RateLimitedError) as err:
        limiter.check("login", account="bob", address="10.0.0.2")
    assert err.value.retry_after == 60 and err.value.code == "rate_limited"
    limiter.check("login", account="carol", address="10.0.0.1")   # 2 of 5 for the address
    for _ in range(3):
        limiter.record("login", account=None, address="10.0.0.1", failed=False)
    with pytest.raises(tidesync.RateLimitedError):
        limiter.check("login", account="dave", address="10.0.0.1")
    clock.advance(61)
    limiter.check("login", account="bob", address="10.0.0.1")


def test_disabled_limits_never_refuse():
    limiter = RateLimiter(RateLimits(enabled=False, login_per_account=RateLimit(1, 60)))
    for _ in range(5):
        limiter.record("login", account="a", address="x", failed=True)
        limiter.check("login", account="a", address="x")


def test_a_limit_must_make_sense():
    with pytest.raises(ValueError):
        RateLimit(0, 10)
