"""EMF documents: one dimension key's numbers for one interval, as a CloudWatch EMF document.

`qworker.emf` aggregates outcomes into `Snapshot`s of `Aggregate`s; this module holds those data
types, the pure `build_document()` that turns one aggregate into an EMF document within EMF's
limits, and `EmfStdoutSink`, which writes documents to stdout through the aws-embedded-metrics
library. `qworker.emf` re-exports every name.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, final

from aws_embedded_metrics.environment import Environment
from aws_embedded_metrics.environment.local_environment import LocalEnvironment
from aws_embedded_metrics.logger.metric import Metric
from aws_embedded_metrics.logger.metrics_context import MetricsContext
from aws_embedded_metrics.logger.metrics_logger import MetricsLogger
from aws_embedded_metrics.validator import validate_namespace

from qworker.exceptions import ConfigError
from qworker.metrics import (
    COUNT_METRICS,
    DIMENSION_SETS,
    MESSAGE_TYPE_DIMENSION_SET,
    METRICS,
    VALUE_METRICS,
    Dimension,
    MetricName,
)

__all__ = [
    "MAX_DIMENSIONS_PER_SET",
    "MAX_METRICS_PER_DOCUMENT",
    "MAX_VALUES_PER_METRIC",
    "Aggregate",
    "Distribution",
    "EmfStdoutSink",
    "Snapshot",
    "build_document",
]

MAX_VALUES_PER_METRIC: Final = 100
"""EMF: at most 100 values in one metric's array (or histogram)."""

MAX_METRICS_PER_DOCUMENT: Final = 100
"""EMF: at most 100 metrics in one document."""

MAX_DIMENSIONS_PER_SET: Final = 30
"""EMF: at most 30 dimensions in one dimension set."""


@final
@dataclass(frozen=True, slots=True)
class Distribution:
    """One value metric's samples in one interval, ready for EMF and for PutMetricData.

    Attributes:
        count: Samples taken (exact).
        total: Their sum (exact).
        minimum: The smallest.
        maximum: The largest.
        values: At most 100 values: the raw samples, or a histogram's representative values.
        counts: The histogram's counts (None: `values` are raw samples, each counted once).
    """

    count: int
    total: float
    minimum: float
    maximum: float
    values: tuple[float, ...]
    counts: tuple[float, ...] | None = None


