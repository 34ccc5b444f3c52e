"""EMF: aggregate outcomes in-process and write one CloudWatch EMF document per queue per interval.

`MetricsAggregator` is an outcome sink: it counts outcomes and keeps the handler times and message
ages of the current interval, per dimension key (role and queue; and a routed queue's bounded
message type when `metrics_message_type` is on). `snapshot()` takes the interval's numbers and
starts the next one; `build_document()` is the pure function that turns one key's numbers into
an EMF document; `EmfStdoutSink` writes documents to stdout through the aws-embedded-metrics
library (both in `qworker.emf_document`, re-exported here). Writing one document per key every
few seconds, instead of one per message, costs a few bytes per message instead of ~570
(docs/architecture.md, "The message path").

One document carries both dimension sets, `[Service, DeploymentRole]` and
`[Service, DeploymentRole, Queue]` (and, opted in, a routed queue's per-type documents also
`[Service, DeploymentRole, Queue, MessageType]`): CloudWatch adds up every document of a period, so
the role-level series of a worker with several queues (or of many tasks) is the sum of the
per-queue documents, which is exactly what the role-level numbers are. Known keys get a document
every interval, with explicit zeros while idle, so "no data" always means "no worker", never
"no messages".

EMF limits (https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/
CloudWatch_Embedded_Metric_Format_Specification.html) are the constants below. A value metric with
more than 100 samples in an interval is written as a histogram, `{"Values": [...], "Counts": [...]}`
of at most 100 entries (the form AWS's own `awslabs/metrique` EMF writer uses): the count and the
sum stay exact, percentiles stay close, and the minimum and maximum are kept as their own entries.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from typing import Final, final

from qworker.emf_document import (
    MAX_DIMENSIONS_PER_SET,
    MAX_METRICS_PER_DOCUMENT,
    MAX_VALUES_PER_METRIC,
    Aggregate,
    Distribution,
    EmfStdoutSink,
    Snapshot,
    build_document,
)
from qworker.metrics import OUTCOME_METRICS, MetricName
from qworker.outcome import Outcome, OutcomeRecord
from qworker.routing import metric_dimension

__all__ = [
    "MAX_DIMENSIONS_PER_SET",
    "MAX_METRICS_PER_DOCUMENT",
    "MAX_VALUES_PER_METRIC",
    "Aggregate",
    "Distribution",
    "EmfStdoutSink",
    "MetricsAggregator",
    "Snapshot",
    "build_document",
]

MAX_HELD_SAMPLES: Final = 20_000
"""Samples a value metric keeps per key and interval; beyond that, a uniform reservoir."""

MAX_SAMPLE_IDS: Final = 5
"""Message ids a document carries as properties (some of any outcome, some of failures)."""

_HISTOGRAM_GROUPS: Final = MAX_VALUES_PER_METRIC - 2  # the minimum and maximum get their own entry
_RELEASED: Final = Outcome.RELEASED
_FAILED: Final = Outcome.FAILED
_SUCCEEDED: Final = Outcome.SUCCEEDED
_FAILURES: Final = frozenset({Outcome.FAILED, Outcome.REJECTED})


@final
class _Samples:
    """One value metric's samples of one interval: a list while small, a reservoir when large."""

    __slots__ = ("_count", "_max", "_min", "_sum", "held")

    def __init__(self) -> None:
        self.held: list[float] = []
        self._count = 0  # only counted once MAX_HELD_SAMPLES are held (the list knows until then)
        self._sum = 0.0
        self._min = math.inf
        self._max = -math.inf

    def add(self, value: float) -> None:
        if self._count:  # past MAX_HELD_SAMPLES: exact totals, a reservoir of samples
            self._count += 1
            self._sum += value
            self._min, self._max = min(self._min, value), max(self._max, value)
            slot = random.randrange(self._count)  # noqa: S311 (sampling, not security)
            if slot < MAX_HELD_SAMPLES:
                self.held[slot] = value
            return
        held = self.held
        held.append(value)
        if len(held) >= MAX_HELD_SAMPLES:  # full: count exactly from here on
            self._count, self._sum = len(held), math.fsum(held)
            self._min, self._max = min(held), max(held)

    def distribution(self) -> Distribution | None:
        if not self.held:
            return None
        if self._count == 0:
            count, total = len(self.held), math.fsum(self.held)
            low, high = min(self.held), max(self.held)
        else:
            count, total, low, high = self._count, self._sum, self._min, self._max
        if count <= MAX_VALUES_PER_METRIC:
            return Distribution(count, total, low, high, tuple(self.held))
        values, counts = _histogram(sorted(self.held), count, low, high)
        return Distribution(count, total, low, high, values, counts)


