"""The canary judge's reader: cumulative per-role counts from CloudWatch, the backlog from SQS.

One `GetMetricData` call (paginated) reads, for the canary and the primary, the Sums of
`FirstAttemptProcessed`, `FirstAttemptFailed` and `Processed` and the Sum and SampleCount of
`ProcessingTime` (their ratio is the exact mean over the window; averaging per-minute Averages would
weight a quiet minute like a busy one), over [start, now] under the dimensions
`[Service, DeploymentRole]`, or `[Service, DeploymentRole, Queue]` when a queue is given. The worker
emits every metric under both dimension sets, so reading exactly one never double counts. Missing
data (a role that processed nothing, a metric not emitted yet) reads as zero.

The clients are plain boto3 clients passed in, so the same reader runs against AWS, LocalStack or
moto: `make_clients(region, endpoint_url)` builds them.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol, final

import boto3
import botocore.config
import botocore.exceptions

from qworker.canary.judge import Reading, RoleCounts
from qworker.metrics import DEFAULT_NAMESPACE, Dimension, MetricName
from qworker.settings import DeploymentRole

__all__ = [
    "CloudWatchClient",
    "CloudWatchSource",
    "MetricsQuery",
    "SqsClient",
    "make_clients",
    "metric_data_queries",
    "queue_name_of",
    "read_backlog",
    "read_role_counts",
]

log = logging.getLogger(__name__)

PERIOD_S: Final = 60
"""GetMetricData period: CloudWatch keeps 1-minute data for 15 days, longer than any bake."""

_SUMS: Final = (
    MetricName.FIRST_ATTEMPT_PROCESSED,
    MetricName.FIRST_ATTEMPT_FAILED,
    MetricName.PROCESSED,
)
_TIME_STATS: Final = ("Sum", "SampleCount")
_ROLES: Final = (DeploymentRole.CANARY, DeploymentRole.PRIMARY)
_BACKLOG_ATTRIBUTE: Final = "ApproximateNumberOfMessages"
"""Visible messages: the attribute behind CloudWatch's ApproximateNumberOfMessagesVisible."""


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


def metric_data_queries(query: MetricsQuery) -> list[dict[str, object]]:
    """The `MetricDataQueries` of one read: per role, the three Sums and ProcessingTime's two stats.

    Args:
        query: Which series.

    Returns:
        Ten queries, with Ids like `canary_firstattemptfailed_sum`.
    """
    wanted = [(m, "Sum") for m in _SUMS] + [(MetricName.PROCESSING_TIME, s) for s in _TIME_STATS]
    return [
        {
            "Id": _query_id(role, metric, stat),
            "MetricStat": {
                "Metric": {
                    "Namespace": query.namespace,
                    "MetricName": metric.value,
                    "Dimensions": query.dimensions(role),
                },
                "Period": PERIOD_S,
                "Stat": stat,
            },
            "ReturnData": True,
        }
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
        }
        if token:
            kwargs["NextToken"] = token
        page = cloudwatch.get_metric_data(**kwargs)
        yield page
        token = page.get("NextToken")
        if not token:
            return


def _sum_values(pages: Iterator[Mapping[str, object]]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for page in pages:
        results = page.get("MetricDataResults")
        for result in results if isinstance(results, Sequence) else ():
            if not isinstance(result, Mapping):
                continue
            values = result.get("Values")
            total = sum(v for v in values if isinstance(v, int | float)) if values else 0.0
            key = str(result.get("Id"))
            totals[key] = totals.get(key, 0.0) + total
    return totals


def _role_counts(role: str, totals: Mapping[str, float]) -> RoleCounts:
    def total(metric: MetricName, stat: str = "Sum") -> float:
        return totals.get(_query_id(role, metric, stat), 0.0)

    first = round(total(MetricName.FIRST_ATTEMPT_PROCESSED))
    failed = round(total(MetricName.FIRST_ATTEMPT_FAILED))
    if failed > first:
        # Both are written in one EMF document, so this only happens when a window edge splits
        # them across minutes; never report more failures than attempts.
        log.warning(
            "first-attempt failures above first attempts",
            extra={"action": "canary_read", "role": role, "failed": failed, "processed": first},
        )
        failed = first
    samples = total(MetricName.PROCESSING_TIME, "SampleCount")
    return RoleCounts(
        first_attempt_processed=first,
        first_attempt_failed=failed,
        processed=round(total(MetricName.PROCESSED)),
        processing_time_avg_ms=(
            total(MetricName.PROCESSING_TIME) / samples if samples > 0 else None
        ),
    )


def read_role_counts(
    cloudwatch: CloudWatchClient, query: MetricsQuery, start: datetime, end: datetime
) -> tuple[RoleCounts, RoleCounts]:
    """Read both roles' cumulative counts over [start, end].

    Args:
        cloudwatch: A CloudWatch client.
        query: Which series.
        start: Start of the window (timezone-aware).
        end: End of the window, after `start`.

    Returns:
        (canary, primary).
    """
    totals = _sum_values(_pages(cloudwatch, metric_data_queries(query), start, end))
    canary, primary = (_role_counts(role, totals) for role in _ROLES)
    return canary, primary


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
    ) -> None:
        """Read `query` from `start`, and the backlog of `backlog_queue` if it and `sqs` are given.

        Args:
            cloudwatch: A CloudWatch client.
            query: Which series.
            start: Start of the bake (timezone-aware); reads start at the next whole minute.
            sqs: An SQS client, for the backlog.
            backlog_queue: The queue's name or URL, for the backlog.
            now: The current time (injectable for tests).
        """
        self._cloudwatch = cloudwatch
        self._query = query
        self._start = _next_minute(start)
        self._sqs = sqs
        self._backlog_queue = backlog_queue
        self._now = now

    def __call__(self) -> Reading:
        """Read the counts so far and the backlog now."""
        end = self._now()
        if end > self._start:
            canary, primary = read_role_counts(self._cloudwatch, self._query, self._start, end)
        else:  # GetMetricData rejects an empty window, and there is no data in one anyway.
            canary, primary = RoleCounts(), RoleCounts()
        backlog = None
        if self._sqs is not None and self._backlog_queue is not None:
            backlog = read_backlog(self._sqs, self._backlog_queue)
        return Reading(canary=canary, primary=primary, backlog=backlog)


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
