"""Local CloudWatch publishing: the EMF aggregates, also sent with PutMetricData.

CloudWatch Logs extracts EMF from the worker's stdout in AWS, but LocalStack and moto do not. For
local runs the worker can also publish each interval's aggregates with PutMetricData to the local
endpoint, so `qworker canary judge` reads the same numbers there as the pipeline reads in AWS.
Counts go as values, handler times and message ages as statistic sets (exact count, sum, min,
max).

Publishing is best effort: a failed call is logged and the interval's data dropped; it never stops
the worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final, final

from qworker._aws import CLOUDWATCH_PROFILE, AwsTarget, map_errors, open_client
from qworker.emf import Aggregate, Snapshot
from qworker.exceptions import TransportError
from qworker.metrics import COUNT_METRICS, METRICS, VALUE_METRICS

__all__ = ["CloudWatchPublisher", "metric_data", "open_cloudwatch_client"]

log = logging.getLogger(__name__)

PUT_METRIC_DATA_MAX_DATUMS: Final = 20
"""Datums per PutMetricData call: CloudWatch's historical limit, which every emulator accepts."""

PUBLISH_TIMEOUT_S: Final = 10.0
"""The longest one interval's publishing may take."""


@contextlib.asynccontextmanager
async def open_cloudwatch_client(
    *, region: str, endpoint_url: str | None, local: bool
) -> AsyncIterator[Any]:
    """Open an aiobotocore CloudWatch client (short timeouts: publishing is best effort).

    Args:
        region: The region.
        endpoint_url: The local endpoint (LocalStack, moto, the embedded server).
        local: Use dummy credentials (a local server does not check them).
    """
    target = AwsTarget(region, endpoint_url, local=local)
    async with open_client("cloudwatch", target, CLOUDWATCH_PROFILE) as client:
        yield client


def metric_data(aggregate: Aggregate, *, service: str, timestamp: datetime) -> list[dict[str, Any]]:
    """The PutMetricData datums of one key's aggregate, under every dimension set.

    The sets its EMF document carries (`Aggregate.dimension_sets()`: the per-type one too for a
    routed queue's per-type aggregate, `QWORKER_METRICS_MESSAGE_TYPE`).

    Args:
        aggregate: One key's numbers for one interval.
        service: The `Service` dimension.
        timestamp: The interval's time.
    """
    values = aggregate.dimensions(service)
    datums: list[dict[str, Any]] = []
    for dimension_set in aggregate.dimension_sets():
        dimensions = [{"Name": d.value, "Value": values[d]} for d in dimension_set]
        for spec in COUNT_METRICS:
            datums.append(  # noqa: PERF401 (two shapes of datum; a loop reads better)
                {
                    "MetricName": spec.name.value,
                    "Dimensions": dimensions,
                    "Timestamp": timestamp,
                    "Value": float(aggregate.counts[spec.name]),
                    "Unit": spec.unit.value,
                }
            )
        for spec in VALUE_METRICS:
            dist = aggregate.values.get(spec.name)
            if dist is None:
                continue
            datums.append(
                {
                    "MetricName": spec.name.value,
                    "Dimensions": dimensions,
                    "Timestamp": timestamp,
                    "StatisticValues": {
                        "SampleCount": float(dist.count),
                        "Sum": dist.total,
                        "Minimum": dist.minimum,
                        "Maximum": dist.maximum,
                    },
                    "Unit": METRICS[spec.name].unit.value,
                }
            )
    return datums


@final
class CloudWatchPublisher:
    """Publishes snapshots with PutMetricData."""

    def __init__(self, client: Any, *, namespace: str, service: str) -> None:  # noqa: ANN401 (aiobotocore is untyped)
        """Publish through `client` under `namespace`.

        Args:
            client: An open aiobotocore CloudWatch client.
            namespace: The metric namespace.
            service: The `Service` dimension.
        """
        self._client = client
        self.namespace = namespace
        self.service = service
        self.failures = 0

    async def publish(self, snapshot: Snapshot) -> bool:
        """Publish one interval; return whether every call succeeded (failures are logged)."""
        timestamp = datetime.fromtimestamp(snapshot.timestamp_ms / 1000, tz=UTC)
        datums = [
            datum
            for aggregate in snapshot.aggregates
            for datum in metric_data(aggregate, service=self.service, timestamp=timestamp)
        ]
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                for start in range(0, len(datums), PUT_METRIC_DATA_MAX_DATUMS):
                    with map_errors("PutMetricData"):
                        await self._client.put_metric_data(
                            Namespace=self.namespace,
                            MetricData=datums[start : start + PUT_METRIC_DATA_MAX_DATUMS],
                        )
        except (TransportError, OSError, TimeoutError) as exc:
            self.failures += 1
            log.warning(
                "publishing metrics to cloudwatch failed; this interval is dropped",
                extra={"action": "metrics_publish_failed", "error": str(exc)},
            )
            return False
        return True
