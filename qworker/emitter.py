"""The metrics emitter: every interval, the aggregator's numbers as EMF documents.

`MetricsEmitter` turns each interval of the `MetricsAggregator` (`qworker.emf`) into one EMF
document per queue for its `DocumentSink` (stdout in a container), tells the local summary line,
and hands the interval to a `CloudWatchPublisher` when one is set. `qworker.observability` wires
it (and re-exports these names).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, final

from qworker.cloudwatch import CloudWatchPublisher
from qworker.concurrency import first
from qworker.emf import MetricsAggregator, Snapshot, build_document
from qworker.role import Identity

__all__ = ["DocumentSink", "MetricsEmitter", "Sleep", "pause"]

log = logging.getLogger("qworker.observability")  # the logger these lines always had

Sleep = Callable[[float], Awaitable[None]]


class DocumentSink(Protocol):
    """Writes EMF documents (`EmfStdoutSink` in production)."""

    async def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        """Write one interval's documents."""
        ...


@final
class MetricsEmitter:
    """Turns the aggregator's intervals into EMF documents (and CloudWatch data) periodically."""

    def __init__(
        self,
        aggregator: MetricsAggregator,
        sink: DocumentSink,
        *,
        namespace: str,
        identity: Identity,
        interval_s: float,
        publisher: CloudWatchPublisher | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """Emit `aggregator`'s numbers to `sink` every `interval_s`.

        Args:
            aggregator: The outcome sink that counts.
            sink: Writes the documents.
            namespace: The CloudWatch namespace.
            identity: Service (a dimension), version and task id (properties).
            interval_s: Seconds between emissions.
            publisher: Also sends each interval with PutMetricData.
            sleep: Injectable sleep.
        """
        self.aggregator = aggregator
        self.sink = sink
        self.namespace = namespace
        self.identity = identity
        self.interval_s = interval_s
        self.publisher = publisher
        self.queues: Callable[[], Iterable[str]] = tuple
        self.on_snapshot: Callable[[Snapshot], None] | None = None
        """Also told every interval's numbers (the local summary line)."""
        self._sleep = sleep
        self._properties: dict[str, object] = {"Version": identity.version}
        if identity.task_id:
            self._properties["TaskId"] = identity.task_id
        self.emitted = 0
        self._changed = asyncio.Event()

    async def emit(self) -> Snapshot:
        """Write the current interval now (the periodic task and the final flush call this)."""
        for queue in self.queues():
            self.aggregator.track(queue)
        snapshot = self.aggregator.snapshot()
        if self.on_snapshot is not None:
            self.on_snapshot(snapshot)
        documents = [
            build_document(
                aggregate,
                namespace=self.namespace,
                service=self.identity.service,
                timestamp_ms=snapshot.timestamp_ms,
                properties=self._properties,
            )
            for aggregate in snapshot.aggregates
        ]
        try:
            await self.sink.write(documents)
        except OSError as exc:  # a closed stdout must not take the worker down
            log.warning(
                "writing metrics failed",
                extra={"action": "metrics_write_failed", "error": str(exc)},
            )
        if self.publisher is not None and snapshot.aggregates:
            await self.publisher.publish(snapshot)
        self.emitted += 1
        self._changed.set()
        return snapshot

    async def run(self, stop: asyncio.Event) -> None:
        """Emit every `interval_s` until `stop` is set (the final flush is the caller's)."""
        while await pause(stop, self._sleep(self.interval_s)):
            await self.emit()

    async def wait_emitted(self, count: int) -> None:
        """Wait until at least `count` intervals were emitted."""
        while self.emitted < count:
            self._changed.clear()
            await self._changed.wait()


async def pause(stop: asyncio.Event, sleep: Awaitable[None]) -> bool:
    """Sleep unless `stop` comes first; return whether to go on (nothing is left running)."""
    await first(stop.wait(), sleep)
    return not stop.is_set()
