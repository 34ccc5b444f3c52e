"""Observability wiring: metrics, traces, health and quarantine around one worker.

`build(config, identity)` is an async context manager the CLI enters around the worker. It
yields an `Observability` whose `middleware` and `sinks` go to `Worker(...)`, and it owns the
periodic tasks in one task group: the metrics emitter (an EMF document per queue every
`metrics_interval_s`, and PutMetricData to a local endpoint when asked) and the health file writer.
On exit it stops them, writes the last partial interval and the last health report, and flushes
the tracer.

It takes a plain `ObservabilityConfig` (`qworker.config`; the CLI builds it from the settings,
which also pass for one).

```python
async with observability.build(config.observability_config(), identity) as obs:
    worker = Worker(app, config.worker_config(), identity=identity,
                    middleware=obs.middleware, sinks=obs.sinks)
    with handle_signals(obs.stop):
        await obs.run(worker)
```
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, final

from opentelemetry import trace

from qworker import health, summary, tracing
from qworker.cloudwatch import CloudWatchPublisher, open_cloudwatch_client
from qworker.config import ObservabilityConfig, SupportsObservabilityConfig
from qworker.dispatch import Middleware
from qworker.emf import EmfStdoutSink, MetricsAggregator
from qworker.emitter import DocumentSink, MetricsEmitter, Sleep, pause
from qworker.quarantine import CanaryQuarantine
from qworker.role import Identity
from qworker.statistics import OutcomeSink

if TYPE_CHECKING:
    from qworker.worker import Worker

__all__ = [
    "DocumentSink",
    "MetricsEmitter",
    "Observability",
    "PublishChoice",
    "build",
    "publish_cloudwatch",
]

log = logging.getLogger(__name__)


class PublishChoice(summary.Locality, Protocol):
    """What decides local publishing (`ObservabilityConfig`, or the settings)."""

    @property
    def metrics_publish_cloudwatch(self) -> bool | None:
        """As asked (None: on a local endpoint)."""
        ...


def publish_cloudwatch(config: PublishChoice, endpoint_url: str | None = None) -> bool:
    """Whether to also send metrics with PutMetricData: as asked, else on a local endpoint."""
    if config.metrics_publish_cloudwatch is not None:
        return config.metrics_publish_cloudwatch
    return summary.is_local(config, endpoint_url)


@final
class Observability:
    """What `build()` yields: the worker's middleware and sinks, and the parts behind them."""

    def __init__(
        self,
        *,
        middleware: list[Middleware],
        sinks: list[OutcomeSink],
        emitter: MetricsEmitter,
        monitor: health.HealthMonitor,
        quarantine: CanaryQuarantine | None,
    ) -> None:
        """Bundle the parts; use `build()`."""
        self.middleware = middleware
        self.sinks = sinks
        self.emitter = emitter
        self.monitor = monitor
        self.quarantine = quarantine
        self._worker: Worker | None = None
        self._stop_requested = asyncio.Event()

    def watch(self, worker: Worker) -> None:
        """Report on `worker` (queues in metrics, consumers in health); a quarantine stops it."""
        self._worker = worker
        self.emitter.queues = lambda: [c.transport.queue_name for c in worker.consumers]
        self.monitor.watch(
            lambda: worker.consumers, ready=worker.ready.is_set, stopping=lambda: worker.stopping
        )
        if self.quarantine is not None:
            self.quarantine.on_trip(worker.stop)

    def stop(self) -> None:
        """Stop the worker and end `run()` (SIGTERM); synchronous and idempotent."""
        self._stop_requested.set()
        if self._worker is not None:
            self._worker.stop()

    async def run(self, worker: Worker) -> None:
        """Run `worker`; if it quarantined itself, stay up, unhealthy, until `stop()`.

        A quarantined canary keeps reporting (health, the `Quarantined` metric) instead of exiting,
        so ECS sees a failing health check and the judge sees the metric, rather than a task that
        exits cleanly and is restarted into the same failure.
        """
        self.watch(worker)
        await worker.run()
        if self.quarantine is not None and self.quarantine.quarantined:
            log.error(
                "canary quarantined: staying up and unhealthy until stopped (SIGTERM)",
                extra={"action": "quarantine_hold", "role": worker.identity.role},
            )
            await self._stop_requested.wait()


async def _write_health(
    monitor: health.HealthMonitor,
    path: Path,
    *,
    interval_s: float,
    stop: asyncio.Event,
    sleep: Sleep,
) -> None:
    while True:
        try:
            health.write_report(path, monitor.check())
        except OSError as exc:
            log.warning(
                "writing the health file failed",
                extra={"action": "health_write_failed", "path": str(path), "error": str(exc)},
            )
        if not await pause(stop, sleep(interval_s)):
            return


def _write_health_now(monitor: health.HealthMonitor, path: Path) -> None:
    """Write the report from the loop-lag thread while the loop (and its writer) is blocked."""
    with contextlib.suppress(OSError):
        health.write_report(path, monitor.check())


def _quarantine(config: ObservabilityConfig, identity: Identity) -> CanaryQuarantine | None:
    if not identity.is_canary or config.canary_quarantine_failure_rate is None:
        return None
    return CanaryQuarantine(
        failure_rate=config.canary_quarantine_failure_rate,
        min_messages=config.canary_quarantine_min_messages,
        window_s=config.canary_quarantine_window_s,
    )


