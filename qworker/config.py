"""Plain typed configuration: what the worker's parts take instead of the settings.

The CLI edge reads the settings (`qworker.settings`, pydantic, the environment) and turns them into
these frozen dataclasses (`QWorkerSettings.worker_config()`, `.observability_config()`); everything
below the edge takes them, or plain arguments, and never reads the environment. Each dataclass
names its fields as the settings do, and its defaults are the settings' defaults (a test keeps
them equal), so an embedding program can build one by hand.

This module is stdlib-only, so any part may import it.
"""

from __future__ import annotations

import dataclasses
import enum
import re
from typing import Final, Literal, Protocol, TypeVar, final

__all__ = [
    "MAX_POLLERS",
    "QUEUE_NAME",
    "RECEIVE_BATCH",
    "ConsumerConfig",
    "DeploymentRole",
    "ObservabilityConfig",
    "SupportsObservabilityConfig",
    "SupportsWorkerConfig",
    "WorkerConfig",
    "default_pollers",
    "pick",
]

T = TypeVar("T")

QUEUE_NAME: Final = re.compile(r"(?=.{1,80}$)[A-Za-z0-9_-]+(\.fifo)?")
"""SQS's rule for a queue name: up to 80 letters, digits, `-` and `_`, FIFO ones ending `.fifo`."""


RECEIVE_BATCH: Final = 10
"""The most messages one ReceiveMessage returns (SQS's limit)."""

MAX_POLLERS: Final = 64
"""The most receive loops per queue (the `pollers` setting's upper bound)."""


DEFAULT_CONCURRENCY: Final = 16
"""Handlers running at once when not set (`QWORKER_CONCURRENCY`)."""


def default_pollers(concurrency: int) -> int:
    """Receive loops per queue when not set: one per 10 handler slots, at least 8, at most 64.

    Enough loops that receives of 10 keep every slot fed while each waits on the server (a loop
    with no free slot waits without receiving, so a small concurrency costs nothing more), and
    no fewer than a tuned plain receive loop uses, so the worker out of the box keeps up with it.
    """
    return min(MAX_POLLERS, max(8, -(-concurrency // RECEIVE_BATCH)))


class DeploymentRole(enum.StrEnum):
    """Which of the two services reading the queue this worker belongs to."""

    PRIMARY = "primary"
    CANARY = "canary"


@final
@dataclasses.dataclass(frozen=True, slots=True)
class ConsumerConfig:
    """How each queue is consumed (`qworker.wiring.build_consumer`).

    Attributes:
        concurrency: Handlers running at once (a handler's `max_in_flight` wins).
        pollers: Concurrent receive loops per queue (0: `default_pollers(concurrency)`).
        wait_time_s: Long-poll wait (0-20 s).
        visibility_timeout_s: Asked at receive (None: the queue's own).
        max_hold_s: Longest the heartbeat keeps a message invisible.
        handler_timeout_s: Fail a handler that runs longer (a handler's own timeout wins).
        shutdown_grace_s: Time running handlers get after a stop.
        retry_base_s: Backoff after a first failure.
        retry_max_s: Backoff ceiling.
        release_failed: Make failed messages visible at once (None: on for a canary).
        canary_max_hops: Hand-backs per message of a canary on a standard queue (0: release).
    """

    concurrency: int = 16
    pollers: int = 0
    wait_time_s: int = 20
    visibility_timeout_s: int | None = None
    max_hold_s: float = 3600.0
    handler_timeout_s: float | None = None
    shutdown_grace_s: float = 25.0
    retry_base_s: float = 2.0
    retry_max_s: float = 300.0
    release_failed: bool | None = None
    canary_max_hops: int = 50


@final
@dataclasses.dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a `Worker` needs beyond its app: where the queues are, start-up, payloads, consumers.

    Attributes:
        queue_url: The queue of handlers registered without one (wins over `queue_name`).
        queue_name: The same, by name.
        endpoint_url: A custom SQS (and S3) endpoint, e.g. LocalStack's; None for AWS.
        region: The AWS region.
        startup_timeout_s: Give up when the queue server cannot be reached this long at start.
        payload_bucket: S3 bucket for large message bodies sent (None: never offload).
        payload_threshold_bytes: Larger messages go through S3.
        payload_always: Every message body goes through S3.
        payload_keep: Keep a payload's S3 object after its message succeeded.
        consumer: How each queue is consumed.
    """

    queue_url: str | None = None
    queue_name: str | None = None
    endpoint_url: str | None = None
    region: str = "us-east-1"
    startup_timeout_s: float = 30.0
    payload_bucket: str | None = None
    payload_threshold_bytes: int = 262_144
    payload_always: bool = False
    payload_keep: bool = False
    consumer: ConsumerConfig = dataclasses.field(default_factory=ConsumerConfig)

    @property
    def pollers(self) -> int:
        """Receive loops per queue (sizes the SQS client's connection pool)."""
        consumer = self.consumer
        return consumer.pollers or default_pollers(consumer.concurrency)

    @property
    def wait_time_s(self) -> int:
        """Long-poll wait (the SQS client's read timeout must outlast it)."""
        return self.consumer.wait_time_s


@final
@dataclasses.dataclass(frozen=True, slots=True)
class ObservabilityConfig:
    """Metrics, traces, health and quarantine of one worker (`qworker.observability.build`).

    The fields are the settings of the same names (`QWorkerSettings`); `use_embedded` says
    whether the embedded server runs (then metrics are published locally and EMF stays off
    stdout by default).
    """

    queue_url: str | None = None
    queue_name: str | None = None
    endpoint_url: str | None = None
    region: str = "us-east-1"
    use_embedded: bool = False
    wait_time_s: int = 20
    log_format: Literal["json", "text"] = "json"
    metrics_namespace: str = "QWorker"
    metrics_interval_s: float = 10.0
    emf: Literal["auto", "on", "off"] = "auto"
    metrics_publish_cloudwatch: bool | None = None
    metrics_message_type: bool = False
    otel_exporter: Literal["none", "console", "otlp"] = "none"
    otel_sample_ratio: float = 1.0
    health_file: str | None = None
    health_interval_s: float = 5.0
    health_stall_margin_s: float = 30.0
    health_port: int | None = None
    health_loop_lag_s: float = 2.0
    canary_quarantine_failure_rate: float | None = None
    canary_quarantine_min_messages: int = 20
    canary_quarantine_window_s: float = 300.0


class SupportsWorkerConfig(Protocol):
    """Turns itself into a `WorkerConfig` (`QWorkerSettings` does)."""

    def worker_config(self) -> WorkerConfig:
        """The worker's part of it."""
        ...


class SupportsObservabilityConfig(Protocol):
    """Turns itself into an `ObservabilityConfig` (`QWorkerSettings` does)."""

    def observability_config(self) -> ObservabilityConfig:
        """The observability part of it."""
        ...


def pick(cls: type[T], source: object, **given: object) -> T:
    """Build dataclass `cls` from the attributes of `source` of the same names (`given` wins)."""
    values = {
        f.name: getattr(source, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in given and hasattr(source, f.name)
    }
    return cls(**values, **given)
