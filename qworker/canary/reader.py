"""The canary judge's reader: per-minute per-role counts from CloudWatch, the backlog from SQS.

One `GetMetricData` call (paginated) reads, for the canary and the primary, per 60 s period,
the Sums of `FirstAttemptProcessed`, `FirstAttemptUnsucceeded` and `Processed` and the Sum,
SampleCount and Maximum of `ProcessingTime`, over [start, now] under the dimensions
`[Service, DeploymentRole]`, or `[Service, DeploymentRole, Queue]` when a queue is given. The
worker emits every metric under both dimension sets, so reading exactly one never double counts.
The per-minute values are kept (the judge's dispersion-robust test needs them) and summed for the
totals; missing data (a role that processed nothing, a metric not emitted yet) reads as zero. The
last minute is usually partial.

Latency, where the server serves percentile statistics (CloudWatch does): a second call reads the
primary's `p90` (the policy's percentile) of `ProcessingTime` over the whole window, and a third
each role's per-minute `PR(:threshold)`, the percentage of messages at or below it; the messages
slower than the threshold are SampleCount x (1 - PR/100). LocalStack 4 and moto answer percentile
statistics with an error (LocalStack: InternalError; moto: a bare HTTP 500); the first such
answer is logged once
(`action=canary_latency_fallback`) and the source then reads no percentiles, leaving the judge its
fallback on the per-minute Sum, SampleCount and Maximum, which every server serves.

The clients are plain boto3 clients passed in, so the same reader runs against AWS, LocalStack or
moto: `make_clients(region, endpoint_url)` builds them.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol, final

import boto3
import botocore.config
import botocore.exceptions

from qworker.canary.judge import Minute, Reading, RoleCounts, TimeSummary
from qworker.metrics import DEFAULT_NAMESPACE, Dimension, MetricName
from qworker.settings import DeploymentRole

__all__ = [
    "CloudWatchClient",
    "CloudWatchSource",
    "EcsClient",
    "LatencyStats",
    "MetricsQuery",
    "SqsClient",
    "expected_share_from_ecs",
    "make_clients",
    "metric_data_queries",
    "queue_name_of",
    "read_backlog",
    "read_minutes",
    "read_role_counts",
    "read_slow_counts",
    "read_threshold",
]

log = logging.getLogger(__name__)

PERIOD_S: Final = 60
"""GetMetricData period: CloudWatch keeps 1-minute data for 15 days, longer than any bake."""

_SUMS: Final = (
    MetricName.FIRST_ATTEMPT_PROCESSED,
    MetricName.FIRST_ATTEMPT_UNSUCCEEDED,
    MetricName.PROCESSED,
)
_TIME_STATS: Final = ("Sum", "SampleCount", "Maximum")
_ROLES: Final = (DeploymentRole.CANARY, DeploymentRole.PRIMARY)
_BACKLOG_ATTRIBUTE: Final = "ApproximateNumberOfMessages"
"""Visible messages: the attribute behind CloudWatch's ApproximateNumberOfMessagesVisible."""
_UNSUPPORTED_CODES: Final = frozenset(
    {
        "InternalError",
        "InternalFailure",
        "InternalServiceError",
        "InvalidParameterValue",
        "InvalidParameterCombination",
        "ValidationError",
        "NotImplemented",
        "UnsupportedOperation",
        "500",  # moto: an HTML 500 page, no error code
        "501",
    }
)
"""How a server says it does not serve a statistic (LocalStack's: InternalError)."""


class LatencyStats(enum.StrEnum):
    """Which latency statistics the reader asks for."""

    AUTO = "auto"  # percentiles; the fallback once the server refuses them
    PERCENTILE = "percentile"  # percentiles; an error if the server refuses them
    FALLBACK = "fallback"  # Sum, SampleCount and Maximum only


class CloudWatchClient(Protocol):
    """The one CloudWatch call the reader makes (a boto3 `cloudwatch` client has it)."""

    def get_metric_data(self, **kwargs: object) -> Mapping[str, object]:
        """GetMetricData."""
        ...


class SqsClient(Protocol):
    """The SQS calls the reader makes (a boto3 `sqs` client has them)."""

    def get_queue_url(self, **kwargs: object) -> Mapping[str, object]:
        """GetQueueUrl."""
        ...

    def get_queue_attributes(self, **kwargs: object) -> Mapping[str, object]:
        """GetQueueAttributes."""
        ...


class EcsClient(Protocol):
    """The ECS calls the expected-share read makes (a boto3 `ecs` client has them)."""

    def describe_services(self, **kwargs: object) -> Mapping[str, object]:
        """DescribeServices."""
        ...

    def describe_task_definition(self, **kwargs: object) -> Mapping[str, object]:
        """DescribeTaskDefinition."""
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