@final
@dataclass(frozen=True, slots=True)
class Aggregate:
    """One dimension key's numbers for one interval.

    `message_type` is set only when the per-type dimension is on and the queue is routed (the
    bounded `MessageType` value); such a key's document also carries `MESSAGE_TYPE_DIMENSION_SET`.
    """

    role: str
    queue: str
    counts: Mapping[MetricName, int]
    values: Mapping[MetricName, Distribution]
    message_ids: tuple[str, ...] = ()
    failed_message_ids: tuple[str, ...] = ()
    message_type: str | None = None

    def dimension_sets(self) -> tuple[tuple[Dimension, ...], ...]:
        """The dimension sets this key's numbers go under (its document and PutMetricData)."""
        if self.message_type is None:
            return DIMENSION_SETS
        return (*DIMENSION_SETS, MESSAGE_TYPE_DIMENSION_SET)

    def dimensions(self, service: str) -> dict[Dimension, str]:
        """The value of each dimension of `dimension_sets()`."""
        values = {
            Dimension.SERVICE: service,
            Dimension.DEPLOYMENT_ROLE: self.role,
            Dimension.QUEUE: self.queue,
        }
        if self.message_type is not None:
            values[Dimension.MESSAGE_TYPE] = self.message_type
        return values


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one interval produced: one aggregate per known key."""

    timestamp_ms: int
    interval_s: float
    aggregates: tuple[Aggregate, ...]


def _emf_value(dist: Distribution) -> float | list[float] | dict[str, list[float]]:
    values = [round(v, 3) for v in dist.values]
    if dist.counts is not None:
        return {"Values": values, "Counts": [round(c, 3) for c in dist.counts]}
    return values[0] if len(values) == 1 else values


def build_document(
    aggregate: Aggregate,
    *,
    namespace: str,
    service: str,
    timestamp_ms: int,
    properties: Mapping[str, object] | None = None,
) -> dict[str, Any]:
    """Build one key's EMF document for one interval.

    Dimension values and metric values are top-level members; version, task id and message ids are
    properties (never dimensions: each value would make a new metric). Count metrics are always
    present (zeros included); a value metric only when it has samples.

    Args:
        aggregate: The key's numbers.
        namespace: The CloudWatch namespace.
        service: The `Service` dimension.
        timestamp_ms: The document's time, epoch milliseconds.
        properties: Extra members (e.g. `Version`, `TaskId`).

    Raises:
        ConfigError: The namespace is empty.
        ValueError: The document would break an EMF limit.
    """
    if not namespace or not namespace.strip():
        raise ConfigError("EMF needs a metrics namespace: set QWORKER_METRICS_NAMESPACE")
    dimension_sets = [[d.value for d in chosen] for chosen in aggregate.dimension_sets()]
    if any(len(s) > MAX_DIMENSIONS_PER_SET for s in dimension_sets):
        raise ValueError(f"EMF allows at most {MAX_DIMENSIONS_PER_SET} dimensions per set")
    members: dict[str, Any] = {
        **{d.value: value for d, value in aggregate.dimensions(service).items()},
        **(properties or {}),
    }
    if aggregate.message_ids:
        members["MessageIds"] = list(aggregate.message_ids)
    if aggregate.failed_message_ids:
        members["FailedMessageIds"] = list(aggregate.failed_message_ids)
    names = [spec.name for spec in COUNT_METRICS]
    names += [spec.name for spec in VALUE_METRICS if spec.name in aggregate.values]
    if len(names) > MAX_METRICS_PER_DOCUMENT:
        raise ValueError(f"EMF allows at most {MAX_METRICS_PER_DOCUMENT} metrics per document")
    for name in names:
        dist = aggregate.values.get(name)
        members[name.value] = _emf_value(dist) if dist is not None else aggregate.counts[name]
    members["_aws"] = {
        "Timestamp": timestamp_ms,
        "CloudWatchMetrics": [
            {
                "Namespace": namespace,
                "Dimensions": dimension_sets,
                "Metrics": [{"Name": n.value, "Unit": METRICS[n].unit.value} for n in names],
            }
        ],
    }
    return members


@final
class EmfStdoutSink:
    """Writes EMF documents to stdout, one JSON line each, through aws-embedded-metrics.

    The library's environment is set explicitly to `local` (its stdout sink): it does not detect
    ECS and would otherwise fall back to its agent sink, which sends to a CloudWatch agent that a
    Fargate task does not have, so the data would be lost. The awslogs driver ships stdout to
    CloudWatch Logs, which extracts EMF from any log event. stdout is flushed after every batch, so
    a block-buffered pipe cannot hold an interval's metrics back or lose them at exit.
    """

    def __init__(self) -> None:
        """Create the sink."""
        self._environment = LocalEnvironment()

    async def _resolve(self) -> Environment:
        return self._environment

    async def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        """Write documents (built by `build_document`) and flush stdout."""
        for document in documents:
            logger = MetricsLogger(self._resolve, _context(document))
            await logger.flush()
        sys.stdout.flush()


def _context(document: Mapping[str, Any]) -> MetricsContext:
    """Express a document in the library's terms, so its validators and serializer run on it."""
    aws = document["_aws"]
    directive = aws["CloudWatchMetrics"][0]
    validate_namespace(directive["Namespace"])
    context = MetricsContext(namespace=directive["Namespace"])
    context.set_dimensions(
        [{n: document[n] for n in s} for s in directive["Dimensions"]], use_default=False
    )
    metric_names = set()
    for metric in directive["Metrics"]:
        name, unit = metric["Name"], metric["Unit"]
        metric_names.add(name)
        value = document[name]
        if isinstance(value, dict):
            # A histogram: the library has no call for it, but writes a metric's single value
            # verbatim (tests/test_metrics.py checks that the written line equals the document).
            context.metrics[name] = Metric(value, unit)  # type: ignore[arg-type]
            continue
        for single in value if isinstance(value, list) else (value,):
            context.put_metric(name, single, unit)
    dimensions = {n for s in directive["Dimensions"] for n in s}
    for key, value in document.items():
        if key != "_aws" and key not in metric_names and key not in dimensions:
            context.set_property(key, value)
    context.set_timestamp(datetime.fromtimestamp(aws["Timestamp"] / 1000, tz=UTC))
    return context
