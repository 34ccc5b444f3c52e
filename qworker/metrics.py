"""The metric schema: the one list of names, units and dimensions the worker emits and alarms watch.

Two users read this module: the worker, which emits these metrics as CloudWatch EMF, and `deploy/`,
whose alarms and canary judge name them. A test loads the templates and checks every namespace,
metric name and dimension they use against this schema, so a rename here fails the test and not the
next canary.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

from qworker.outcome import Outcome

__all__ = [
    "COUNT_METRICS",
    "DEFAULT_NAMESPACE",
    "DIMENSION_SETS",
    "MESSAGE_TYPE_DIMENSION_SET",
    "METRICS",
    "OUTCOME_METRICS",
    "VALUE_METRICS",
    "Dimension",
    "MetricName",
    "MetricSpec",
    "Unit",
]

DEFAULT_NAMESPACE: Final = "QWorker"


class Dimension(enum.StrEnum):
    """Dimension names. Version, task id and message ids are EMF properties, never dimensions."""

    SERVICE = "Service"
    DEPLOYMENT_ROLE = "DeploymentRole"
    QUEUE = "Queue"
    MESSAGE_TYPE = "MessageType"


class Unit(enum.StrEnum):
    """The CloudWatch units the schema uses."""

    COUNT = "Count"
    MILLISECONDS = "Milliseconds"


class MetricName(enum.StrEnum):
    """Every metric name the worker emits."""

    PROCESSED = "Processed"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RETRIED = "Retried"
    REJECTED = "Rejected"
    RELEASED = "Released"
    FIRST_ATTEMPT_PROCESSED = "FirstAttemptProcessed"
    FIRST_ATTEMPT_FAILED = "FirstAttemptFailed"
    FIRST_ATTEMPT_UNSUCCEEDED = "FirstAttemptUnsucceeded"
    PROCESSING_TIME = "ProcessingTime"
    MESSAGE_AGE = "MessageAge"
    QUARANTINED = "Quarantined"


@final
@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One metric: its name, unit and what it counts."""

    name: MetricName
    unit: Unit
    description: str


DIMENSION_SETS: Final[tuple[tuple[Dimension, ...], ...]] = (
    (Dimension.SERVICE, Dimension.DEPLOYMENT_ROLE),
    (Dimension.SERVICE, Dimension.DEPLOYMENT_ROLE, Dimension.QUEUE),
)
"""Every metric is emitted under each of these dimension sets."""

MESSAGE_TYPE_DIMENSION_SET: Final[tuple[Dimension, ...]] = (
    Dimension.SERVICE,
    Dimension.DEPLOYMENT_ROLE,
    Dimension.QUEUE,
    Dimension.MESSAGE_TYPE,
)
"""Opt-in (`QWORKER_METRICS_MESSAGE_TYPE`): the documents of a routed queue also carry this set.

Its `MessageType` values are bounded by `qworker.routing.metric_dimension`: at most
`METRIC_TYPE_LIMIT` (20) declared route names, `unknown` and `other`.
"""

COUNT_METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(MetricName.PROCESSED, Unit.COUNT, "messages that ended in any outcome but released"),
    MetricSpec(MetricName.SUCCEEDED, Unit.COUNT, "handler returned; message deleted"),
    MetricSpec(MetricName.FAILED, Unit.COUNT, "handler raised or timed out"),
    MetricSpec(MetricName.RETRIED, Unit.COUNT, "handler raised Retry"),
    MetricSpec(MetricName.REJECTED, Unit.COUNT, "invalid body or Reject; sent to the DLQ"),
    MetricSpec(
        MetricName.RELEASED, Unit.COUNT, "received but never started; visible again at once"
    ),
    MetricSpec(
        MetricName.FIRST_ATTEMPT_PROCESSED, Unit.COUNT, "processed on the message's first delivery"
    ),
    MetricSpec(
        MetricName.FIRST_ATTEMPT_FAILED, Unit.COUNT, "failed on the message's first delivery"
    ),
    MetricSpec(
        MetricName.FIRST_ATTEMPT_UNSUCCEEDED,
        Unit.COUNT,
        "did not succeed on the message's first delivery: failed, timed out, retried or rejected "
        "(what the canary judge and the release alarms compare)",
    ),
    MetricSpec(
        MetricName.QUARANTINED,
        Unit.COUNT,
        "1 in every interval while a canary has quarantined itself (stopped polling), else 0",
    ),
)

VALUE_METRICS: Final[tuple[MetricSpec, ...]] = (
    MetricSpec(MetricName.PROCESSING_TIME, Unit.MILLISECONDS, "time in the handler"),
    MetricSpec(MetricName.MESSAGE_AGE, Unit.MILLISECONDS, "time from send to end of processing"),
)

METRICS: Final[dict[MetricName, MetricSpec]] = {m.name: m for m in COUNT_METRICS + VALUE_METRICS}

OUTCOME_METRICS: Final[dict[Outcome, MetricName]] = {
    Outcome.SUCCEEDED: MetricName.SUCCEEDED,
    Outcome.FAILED: MetricName.FAILED,
    Outcome.RETRIED: MetricName.RETRIED,
    Outcome.REJECTED: MetricName.REJECTED,
    Outcome.RELEASED: MetricName.RELEASED,
}
"""The count metric each outcome increments (besides `Processed` and the first-attempt counts)."""
