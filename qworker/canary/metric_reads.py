"""The canary judge's CloudWatch reads: the GetMetricData queries and their per-minute results.

See `qworker.canary.reader` for what is read and why; this module builds the queries, pages
through the answers and sums them per role and minute. Every call runs inside
`qworker._aws.map_errors`, so a refusal or an outage raises qworker's `TransportError` family.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol, final

from qworker._aws import map_errors
from qworker.canary.judge import Minute, RoleCounts, TimeSummary
from qworker.config import DeploymentRole
from qworker.metrics import DEFAULT_NAMESPACE, Dimension, MetricName

__all__ = [
    "PERIOD_S",
    "ROLES",
    "CloudWatchClient",
    "MetricsQuery",
    "metric_data_queries",
    "next_minute",
    "read_minutes",
    "read_role_counts",
    "read_slow_counts",
    "read_threshold",
    "total",
]

log = logging.getLogger("qworker.canary.reader")  # the logger these lines always had

PERIOD_S: Final = 60
"""GetMetricData period: CloudWatch keeps 1-minute data for 15 days, longer than any bake."""

_SUMS: Final = (
    MetricName.FIRST_ATTEMPT_PROCESSED,
    MetricName.FIRST_ATTEMPT_UNSUCCEEDED,
    MetricName.PROCESSED,
)
_TIME_STATS: Final = ("Sum", "SampleCount", "Maximum")
ROLES: Final = (DeploymentRole.CANARY, DeploymentRole.PRIMARY)


class CloudWatchClient(Protocol):
    """The one CloudWatch call the reader makes (a boto3 `cloudwatch` client has it)."""

    def get_metric_data(self, **kwargs: object) -> Mapping[str, object]:
        """GetMetricData."""
        ...


@final
@dataclasses.dataclass(frozen=True, slots=True)
class MetricsQuery:
    """Which series to read: one service's, optionally one queue's, in one namespace."""

    service: str
    queue: str | None = None
    """The Queue dimension's value (the queue name)."""
    namespace: str = DEFAULT_NAMESPACE

    def dimensions(self, role: str) -> list[dict[str, str]]:
        """The GetMetricData dimensions of one role's series.

        Args:
            role: The DeploymentRole dimension's value.
        """
        dims = [
            {"Name": Dimension.SERVICE.value, "Value": self.service},
            {"Name": Dimension.DEPLOYMENT_ROLE.value, "Value": role},
        ]
        if self.queue is not None:
            dims.append({"Name": Dimension.QUEUE.value, "Value": self.queue})
        return dims


def next_minute(moment: datetime) -> datetime:
    """Round up to a whole minute.

    CloudWatch rounds a 60 s query's start DOWN to the minute, which would count up to 59 s from
    before the bake (the previous version's canary tasks may still have been running); starting at
    the next whole minute counts only data from the bake.
    """
    floor = moment.replace(second=0, microsecond=0)
    return floor if floor == moment else floor + timedelta(minutes=1)


def _query_id(role: str, metric: MetricName, stat: str) -> str:
    # Ids must start with a lower-case letter and hold only letters, digits and underscores.
    return f"{role}_{metric.value}_{stat}".lower()


def _stat_query(  # noqa: PLR0917 (one query's parts)
    query: MetricsQuery, query_id: str, role: str, metric: MetricName, stat: str, period: int
) -> dict[str, object]:
    return {
        "Id": query_id,
        "MetricStat": {
            "Metric": {
                "Namespace": query.namespace,
                "MetricName": metric.value,
                "Dimensions": query.dimensions(role),
            },
            "Period": period,
            "Stat": stat,
        },
        "ReturnData": True,
    }


def metric_data_queries(query: MetricsQuery) -> list[dict[str, object]]:
    """The `MetricDataQueries` of one read: per role, three Sums and ProcessingTime's three stats.

    Args:
        query: Which series.

    Returns:
        Twelve queries, with Ids like `canary_firstattemptunsucceeded_sum`.
    """
    wanted = [(m, "Sum") for m in _SUMS] + [(MetricName.PROCESSING_TIME, s) for s in _TIME_STATS]
    return [
        _stat_query(query, _query_id(role, metric, stat), role, metric, stat, PERIOD_S)
        for role in ROLES
        for metric, stat in wanted
    ]


def _pages(
    cloudwatch: CloudWatchClient, queries: list[dict[str, object]], start: datetime, end: datetime
) -> Iterator[Mapping[str, object]]:
    token: object = None
    while True:
        kwargs: dict[str, object] = {
            "MetricDataQueries": queries,
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending",
        }
        if token:
            kwargs["NextToken"] = token
        with map_errors("GetMetricData"):
            page = cloudwatch.get_metric_data(**kwargs)
        yield page
        token = page.get("NextToken")
        if not token:
            return


def _series(pages: Iterator[Mapping[str, object]]) -> dict[str, dict[datetime, float]]:
    """Every query's values by timestamp (summed if a timestamp comes twice)."""
    series: dict[str, dict[datetime, float]] = {}
    for page in pages:
        results = page.get("MetricDataResults")
        for result in results if isinstance(results, Sequence) else ():
            if not isinstance(result, Mapping):
                continue
            values = result.get("Values") or []
            stamps = result.get("Timestamps") or []
            points = series.setdefault(str(result.get("Id")), {})
            for index, value in enumerate(values if isinstance(values, Sequence) else ()):
                if not isinstance(value, int | float):
                    continue
                stamp = (
                    stamps[index] if isinstance(stamps, Sequence) and index < len(stamps) else None
                )
                key = stamp if isinstance(stamp, datetime) else datetime.min.replace(tzinfo=UTC)
                points[key] = points.get(key, 0.0) + float(value)
    return series