def _histogram(
    ordered: list[float], count: int, low: float, high: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Summarise sorted samples as the min, the max, and equal-count groups' means in between.

    Each group is represented by its mean, so the histogram's sum equals the samples' sum; counts
    are scaled when `ordered` is a reservoir of a larger population.
    """
    middle = ordered[1:-1] if len(ordered) == count else ordered
    scale = (count - 2) / len(middle) if middle else 0.0
    values, counts = [low], [1.0]
    groups = min(_HISTOGRAM_GROUPS, len(middle))
    for index in range(groups):
        group = middle[index * len(middle) // groups : (index + 1) * len(middle) // groups]
        values.append(math.fsum(group) / len(group))
        counts.append(len(group) * scale)
    values.append(high)
    counts.append(1.0)
    merged_values: list[float] = []
    merged_counts: list[float] = []
    for value, weight in zip(values, counts, strict=True):
        if merged_values and merged_values[-1] == value:  # e.g. many equal ages: one entry
            merged_counts[-1] += weight
        else:
            merged_values.append(value)
            merged_counts.append(weight)
    return tuple(merged_values), tuple(merged_counts)


@final
class _Interval:
    """One key's running numbers for the current interval."""

    __slots__ = (
        "ages",
        "failed_ids",
        "first",
        "first_failed",
        "first_unsucceeded",
        "ids",
        "outcomes",
        "times",
    )

    def __init__(self) -> None:
        self.outcomes = dict.fromkeys(Outcome, 0)
        self.first = 0
        self.first_failed = 0
        self.first_unsucceeded = 0
        self.times = _Samples()
        self.ages = _Samples()
        self.ids: list[str] = []
        self.failed_ids: list[str] = []


@final
class MetricsAggregator:
    """An outcome sink that aggregates outcomes per (role, queue) for the current interval.

    `record()` runs once per message and only counts and appends; `snapshot()` does the rest once
    per interval.
    """

    def __init__(
        self,
        *,
        role: str,
        queues: Iterable[str] = (),
        quarantined: Callable[[], bool] | None = None,
        wall_clock: Callable[[], float] = time.time,
        message_types: bool = False,
    ) -> None:
        """Create an aggregator.

        Args:
            role: The worker's role: the key of queues known before their first outcome.
            queues: Queues to report from the start (zeros until their first outcome).
            quarantined: Tells whether the worker is quarantined (the `Quarantined` metric).
            wall_clock: Epoch seconds, for document timestamps.
            message_types: Key routed queues' outcomes by their bounded `MessageType` too
                (`qworker.routing.metric_dimension`), so their documents carry the
                `[Service, DeploymentRole, Queue, MessageType]` dimension set.
        """
        self._role = role
        self._quarantined = quarantined
        self._wall_clock = wall_clock
        self._message_types = message_types
        self._current: dict[tuple[str, str, str | None], _Interval] = {
            (role, q, None): _Interval() for q in queues
        }
        self._started = wall_clock()

    def __repr__(self) -> str:
        """Show the keys."""
        return f"MetricsAggregator({sorted(self._current)})"

    def track(self, queue: str) -> None:
        """Report `queue` every interval from now on, with zeros until its first outcome."""
        self._current.setdefault((self._role, queue, None), _Interval())

    def record(self, record: OutcomeRecord) -> None:
        """Count one outcome (an `OutcomeSink`); runs once per message, so it stays lean."""
        key = (
            record.role,
            record.queue,
            metric_dimension(record.message_type) if self._message_types else None,
        )
        interval = self._current.get(key)
        if interval is None:
            interval = self._current[key] = _Interval()
        outcome = record.outcome
        interval.outcomes[outcome] += 1
        if outcome is _RELEASED:
            return
        if record.first_attempt:
            interval.first += 1
            if outcome is not _SUCCEEDED:
                interval.first_unsucceeded += 1
                if outcome is _FAILED:
                    interval.first_failed += 1
        interval.times.add(record.duration_s * 1000)
        interval.ages.add(record.message_age_s * 1000)
        if len(interval.ids) < MAX_SAMPLE_IDS:
            interval.ids.append(record.message_id)
        if outcome in _FAILURES and len(interval.failed_ids) < MAX_SAMPLE_IDS:
            interval.failed_ids.append(record.message_id)

    def snapshot(self) -> Snapshot:
        """Take the current interval's numbers (every known key, zeros included); start the next."""
        now = self._wall_clock()
        quarantined = int(self._quarantined()) if self._quarantined is not None else 0
        taken, self._current = self._current, {key: _Interval() for key in self._current}
        aggregates = tuple(
            _aggregate(key, interval, quarantined)
            for key, interval in sorted(
                taken.items(), key=lambda item: (*item[0][:2], item[0][2] or "")
            )
        )
        interval_s, self._started = max(0.0, now - self._started), now
        return Snapshot(int(now * 1000), interval_s, aggregates)


def _aggregate(
    key: tuple[str, str, str | None], interval: _Interval, quarantined: int
) -> Aggregate:
    role, queue, message_type = key
    outcomes = interval.outcomes
    counts = {metric: outcomes[outcome] for outcome, metric in OUTCOME_METRICS.items()}
    counts[MetricName.PROCESSED] = sum(outcomes.values()) - outcomes[Outcome.RELEASED]
    counts[MetricName.FIRST_ATTEMPT_PROCESSED] = interval.first
    counts[MetricName.FIRST_ATTEMPT_FAILED] = interval.first_failed
    counts[MetricName.FIRST_ATTEMPT_UNSUCCEEDED] = interval.first_unsucceeded
    counts[MetricName.QUARANTINED] = quarantined
    values = {
        name: dist
        for name, samples in (
            (MetricName.PROCESSING_TIME, interval.times),
            (MetricName.MESSAGE_AGE, interval.ages),
        )
        if (dist := samples.distribution()) is not None
    }
    return Aggregate(
        role,
        queue,
        counts,
        values,
        tuple(interval.ids),
        tuple(interval.failed_ids),
        message_type,
    )