def _next_minute(moment: datetime) -> datetime:
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
        for role in _ROLES
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


def _total(minutes: Sequence[Minute], role: str) -> RoleCounts:
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
    return _total(minutes, DeploymentRole.CANARY), _total(minutes, DeploymentRole.PRIMARY)


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
        botocore.exceptions.ClientError: The server refused the statistic.
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
        botocore.exceptions.ClientError: The server refused the statistic.
    """
    stat = f"PR(:{threshold_ms:.6g})"
    queries = [
        _stat_query(query, f"{role}_pr", role, MetricName.PROCESSING_TIME, stat, PERIOD_S)
        for role in _ROLES
    ]
    series = _series(_pages(cloudwatch, queries, start, end))
    return {role: series.get(f"{role}_pr", {}) for role in _ROLES}


def _with_slow(
    summary: TimeSummary | None, percent_at_or_below: float | None
) -> TimeSummary | None:
    if summary is None:
        return None
    if percent_at_or_below is None:  # the statistic has no value for that minute: unknown
        return summary
    slow = round(summary.count * (100.0 - percent_at_or_below) / 100.0)
    return dataclasses.replace(summary, slow=min(max(slow, 0), summary.count))


def queue_name_of(queue: str) -> str:
    """The queue name, given a name or a queue URL.

    Args:
        queue: `orders` or `https://sqs.eu-west-1.amazonaws.com/123456789012/orders`.
    """
    return queue.rstrip("/").rsplit("/", 1)[-1]


def read_backlog(sqs: SqsClient, queue: str) -> int | None:
    """The queue's visible messages (GetQueueAttributes ApproximateNumberOfMessages), or None.

    The backlog only feeds the silent-canary guard, so an error (no permission, no such queue) is
    logged and reads as unknown rather than ending the bake.

    Args:
        sqs: An SQS client.
        queue: The queue's name or URL.
    """
    try:
        url = queue if "://" in queue else sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        response = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[_BACKLOG_ATTRIBUTE])
        attributes = response.get("Attributes")
        value = attributes.get(_BACKLOG_ATTRIBUTE) if isinstance(attributes, Mapping) else None
        return int(str(value))
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, ValueError) as exc:
        log.warning(
            "queue backlog unavailable",
            extra={"action": "canary_backlog", "queue": queue, "error": str(exc)},
        )
        return None


@final
class CloudWatchSource:
    """A bake's `read_fn`: each call reads [start, now] from CloudWatch and the backlog from SQS."""

    def __init__(
        self,
        cloudwatch: CloudWatchClient,
        query: MetricsQuery,
        start: datetime,
        *,
        sqs: SqsClient | None = None,
        backlog_queue: str | None = None,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        latency: LatencyStats = LatencyStats.AUTO,
        latency_percentile: float = 90.0,
        percentile_cloudwatch: CloudWatchClient | None = None,
    ) -> None:
        """Read `query` from `start`, and the backlog of `backlog_queue` if it and `sqs` are given.

        Args:
            cloudwatch: A CloudWatch client.
            query: Which series.
            start: Start of the bake (timezone-aware); reads start at the next whole minute.
            sqs: An SQS client, for the backlog.
            backlog_queue: The queue's name or URL, for the backlog.
            now: The current time (injectable for tests).
            latency: Which latency statistics to ask for.
            latency_percentile: The primary's percentile that defines a slow message.
            percentile_cloudwatch: The client for the percentile calls (default: `cloudwatch`);
                one without retries learns at once that a server refuses them.
        """
        self._cloudwatch = cloudwatch
        self._percentiles = percentile_cloudwatch or cloudwatch
        self._query = query
        self._start = _next_minute(start)
        self._sqs = sqs
        self._backlog_queue = backlog_queue
        self._now = now
        self._latency = latency
        self._percentile = latency_percentile

    @property
    def latency(self) -> LatencyStats:
        """The latency statistics it reads now (AUTO turns FALLBACK when a server refuses them)."""
        return self._latency

    def __call__(self) -> Reading:
        """Read the counts so far and the backlog now."""
        end = self._now()
        minutes: tuple[Minute, ...] = ()
        threshold = None
        if end > self._start:
            minutes = read_minutes(self._cloudwatch, self._query, self._start, end)
            if minutes and self._latency is not LatencyStats.FALLBACK:
                threshold, minutes = self._slow(minutes, end)
        # else: GetMetricData rejects an empty window, and there is no data in one anyway.
        backlog = None
        if self._sqs is not None and self._backlog_queue is not None:
            backlog = read_backlog(self._sqs, self._backlog_queue)
        return Reading(
            canary=_total(minutes, DeploymentRole.CANARY),
            primary=_total(minutes, DeploymentRole.PRIMARY),
            backlog=backlog,
            minutes=minutes,
            latency_threshold_ms=threshold,
        )

    def _slow(
        self, minutes: tuple[Minute, ...], end: datetime
    ) -> tuple[float | None, tuple[Minute, ...]]:
        try:
            threshold = read_threshold(
                self._percentiles, self._query, self._start, end, self._percentile
            )
            if threshold is None:
                return None, minutes
            shares = read_slow_counts(self._percentiles, self._query, self._start, end, threshold)
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if self._latency is LatencyStats.PERCENTILE or code not in _UNSUPPORTED_CODES:
                raise
            log.warning(
                "percentile statistics unavailable; judging latency by per-minute trimmed means",
                extra={"action": "canary_latency_fallback", "code": code, "error": str(exc)},
            )
            self._latency = LatencyStats.FALLBACK
            return None, minutes
        canary, primary = shares[DeploymentRole.CANARY], shares[DeploymentRole.PRIMARY]
        return threshold, tuple(
            dataclasses.replace(
                minute,
                canary_time=_with_slow(minute.canary_time, canary.get(_at(minute))),
                primary_time=_with_slow(minute.primary_time, primary.get(_at(minute))),
            )
            for minute in minutes
        )


