"""Rate limiting of login and email attempts: an in-memory sliding window per key.

A :class:`SlidingWindow` allows at most ``limit`` hits per key in any span of ``window``
seconds. It remembers the time of each hit (a deque per key), so a burst ages out hit by hit
rather than all at once at a fixed boundary, and it can say exactly when the next attempt
will be allowed (the ``Retry-After`` of a 429 answer).

:class:`RateLimiter` holds the server's windows: login attempts and email actions
(register, confirm, resend, password reset), each counted per *account* (an email address,
an API key id) and per *address* (the client's IP). Per address every attempt counts; per
account only failed attempts count, so a user who logs in successfully never locks themself
out while an attacker guessing passwords is stopped after a few guesses.

Time comes from an injected clock (``time.monotonic`` by default), so tests step it. State
is per process: several server processes each keep their own counts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..errors import RateLimitedError

__all__ = ["RateLimit", "RateLimits", "SlidingWindow", "RateLimiter", "Action"]

Action = Literal["login", "email"]


@dataclass(frozen=True)
class RateLimit:
    """At most ``limit`` attempts in any ``window`` seconds."""

    limit: int
    window: float

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0:
            raise ValueError("a rate limit needs limit >= 1 and window > 0")


@dataclass
class RateLimits:
    """The server's rate limits (``[auth.rate_limits]`` in tidesync.toml).

    Attributes:
        enabled: False turns every limit off (not for production).
        login_per_account: failed logins per account (email address, API key id).
        login_per_address: login attempts per client address, failed or not.
        email_per_account: email actions per email address (register, resend, reset requests).
        email_per_address: email actions (register, confirm, resend, reset) per client address.
        clock: seconds, monotonic; injected by tests.
    """

    enabled: bool = True
    login_per_account: RateLimit = field(default_factory=lambda: RateLimit(10, 300))
    login_per_address: RateLimit = field(default_factory=lambda: RateLimit(60, 60))
    email_per_account: RateLimit = field(default_factory=lambda: RateLimit(5, 3600))
    email_per_address: RateLimit = field(default_factory=lambda: RateLimit(30, 3600))
    clock: Callable[[], float] = time.monotonic


class SlidingWindow:
    """At most ``limit.limit`` hits per key in any span of ``limit.window`` seconds."""

    _SWEEP_EVERY = 1024

    def __init__(self, limit: RateLimit, clock: Callable[[], float]) -> None:
        self.limit = limit
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._since_sweep = 0

    def _recent(self, key: str, now: float) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        horizon = now - self.limit.window
        while hits and hits[0] <= horizon:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def retry_after(self, key: str) -> float | None:
        """Seconds until ``key`` may try again, or None if it may try now."""
        now = self._clock()
        hits = self._recent(key, now)
        if hits is None or len(hits) < self.limit.limit:
            return None
        return max(0.0, hits[0] + self.limit.window - now)

    def hit(self, key: str) -> None:
        """Count one attempt of ``key`` now."""
        now = self._clock()
        hits = self._recent(key, now)
        if hits is None:
            hits = self._hits[key] = deque()
        hits.append(now)
        while len(hits) > self.limit.limit:  # older hits no longer matter
            hits.popleft()
        self._since_sweep += 1
        if self._since_sweep >= self._SWEEP_EVERY:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        """Forget keys whose hits all aged out, so memory follows recent activity only."""
        self._since_sweep = 0
        for key in list(self._hits):
            self._recent(key, now)

    def __len__(self) -> int:
        return len(self._hits)


class RateLimiter:
    """The login and email windows of one server, per account and per address."""

    def __init__(self, limits: RateLimits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        clock = limits.clock
        self._windows: dict[tuple[Action, str], SlidingWindow] = {
            ("login", "account"): SlidingWindow(limits.login_per_account, clock),
            ("login", "address"): SlidingWindow(limits.login_per_address, clock),
            ("email", "account"): SlidingWindow(limits.email_per_account, clock),
            ("email", "address"): SlidingWindow(limits.email_per_address, clock),
        }

    def check(self, action: Action, *, account: str | None, address: str | None) -> None:
        """Refuse an attempt that would exceed a limit.

        Raises:
            RateLimitedError: with ``retry_after`` (seconds, rounded up).
        """
        if not self.limits.enabled:
            return
        waits: list[float] = []
        with self._lock:
            for kind, key in (("account", account), ("address", address)):
                if key is None:
                    continue
                wait = self._windows[(action, kind)].retry_after(key)
                if wait is not None:
                    waits.append(wait)
        if waits:
            retry = float(max(1, math.ceil(max(waits))))
            raise RateLimitedError(f"too many {action} attempts; try again in {retry:g} s", retry_after=retry,
                                   advice="")

    def record(self, action: Action, *, account: str | None, address: str | None, failed: bool) -> None:
        """Count an attempt: per address always, per account when it failed (login) or always
        (email actions, which have no failure the caller may learn of)."""
        if not self.limits.enabled:
            return
        with self._lock:
            if address is not None:
                self._windows[(action, "address")].hit(address)
            if account is not None and (failed or action == "email"):
                self._windows[(action, "account")].hit(account)