def _role_minute(
    role: str, stamp: datetime, series: Mapping[str, Mapping[datetime, float]]
) -> tuple[RoleCounts, TimeSummary | None]:
    def value(metric: MetricName, stat: str = "Sum") -> float:
        return series.get(_query_id(role, metric, stat), {}).get(stamp, 0.0)

    first = round(value(MetricName.FIRST_ATTEMPT_PROCESSED))
    unsucceeded = round(value(MetricName.FIRST_ATTEMPT_UNSUCCEEDED))
    if unsucceeded > first:
        # Both are written in one EMF document, so this only happens when a window edge splits
        # them across minutes; never report more non-successes than attempts.
        log.warning(
            "first-attempt non-successes above first attempts",
            extra={"action": "canary_read", "role": role, "unsucceeded": unsucceeded},
        )
        unsucceeded = first
    samples = round(value(MetricName.PROCESSING_TIME, "SampleCount"))
    time_sum = value(MetricName.PROCESSING_TIME)
    counts = RoleCounts(
        first_attempt_processed=first,
        first_attempt_unsucceeded=unsucceeded,
        processed=round(value(MetricName.PROCESSED)),
        processing_time_avg_ms=time_sum / samples if samples > 0 else None,
    )
    summary = None
    if samples > 0:
        summary = TimeSummary(samples, time_sum, value(MetricName.PROCESSING_TIME, "Maximum"))
    return counts, summary


def read_minutes(
    cloudwatch: CloudWatchClient, query: MetricsQuery, start: datetime, end: datetime
) -> tuple[Minute, ...]:
    """Read both roles' per-minute counts over [start, end], oldest first.

    Args:
        cloudwatch: A CloudWatch client.
        query: Which series.
        start: Start of the window (timezone-aware).
        end: End of the window, after `start`.

    Returns:
        One `Minute` per period in which either role has data.
    """
    series = _series(_pages(cloudwatch, metric_data_queries(query), start, end))
    stamps = sorted({stamp for points in series.values() for stamp in points})
    minutes = []
    for stamp in stamps:
        canary, canary_time = _role_minute(DeploymentRole.CANARY, stamp, series)
        primary, primary_time = _role_minute(DeploymentRole.PRIMARY, stamp, series)
        minutes.append(Minute(canary, primary, canary_time, primary_time, at=stamp))
    return tuple(minutes)


def total(minutes: Sequence[Minute], role: str) -> RoleCounts:
    """One role's counts summed over the minutes (the time average weighted by samples)."""
    counts = [m.canary if role == DeploymentRole.CANARY else m.primary for m in minutes]
    times = [m.canary_time if role == DeploymentRole.CANARY else m.primary_time for m in minutes]
    samples = sum(t.count for t in times if t is not None)
    time_sum = sum(t.sum_ms for t in times if t is not None)
    return RoleCounts(
        first_attempt_processed=sum(c.first_attempt_processed for c in counts),
        first_attempt_unsucceeded=sum(c.first_attempt_unsucceeded for c in counts),
        processed=sum(c.processed for c in counts),
        processing_time_avg_ms=time_sum / samples if samples > 0 else None,
    )


def read_role_counts(
    cloudwatch: CloudWatchClient, query: MetricsQuery, start: datetime, end: datetime
) -> tuple[RoleCounts, RoleCounts]:
    """Read both roles' totals over [start, end].

    Args:
        cloudwatch: A CloudWatch client.
        query: Which series.
        start: Start of the window (timezone-aware).
        end: End of the window, after `start`.

    Returns:
        (canary, primary).
    """
    minutes = read_minutes(cloudwatch, query, start, end)
    return total(minutes, DeploymentRole.CANARY), total(minutes, DeploymentRole.PRIMARY)


def read_threshold(
    cloudwatch: CloudWatchClient,
    query: MetricsQuery,
    start: datetime,
    end: datetime,
    percentile: float,
) -> float | None:
    """The primary's ProcessingTime percentile over [start, end] (one period over the window).

    Args:
        cloudwatch: A CloudWatch client that serves percentile statistics.
        query: Which series.
        start: Start of the window (a whole minute).
        end: End of the window.
        percentile: e.g. 90 for p90.

    Returns:
        The threshold in ms, or None without primary data.

    Raises:
        TransportError: The server refused the statistic (or could not be reached).
    """
    period = max(PERIOD_S, math.ceil((end - start).total_seconds() / PERIOD_S) * PERIOD_S)
    stat = f"p{percentile:g}"
    role = DeploymentRole.PRIMARY
    queries = [_stat_query(query, "threshold", role, MetricName.PROCESSING_TIME, stat, period)]
    values = [
        v
        for points in _series(_pages(cloudwatch, queries, start, end)).values()
        for v in points.values()
    ]
    return values[0] if values else None


def read_slow_counts(
    cloudwatch: CloudWatchClient,
    query: MetricsQuery,
    start: datetime,
    end: datetime,
    threshold_ms: float,
) -> dict[str, dict[datetime, float]]:
    """Per role and minute, the percentage of messages at or below `threshold_ms` (`PR(:x)`).

    Args:
        cloudwatch: A CloudWatch client that serves percentile statistics.
        query: Which series.
        start: Start of the window.
        end: End of the window.
        threshold_ms: The threshold.

    Returns:
        {role: {minute: percentage}}.

    Raises:
        TransportError: The server refused the statistic (or could not be reached).
    """
    stat = f"PR(:{threshold_ms:.6g})"
    queries = [
        _stat_query(query, f"{role}_pr", role, MetricName.PROCESSING_TIME, stat, PERIOD_S)
        for role in ROLES
    ]
    series = _series(_pages(cloudwatch, queries, start, end))
    return {role: series.get(f"{role}_pr", {}) for role in ROLES}
