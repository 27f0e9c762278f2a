"""When and how long to retry: one frozen policy, turned into tenacity objects in one place.

Every destination shares this policy. Only :class:`~labstream.errors.TransientDestinationError` is
retried; a rejection is final. A server's ``Retry-After`` is honoured (never waiting less than it
asked, up to a cap), otherwise the wait grows exponentially with jitter. ``sleep`` is injected so
tests run in microseconds instead of real back-off time.
"""

from __future__ import annotations

import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import tenacity

from .errors import TransientDestinationError

__all__ = ["RetryPolicy", "Sleep"]

Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retry behaviour for every request labstream makes.

    Attributes:
        attempts: tries per request before the chunk is set aside (it is not dropped: it is tried
            again after ``cooldown_s``, until finalize's deadline).
        initial_backoff_s: first wait; then multiplied by ``multiplier`` each retry.
        max_backoff_s: cap on one wait.
        jitter_s: up to this much random time added to each wait, so many clients do not retry in
            lockstep after an outage.
        max_retry_after_s: cap on a server's ``Retry-After``.
        cooldown_s: pause before a chunk that used up its attempts is tried again.
    """

    attempts: int = 5
    initial_backoff_s: float = 0.5
    multiplier: float = 2.0
    max_backoff_s: float = 30.0
    jitter_s: float = 0.5
    max_retry_after_s: float = 120.0
    cooldown_s: float = 5.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be >= 1")
        if min(self.initial_backoff_s, self.max_backoff_s, self.jitter_s, self.cooldown_s) < 0:
            raise ValueError("RetryPolicy durations must be >= 0")

    def wait_for(self, retry_number: int, retry_after: float | None, jitter: float) -> float:
        """Seconds to wait before retry ``retry_number`` (1-based); ``jitter`` in [0, 1)."""
        backoff = self.initial_backoff_s * self.multiplier ** (retry_number - 1)
        wait = min(backoff + jitter * self.jitter_s, self.max_backoff_s)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after_s))
        return wait

    def retrying(
        self,
        *,
        sleep: Sleep,
        on_retry: Callable[[TransientDestinationError, float], None] | None = None,
        attempts: int | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        already_failed: int = 0,
    ) -> tenacity.AsyncRetrying:
        """A tenacity controller for one operation; re-raises the last error when attempts run out.

        Attempts are counted since the operation last made progress, so a multi-step operation
        that keeps advancing between failures is not given up on. With ``deadline`` (a ``clock()``
        time) no retry starts after it, and no wait runs past it; the first attempt is always made.
        ``already_failed`` counts attempts the caller made before (its fast path), so the budget
        and the back-off continue from there.
        """
        limit = attempts or self.attempts
        since = [-already_failed]  # attempt number at the last failure that followed progress

        def failures(state: tenacity.RetryCallState) -> int:
            exc = state.outcome.exception() if state.outcome else None
            if getattr(exc, "made_progress", False):
                since[0] = state.attempt_number - 1
            return state.attempt_number - since[0]

        def stop(state: tenacity.RetryCallState) -> bool:
            return failures(state) >= limit or (deadline is not None and clock() >= deadline)

        def wait(state: tenacity.RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            retry_after = getattr(exc, "retry_after", None)
            seconds = self.wait_for(failures(state), retry_after, random.random())
            return seconds if deadline is None else min(seconds, max(0.0, deadline - clock()))

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if on_retry is not None and isinstance(exc, TransientDestinationError):
                on_retry(exc, state.upcoming_sleep)

        return tenacity.AsyncRetrying(
            stop=stop,
            wait=wait,
            retry=tenacity.retry_if_exception_type(TransientDestinationError),
            before_sleep=before_sleep,
            sleep=sleep,
            reraise=True,
        )