def _at(minute: Minute) -> datetime:
    return minute.at or datetime.min.replace(tzinfo=UTC)


def expected_share_from_ecs(
    ecs: EcsClient,
    cluster: str,
    canary_service: str,
    primary_service: str,
    default_pollers: int,
) -> float | None:
    """The canary's expected share of receives: its running tasks x pollers over both services'.

    Each service's running task count comes from DescribeServices and its pollers from the task
    definition's `QWORKER_POLLERS` environment variable (default `default_pollers`, the settings'
    default); every poller long-polls the same queue, so receives split by pollers.

    Args:
        ecs: An ECS client.
        cluster: The cluster's name or ARN.
        canary_service: The canary service's name or ARN.
        primary_service: The primary service's name or ARN.
        default_pollers: Pollers per task when the task definition does not set them.

    Returns:
        The expected share, or None when neither service runs a task.

    Raises:
        LookupError: A service was not found.
    """
    response = ecs.describe_services(cluster=cluster, services=[canary_service, primary_service])
    services = response.get("services")
    found = {
        str(s.get("serviceName")): s
        for s in (services if isinstance(services, Sequence) else ())
        if isinstance(s, Mapping)
    }
    capacity: list[int] = []
    for name in (canary_service, primary_service):
        service = found.get(name.rsplit("/", 1)[-1])
        if service is None:
            raise LookupError(f"ECS service {name!r} not found in cluster {cluster!r}")
        running = int(str(service.get("runningCount", 0)))
        capacity.append(
            running * _pollers(ecs, str(service.get("taskDefinition")), default_pollers)
        )
    total = sum(capacity)
    return capacity[0] / total if total else None


def _pollers(ecs: EcsClient, task_definition: str, default: int) -> int:
    response = ecs.describe_task_definition(taskDefinition=task_definition)
    definition = response.get("taskDefinition")
    containers = definition.get("containerDefinitions") if isinstance(definition, Mapping) else None
    for container in containers if isinstance(containers, Sequence) else ():
        environment = container.get("environment") if isinstance(container, Mapping) else None
        for variable in environment if isinstance(environment, Sequence) else ():
            if isinstance(variable, Mapping) and variable.get("name") == "QWORKER_POLLERS":
                try:
                    return max(1, int(str(variable.get("value"))))
                except ValueError:
                    return default
    return default


def make_clients(
    region: str | None, endpoint_url: str | None = None
) -> tuple[CloudWatchClient, SqsClient]:
    """Build boto3 CloudWatch and SQS clients (standard retries: a long bake rides out throttling).

    Args:
        region: The AWS region (None: boto3's own resolution).
        endpoint_url: A custom endpoint for both, e.g. LocalStack's `http://127.0.0.1:4566`.

    Returns:
        (cloudwatch, sqs).
    """
    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 8})
    session = boto3.session.Session(region_name=region)
    cloudwatch = session.client("cloudwatch", endpoint_url=endpoint_url, config=config)
    sqs = session.client("sqs", endpoint_url=endpoint_url, config=config)
    return cloudwatch, sqs
