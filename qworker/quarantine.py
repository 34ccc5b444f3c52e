"""Canary self-quarantine: a canary failing far above its limit stops polling before any alarm.

On a standard queue the canary already hands every delivery it did not succeed on back to the
primary as a fresh copy with the receive budget the message had left (qworker.settle), so a bad
canary costs latency, not DLQ entries. Quarantine goes further: `CanaryQuarantine` is an outcome
sink that keeps the canary's first attempts of a rolling window, and when their failure rate passes
the limit (with at least `min_messages` of them) it trips once: it logs one clear line, calls its
callbacks (the worker's `stop()`: polling stops, unstarted messages are released), and from then on
the health check reports unhealthy and the `Quarantined` metric is 1, so ECS replaces the task and
the pipeline's judge sees why.

First attempts only (a hand-back copy never is one), and every non-success among them (failed,
timed out, retried, rejected), as the canary judge counts them: a poison message fails on whichever
version gets it, and its retries would count it many times.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from typing import final

from qworker.outcome import Outcome, OutcomeRecord

__all__ = ["CanaryQuarantine"]

log = logging.getLogger(__name__)


@final
class CanaryQuarantine:
    """An outcome sink that trips when the rolling first-attempt failure rate passes a limit."""

    def __init__(
        self,
        *,
        failure_rate: float,
        min_messages: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Watch first attempts.

        Args:
            failure_rate: Trip when unsucceeded / first attempts in the window is above this (0-1].
            min_messages: First attempts the window needs before it can trip.
            window_s: The rolling window's length.
            clock: Monotonic seconds.
        """
        if not 0 < failure_rate <= 1:
            raise ValueError("failure_rate must be in (0, 1]")
        self.failure_rate = failure_rate
        self.min_messages = min_messages
        self.window_s = window_s
        self._clock = clock
        self._window: collections.deque[tuple[float, bool]] = collections.deque()
        self._failed = 0
        self._callbacks: list[Callable[[], None]] = []
        self.quarantined = False

    def __repr__(self) -> str:
        """Show the window's counts."""
        return (
            f"CanaryQuarantine(failed={self._failed}, first_attempts={len(self._window)}, "
            f"limit={self.failure_rate}, quarantined={self.quarantined})"
        )

    def on_trip(self, callback: Callable[[], None]) -> None:
        """Call `callback` (synchronously) when the quarantine trips."""
        self._callbacks.append(callback)

    @property
    def counts(self) -> tuple[int, int]:
        """`(failed, first_attempts)` in the current window."""
        self._evict(self._clock())
        return self._failed, len(self._window)

    def record(self, record: OutcomeRecord) -> None:
        """Take one outcome (an `OutcomeSink`)."""
        if self.quarantined or record.outcome is Outcome.RELEASED or not record.first_attempt:
            return
        now = self._clock()
        failed = record.outcome is not Outcome.SUCCEEDED
        self._window.append((now, failed))
        self._failed += failed
        self._evict(now)
        total = len(self._window)
        if total >= self.min_messages and self._failed / total > self.failure_rate:
            self._trip(total)

    def _evict(self, now: float) -> None:
        horizon = now - self.window_s
        while self._window and self._window[0][0] < horizon:
            _, failed = self._window.popleft()
            self._failed -= failed

    def _trip(self, total: int) -> None:
        self.quarantined = True
        log.error(
            "canary quarantined: %d of %d first attempts did not succeed in %g s (limit %.1f%%); "
            "polling stopped, health reports unhealthy",
            self._failed,
            total,
            self.window_s,
            self.failure_rate * 100,
            extra={
                "action": "canary_quarantined",
                "role": "canary",
                "failed": self._failed,
                "first_attempts": total,
                "failure_rate": round(self._failed / total, 4),
                "limit": self.failure_rate,
                "window_s": self.window_s,
            },
        )
        for callback in self._callbacks:
            callback()
