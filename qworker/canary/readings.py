"""What one look of the canary judge reads: both roles' counts, per minute and since the start.

The reader (`qworker.canary.reader`) builds these from CloudWatch; the simulation and the tests
build them by hand.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import final

__all__ = ["Minute", "Reading", "RoleCounts", "TimeSummary"]


@final
@dataclasses.dataclass(frozen=True, slots=True)
class RoleCounts:
    """One role's counts (since the bake started, or in one minute)."""

    first_attempt_processed: int = 0
    first_attempt_unsucceeded: int = 0  # failed, timed out, retried or rejected
    processed: int = 0
    processing_time_avg_ms: float | None = None  # mean over all processed; None without data

    def __post_init__(self) -> None:
        """Reject counts no worker can emit."""
        if min(self.first_attempt_processed, self.first_attempt_unsucceeded, self.processed) < 0:
            raise ValueError(f"counts must not be negative: {self}")
        if self.first_attempt_unsucceeded > self.first_attempt_processed:
            raise ValueError(f"more first-attempt non-successes than first attempts: {self}")

    @property
    def failure_rate(self) -> float | None:
        """First-attempt non-success rate, or None before the first attempt."""
        if self.first_attempt_processed == 0:
            return None
        return self.first_attempt_unsucceeded / self.first_attempt_processed


@final
@dataclasses.dataclass(frozen=True, slots=True)
class TimeSummary:
    """One role's ProcessingTime in one minute: CloudWatch's SampleCount, Sum and Maximum.

    `slow`, where the server serves percentile statistics, counts the messages slower than the
    primary's percentile over the bake.
    """

    count: int
    sum_ms: float
    max_ms: float
    slow: int | None = None

    @property
    def trimmed_mean_ms(self) -> float | None:
        """The mean without the slowest message, or None below two messages."""
        if self.count < 2:  # noqa: PLR2004 (one message to drop, one to keep)
            return None
        return max(self.sum_ms - self.max_ms, 0.0) / (self.count - 1)


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Minute:
    """Both roles' counts in one CloudWatch period (the last one may be partial)."""

    canary: RoleCounts
    primary: RoleCounts
    canary_time: TimeSummary | None = None
    primary_time: TimeSummary | None = None
    at: datetime | None = None  # the period's start


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """What one look reads: both roles' counts since the start, and the queue's visible backlog.

    `minutes` holds the same counts per minute when the reader has them; `latency_threshold_ms` the
    primary's percentile when the server served percentile statistics.
    """

    canary: RoleCounts
    primary: RoleCounts
    backlog: int | None = None
    minutes: tuple[Minute, ...] = ()
    latency_threshold_ms: float | None = None