@contextlib.asynccontextmanager
async def build(
    config: ObservabilityConfig | SupportsObservabilityConfig,
    identity: Identity,
    *,
    endpoint_url: str | None = None,
    local: bool = False,
    sink: DocumentSink | None = None,
    install_tracer: bool = True,
    sleep: Sleep = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Observability]:
    """Set up metrics, tracing, health and quarantine for one worker; run their periodic tasks.

    Args:
        config: Metrics, traces, health, quarantine (or settings, turned into one).
        identity: Role, version, service, task id.
        endpoint_url: The local endpoint in use (the embedded server's), for PutMetricData.
        local: The endpoint is local: dummy credentials.
        sink: Where EMF documents go (default: stdout through aws-embedded-metrics, unless
            `QWORKER_EMF` or a local run says otherwise: `qworker.summary`).
        install_tracer: Make the tracer provider the global one (so handlers' spans nest), unless
            one is installed already.
        sleep: Injectable sleep of the periodic tasks.
        clock: Monotonic seconds (health, quarantine).

    Raises:
        ConfigError: A setting cannot work (e.g. `otlp` without its package).
    """
    if not isinstance(config, ObservabilityConfig):
        config = config.observability_config()
    provider = tracing.tracer_provider(
        exporter=config.otel_exporter,
        sample_ratio=config.otel_sample_ratio,
        identity=identity,
        consumer=True,
    )
    quarantine = _quarantine(config, identity)
    is_quarantined = (lambda: quarantine.quarantined) if quarantine is not None else None
    aggregator = MetricsAggregator(
        role=identity.role,
        quarantined=is_quarantined,
        message_types=config.metrics_message_type,
    )
    stale_after_s = max(config.health_interval_s * health.STALE_INTERVALS, 15.0)
    monitor = health.HealthMonitor(
        wait_time_s=config.wait_time_s,
        stall_margin_s=config.health_stall_margin_s,
        stale_after_s=stale_after_s,
        quarantined=is_quarantined,
        clock=clock,
    )
    middleware: list[Middleware] = []
    if provider is not None:
        if install_tracer and not isinstance(trace.get_tracer_provider(), type(provider)):
            trace.set_tracer_provider(provider)
        tracer = provider.get_tracer("qworker", identity.version)
        middleware.append(
            tracing.TracingMiddleware(
                tracer,
                identity=identity,
                queue=_one_queue(config),
                sample_ratio=config.otel_sample_ratio,
            )
        )
    sinks: list[OutcomeSink] = [aggregator]
    if quarantine is not None:
        sinks.append(quarantine)
    path = Path(config.health_file or health.default_health_file(identity.role))
    stop = asyncio.Event()
    async with contextlib.AsyncExitStack() as stack:
        publisher = None
        if publish_cloudwatch(config, endpoint_url):
            client = await stack.enter_async_context(
                open_cloudwatch_client(
                    region=config.region,
                    endpoint_url=endpoint_url or config.endpoint_url,
                    local=local,
                )
            )
            publisher = CloudWatchPublisher(
                client, namespace=config.metrics_namespace, service=identity.service
            )
        emitter = MetricsEmitter(
            aggregator,
            sink
            or (
                EmfStdoutSink()
                if summary.emf_to_stdout(config, endpoint_url)
                else summary.DiscardDocuments()
            ),
            namespace=config.metrics_namespace,
            identity=identity,
            interval_s=config.metrics_interval_s,
            publisher=publisher,
            sleep=sleep,
        )
        if config.log_format == "text" and summary.is_local(config, endpoint_url):
            emitter.on_snapshot = summary.log_summary
        if config.health_port is not None:
            port = await stack.enter_async_context(
                health.serve_http(monitor, port=config.health_port)
            )
            log.info("health endpoint up", extra={"action": "health_http", "port": port})
        observability = Observability(
            middleware=middleware,
            sinks=sinks,
            emitter=emitter,
            monitor=monitor,
            quarantine=quarantine,
        )
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(emitter.run(stop), name="emit metrics")
                group.create_task(
                    _write_health(
                        monitor, path, interval_s=config.health_interval_s, stop=stop, sleep=sleep
                    ),
                    name="write health",
                )
                lag = health.LoopLagWatch(
                    monitor,
                    threshold_s=config.health_loop_lag_s,
                    on_blocked=lambda: _write_health_now(monitor, path),
                )
                group.create_task(lag.run(stop), name="watch loop lag")
                try:
                    yield observability
                finally:
                    stop.set()
        finally:
            await _finish(emitter, monitor, path, provider)


async def _finish(
    emitter: MetricsEmitter,
    monitor: health.HealthMonitor,
    path: Path,
    provider: Any,  # noqa: ANN401 (a TracerProvider or None)
) -> None:
    """Flush the last partial interval, write the last health report, flush the spans."""
    await emitter.emit()
    with contextlib.suppress(OSError):
        health.write_report(path, monitor.check())
    if provider is not None:
        await asyncio.to_thread(provider.shutdown)


def _one_queue(config: ObservabilityConfig) -> str | None:
    """The queue's name when the configuration names exactly one (so spans are named at start)."""
    if config.queue_name:
        return config.queue_name
    if config.queue_url:
        return config.queue_url.rstrip("/").rsplit("/", 1)[-1]
    return None
