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
moto: `make_clients(region, endpoint_url)` builds them through `qworker._aws` (which also maps
every error: the reader raises qworker's `TransportError` family, never botocore's). The
CloudWatch queries are in `qworker.canary.metric_reads`, the ECS share in `qworker.canary.ecs`;
this module re-exports both, and holds the bake's `CloudWatchSource` and the backlog read.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Final, Protocol, final

from qworker._aws import AwsTarget, ClientProfile, map_errors, sync_client
from qworker.canary.ecs import EcsClient, expected_share_from_ecs
from qworker.canary.judge import Minute, Reading, TimeSummary
from qworker.canary.metric_reads import (
    PERIOD_S,
    CloudWatchClient,
    MetricsQuery,
    metric_data_queries,
    next_minute,
    read_minutes,
    read_role_counts,
    read_slow_counts,
    read_threshold,
    total,
)
from qworker.config import DeploymentRole
from qworker.exceptions import TransportError

__all__ = [
    "PERCENTILE_PROFILE",
    "PERIOD_S",
    "READ_PROFILE",
    "CloudWatchClient",
    "CloudWatchSource",
    "EcsClient",
    "LatencyStats",
    "MetricsQuery",
    "SqsClient",
    "expected_share_from_ecs",
    "make_clients",
    "make_ecs_client",
    "make_percentile_client",
    "metric_data_queries",
    "queue_name_of",
    "read_backlog",
    "read_minutes",
    "read_role_counts",
    "read_slow_counts",
    "read_threshold",
]

log = logging.getLogger(__name__)

READ_PROFILE: Final = ClientProfile(retries=8)
"""The bake's reads: standard retries, many of them (a long bake rides out throttling)."""

PERCENTILE_PROFILE: Final = ClientProfile(retries=1)
"""The percentile calls: few retries, so a server that refuses them says so at once."""

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


class SqsClient(Protocol):
    """The SQS calls the reader makes (a boto3 `sqs` client has them)."""

    def get_queue_url(self, **kwargs: object) -> Mapping[str, object]:
        """GetQueueUrl."""
        ...

    def get_queue_attributes(self, **kwargs: object) -> Mapping[str, object]:
        """GetQueueAttributes."""
        ...


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
        with map_errors("GetQueueUrl"):
            url = queue if "://" in queue else sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        with map_errors("GetQueueAttributes"):
            response = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[_BACKLOG_ATTRIBUTE])
        attributes = response.get("Attributes")
        value = attributes.get(_BACKLOG_ATTRIBUTE) if isinstance(attributes, Mapping) else None
        return int(str(value))
    except (TransportError, ValueError) as exc:
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
        self._start = next_minute(start)
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
            canary=total(minutes, DeploymentRole.CANARY),
            primary=total(minutes, DeploymentRole.PRIMARY),
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
        except TransportError as exc:
            code = exc.code
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


def make_clients(
    region: str | None, endpoint_url: str | None = None, *, local: bool = False
) -> tuple[CloudWatchClient, SqsClient]:
    """Build boto3 CloudWatch and SQS clients (`READ_PROFILE`: a long bake rides out throttling).

    Args:
        region: The AWS region (None: boto3's own resolution).
        endpoint_url: A custom endpoint for both, e.g. LocalStack's `http://127.0.0.1:4566`.
        local: A local server: dummy credentials.

    Returns:
        (cloudwatch, sqs).
    """
    target = AwsTarget(region, endpoint_url, local=local)
    return sync_client("cloudwatch", target, READ_PROFILE), sync_client("sqs", target, READ_PROFILE)


def make_percentile_client(
    region: str | None, endpoint_url: str | None = None, *, local: bool = False
) -> CloudWatchClient:
    """Build the boto3 CloudWatch client of the percentile calls (`PERCENTILE_PROFILE`).

    Args:
        region: The AWS region (None: boto3's own resolution).
        endpoint_url: A custom endpoint, e.g. LocalStack's `http://127.0.0.1:4566`.
        local: A local server: dummy credentials.
    """
    client: CloudWatchClient = sync_client(
        "cloudwatch", AwsTarget(region, endpoint_url, local=local), PERCENTILE_PROFILE
    )
    return client


def make_ecs_client(region: str | None, endpoint_url: str | None = None) -> EcsClient:
    """Build the boto3 ECS client of the expected-share read (`READ_PROFILE`).

    Args:
        region: The AWS region (None: boto3's own resolution).
        endpoint_url: A custom endpoint.
    """
    client: EcsClient = sync_client("ecs", AwsTarget(region, endpoint_url), READ_PROFILE)
    return client
