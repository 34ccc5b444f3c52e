"""Settings: the one place that reads the environment.

`QWorkerSettings` reads `QWORKER_*` variables (and the region from `AWS_REGION` /
`AWS_DEFAULT_REGION`); the CLI turns every field into a flag of the same name, and explicit values
win over the environment, which wins over the defaults. Only the CLI edge imports this module: it
turns the settings into the plain config objects of `qworker.config` (`worker_config()`,
`observability_config()`) that everything below it takes.

A bad or missing setting raises `ConfigError` with a one-line message that names the variable, the
flag and the fix; the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal, final
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from qworker.config import (
    DEFAULT_CONCURRENCY,
    MAX_POLLERS,
    QUEUE_NAME,
    ConsumerConfig,
    DeploymentRole,
    ObservabilityConfig,
    WorkerConfig,
    default_pollers,
    pick,
)
from qworker.exceptions import ConfigError

__all__ = ["ENV_PREFIX", "QUEUE_NAME", "DeploymentRole", "QWorkerSettings", "load_settings"]

ENV_PREFIX: Final = "QWORKER_"

_REGION: Final = re.compile(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?")
"""botocore's own check of a region name (a bad one fails deep inside client creation)."""


def _check_url(value: str) -> None:
    """Raise ValueError unless `value` is an http(s) URL with a host (and a valid port)."""
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL (e.g. http://localhost:4566)")
    try:
        parts.port  # noqa: B018 (parsing the port is the check)
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None


PositiveFloat = Annotated[float, Field(gt=0)]


@final
class QWorkerSettings(BaseSettings):
    """Every setting of a worker: `QWORKER_<NAME>` in the environment, `--<name>` on the CLI."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        extra="ignore",
        frozen=True,
        validate_default=True,
        populate_by_name=True,
        allow_inf_nan=False,  # `inf` or `nan` is reported under the setting that holds it
    )

    queue_url: str | None = Field(
        default=None, description="URL of the queue to consume (wins over queue_name)."
    )
    queue_name: str | None = Field(
        default=None, description="Name of the queue to consume; its URL is looked up."
    )
    endpoint_url: str | None = Field(
        default=None, description="SQS (and CloudWatch) endpoint, e.g. LocalStack's."
    )
    region: str = Field(
        default="us-east-1",
        min_length=1,
        validation_alias=AliasChoices("QWORKER_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="AWS region (also read from AWS_REGION / AWS_DEFAULT_REGION).",
    )
    service: str = Field(
        default="qworker", min_length=1, description="Service name: the Service metric dimension."
    )
    deployment_role: DeploymentRole = Field(
        default=DeploymentRole.PRIMARY, description="primary or canary."
    )
    version: str = Field(default="dev", min_length=1, description="Version (the image tag).")
    concurrency: int = Field(
        default=DEFAULT_CONCURRENCY, ge=1, le=10_000, description="Handlers running at once."
    )
    pollers: int = Field(
        default=0,
        ge=0,
        le=MAX_POLLERS,
        description="Concurrent receive loops per queue (0: one per 10 of concurrency, 8 to 64).",
    )
    wait_time_s: int = Field(default=20, ge=0, le=20, description="Long-poll wait (0-20 s).")
    visibility_timeout_s: int | None = Field(
        default=None,
        ge=1,
        le=43_200,
        description="Visibility timeout asked at receive (default: the queue's own).",
    )
    max_hold_s: float = Field(
        default=3600.0,
        gt=0,
        le=43_200,
        description="Longest the heartbeat keeps a message invisible.",
    )
    handler_timeout_s: float | None = Field(
        default=None, gt=0, description="Fail a handler that runs longer than this."
    )
    startup_timeout_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="Give up (exit 2) when the queue server cannot be reached for this long at "
        "start-up (keep well below the ECS health check's StartPeriod, 60 s).",
    )
    shutdown_grace_s: float = Field(
        default=25.0,
        ge=0,
        le=115,
        description="Time running handlers get after SIGTERM (keep below ECS stopTimeout).",
    )
    retry_base_s: float = Field(default=2.0, ge=0, description="Backoff after a first failure.")
    retry_max_s: float = Field(default=300.0, ge=0, le=43_200, description="Backoff ceiling.")
    release_failed: bool | None = Field(
        default=None,
        description="Make failed messages visible at once (default: on for a canary).",
    )
    canary_max_hops: int = Field(
        default=50,
        ge=0,
        le=1000,
        description="A canary on a standard queue hands a message it did not succeed on back as a "
        "fresh copy (full receive budget for the primary) at most this many times (0: release).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["json", "text"] = Field(default="json", description="json or text logs.")
    embedded: bool | None = Field(
        default=None,
        description="Run an embedded local SQS server (default: when no queue or endpoint is set).",
    )
    local_port: int = Field(
        default=9324,
        ge=0,
        le=65_535,
        description="Port of the embedded SQS server on 127.0.0.1 (0: any free port).",
    )
    max_receive_count: int = Field(
        default=3,
        ge=1,
        le=1000,
        description="maxReceiveCount of the queues the embedded server creates.",
    )
    ecs_container_metadata_uri_v4: str | None = Field(
        default=None,
        validation_alias=AliasChoices("ECS_CONTAINER_METADATA_URI_V4"),
        description="Set by ECS: the task metadata endpoint, for the task id.",
    )
    # -- observability (issue 3) below this line --
    metrics_namespace: str = Field(
        default="QWorker",
        min_length=1,
        max_length=256,
        pattern=r"^[a-zA-Z0-9._#:/-]+$",
        description="CloudWatch namespace of the worker's metrics.",
    )
    metrics_interval_s: float = Field(
        default=10.0,
        gt=0,
        le=60,
        description="Seconds between EMF documents (one per queue; zeros while idle).",
    )
    emf: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="EMF metrics on stdout: auto (on, except locally: the embedded server or an "
        "endpoint set, where text logs get a one-line summary per interval instead), on or off.",
    )
    metrics_publish_cloudwatch: bool | None = Field(
        default=None,
        description="Also send metrics with PutMetricData to the endpoint (default: on when an "
        "endpoint is set or the embedded server runs; LocalStack does not read EMF).",
    )
    metrics_message_type: bool = Field(
        default=False,
        description="Also emit metrics per message type of routed queues (the MessageType "
        "dimension: at most 20 route names, 'unknown' and 'other').",
    )
    otel_exporter: Literal["none", "console", "otlp"] = Field(
        default="none",
        description="Trace exporter: none, console (stderr) or otlp "
        "(needs opentelemetry-exporter-otlp; OTEL_EXPORTER_OTLP_* configure it).",
    )
    otel_sample_ratio: float = Field(
        default=1.0,
        ge=0,
        le=1,
        description="Share of traces sampled when the producer did not decide (parent-based).",
    )
    health_file: str | None = Field(
        default=None,
        description="Health file the worker writes and `qworker health` reads "
        "(default: qworker-health/<role>-<pid>.json in the temp directory, one per worker).",
    )
    health_interval_s: float = Field(
        default=5.0, gt=0, le=60, description="Seconds between health file writes."
    )
    health_stall_margin_s: float = Field(
        default=30.0,
        gt=0,
        description="A poll loop without progress for wait_time_s plus this is reported stalled.",
    )
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65_535,
        description="Serve /health and /ready on 127.0.0.1 at this port (default: off).",
    )
    health_loop_lag_s: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="An event loop blocked longer than this is logged (naming the handler) and "
        "reported unhealthy while it lasts.",
    )
    canary_quarantine_failure_rate: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="A canary whose first-attempt failure rate passes this stops polling and "
        "reports unhealthy (default: off).",
    )
    canary_quarantine_min_messages: int = Field(
        default=20,
        ge=1,
        description="First attempts the quarantine rate needs within its window before it acts.",
    )
    canary_quarantine_window_s: float = Field(
        default=300.0, gt=0, description="Rolling window of the quarantine failure rate."
    )
    payload_bucket: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$",
        description="S3 bucket for large message bodies sent (default: none, never offload).",
    )
    payload_threshold_bytes: int = Field(
        default=262_144,
        ge=0,
        le=1_048_576,
        description="Messages larger than this (body plus attributes) go through S3.",
    )
    payload_always: bool = Field(
        default=False, description="Send every message body through S3, whatever its size."
    )
    payload_keep: bool = Field(
        default=False,
        description="Keep a large payload's S3 object after its message succeeded (default: "
        "delete it once the message's delete is confirmed).",
    )

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value)
        return value

    @field_validator("queue_url")
    @classmethod
    def _queue_url_is_a_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_url(value)
            if not urlsplit(value).path.strip("/"):
                raise ValueError(
                    f"{value!r} names no queue (e.g. https://sqs.<region>.amazonaws.com/<account>/<queue>)"
                )
        return value

    @field_validator("queue_name")
    @classmethod
    def _queue_name_format(cls, value: str | None) -> str | None:
        if value is not None and not QUEUE_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a queue name (up to 80 letters, digits, '-' and '_', "
                "ending '.fifo' for a FIFO queue)"
            )
        return value

    @field_validator("region")
    @classmethod
    def _region_format(cls, value: str) -> str:
        if not _REGION.fullmatch(value):
            raise ValueError(f"{value!r} is not a region name (e.g. us-east-1)")
        return value

    @field_validator("pollers")
    @classmethod
    def _pollers_follow_concurrency(cls, value: int, info: ValidationInfo) -> int:
        return value or default_pollers(info.data.get("concurrency", 1))

    @field_validator("retry_max_s")
    @classmethod
    def _retry_max_at_least_base(cls, value: float, info: ValidationInfo) -> float:
        base = info.data.get("retry_base_s")
        if base is not None and value < base:
            raise ValueError(f"must be at least retry_base_s ({base:g})")
        return value

    @property
    def use_embedded(self) -> bool:
        """Whether to start the embedded SQS server."""
        if self.embedded is not None:
            return self.embedded
        return self.queue_url is None and self.queue_name is None and self.endpoint_url is None

    @property
    def release_failed_effective(self) -> bool:
        """Whether failures are released at once (a canary's default: the primary will retry)."""
        if self.release_failed is not None:
            return self.release_failed
        return self.deployment_role is DeploymentRole.CANARY

    def worker_config(self) -> WorkerConfig:
        """The worker's configuration (`qworker.worker.Worker` takes it)."""
        consumer = pick(ConsumerConfig, self, release_failed=self.release_failed_effective)
        return pick(WorkerConfig, self, consumer=consumer)

    def observability_config(self) -> ObservabilityConfig:
        """Metrics, traces, health and quarantine (`qworker.observability.build` takes it)."""
        return pick(ObservabilityConfig, self)


def _env_name(field: str) -> str:
    info = QWorkerSettings.model_fields[field]
    alias = info.validation_alias
    if isinstance(alias, AliasChoices):
        return " / ".join(str(choice) for choice in alias.choices)
    return f"{ENV_PREFIX}{field.upper()}"


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    loc = first.get("loc") or ("?",)
    field = _field_of(str(loc[0]))
    message = str(first["msg"]).removeprefix("Value error, ")
    if field in QWorkerSettings.model_fields:
        description = QWorkerSettings.model_fields[field].description or ""
        where = f"{_env_name(field)} (--{field.replace('_', '-')})"
        return f"invalid setting {where}: {message}; expected: {description}"
    return f"invalid settings: {message}"


def _field_of(name: str) -> str:
    """The field an error location names: itself, or the field one of whose aliases it is."""
    for field, info in QWorkerSettings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices) and any(
            str(choice).lower() == name.lower() for choice in alias.choices
        ):
            return field
    return name


def load_settings(**overrides: Any) -> QWorkerSettings:  # noqa: ANN401 (values are validated here)
    """Read the settings: explicit overrides, then the environment, then defaults.

    Args:
        **overrides: Values given explicitly (e.g. CLI flags); `None` means "not given".

    Raises:
        ConfigError: A setting is invalid; the message names it and says what is expected.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return QWorkerSettings(**given)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
