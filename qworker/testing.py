"""An in-memory SQS for fast tests of the framework and of users' handlers.

`FakeSqs` holds queues; `FakeQueueTransport` implements `QueueTransport` for one of them and honours
the SQS behaviours qworker relies on: visibility timeouts and redelivery, a new receipt handle per
delivery (a stale one deletes nothing, as on SQS), at most 10 messages per receive,
`ApproximateReceiveCount`, redrive to a dead-letter queue after `maxReceiveCount` receives, and FIFO
group order (no message of a group is handed out while another of that group is in flight).

Time comes from an injectable clock, so tests move it with `ManualClock.advance()` instead of
sleeping.

```python
sqs = FakeSqs()
orders = sqs.create_queue("orders", dead_letter="orders-dlq", max_receive_count=3)
await orders.send('{"order_id": "o-1"}')
```

`Drainer` runs a handler function, or every handler of a `QWorker` app or `Router`, against the
fake until the queues are empty and returns what happened to each message (`Drained`). Called
plainly it runs its own event loop, so plain (sync) pytest tests need no asyncio plugin; inside a
running loop use `await drainer.run(...)`. The pytest plugin (`qworker.pytest_plugin`) hands these
out as the `fake_sqs`, `sqs_clock`, `drain` and `make_consumer` fixtures.

The fake itself lives in `qworker.fake_sqs`; its names are re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, final

from qworker.app import QWorker, Router
from qworker.config import ConsumerConfig
from qworker.consumer import Consumer, ConsumerStatistics, OutcomeSink
from qworker.dispatch import Middleware
from qworker.envelopes import EnvelopeMode
from qworker.fake_sqs import FakeQueueTransport, FakeSqs, ManualClock, StoredMessage
from qworker.handler import HandlerFunc, HandlerSpec
from qworker.middleware import Middleware as HandlerMiddleware
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
from qworker.role import Identity
from qworker.transport import QueueTransport
from qworker.wiring import build_consumer

__all__ = [
    "Drained",
    "Drainer",
    "FakeQueueTransport",
    "FakeSqs",
    "ManualClock",
    "StoredMessage",
    "consumer_for",
]


_CONFIG_OPTIONS: Final = frozenset(
    {"concurrency", "pollers", "wait_time_s", "shutdown_grace_s", "max_hold_s"}
)
"""`consumer_for` keywords that are `ConsumerConfig` fields."""


def consumer_for(
    transport: QueueTransport,
    handler: HandlerFunc | HandlerSpec,
    *,
    dead_letter: QueueTransport | None = None,
    identity: Identity | None = None,
    visibility_timeout_s: int = 30,
    request_visibility: bool = False,
    retry_policy: RetryPolicy | None = None,
    release_failed: bool = False,
    handler_timeout_s: float | None = None,
    fifo: bool | None = None,
    max_receive_count: int | None = None,
    middleware: Sequence[Middleware] = (),
    sinks: Sequence[OutcomeSink] = (),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    envelope: EnvelopeMode = "auto",
    handler_middleware: Sequence[HandlerMiddleware] = (),
    **options: Any,  # noqa: ANN401 (ConsumerConfig fields, typed there)
) -> Consumer:
    """Build a consumer of `transport` running `handler`, for tests.

    It is wired as the worker wires one (`qworker.wiring.build_consumer`), with test defaults:
    no retry backoff, failures not released, no canary hand-back.

    ```python
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    await orders.send('{"order_id": "o-1"}')
    consumer = consumer_for(orders, handle)
    await consumer.run_until_empty()
    assert consumer.statistics().acked == 1
    ```

    Args:
        transport: The queue (a `FakeQueueTransport` or a real one).
        handler: The handler function, or a registered handler (`app.handlers[...]`), whose own
            timeout and `max_in_flight` then apply (an explicit `concurrency` wins).
        dead_letter: Where rejected messages go.
        identity: The worker's identity (default: a primary, version `test`).
        visibility_timeout_s: The queue's visibility timeout.
        request_visibility: Ask for `visibility_timeout_s` on each receive.
        retry_policy: Backoff of failed messages (default: none, so retries come back at once).
        release_failed: Release failed messages at once.
        handler_timeout_s: Fail handlers that run longer.
        fifo: Run each message group in order (default: a `.fifo` queue name).
        max_receive_count: The queue's redrive budget (FIFO heads are retried in place up to it).
        middleware: Wraps the handler call.
        sinks: Receive outcomes.
        clock: Monotonic seconds (a `ManualClock` with a `FakeSqs` on the same clock).
        sleep: Injectable sleep (receive backoff, heartbeat).
        envelope: The envelope mode of handlers that set none (the app's, in a worker).
        handler_middleware: Public middleware around each handler call (an app's
            `middlewares`; `Drainer(sqs)(app)` passes them).
        **options: `concurrency`, `pollers`, `wait_time_s`, `shutdown_grace_s`, `max_hold_s`.

    Raises:
        TypeError: An option that is none of these.
    """
    unknown = set(options) - _CONFIG_OPTIONS
    if unknown:
        raise TypeError(f"consumer_for() got unexpected keyword arguments {sorted(unknown)}")
    spec = (
        handler
        if isinstance(handler, HandlerSpec)
        else HandlerSpec.from_function(handler, queue=transport.queue_name)
    )
    if spec.max_in_flight is not None and "concurrency" in options:
        spec = replace(spec, max_in_flight=None)  # the explicit concurrency wins
    config = ConsumerConfig(
        visibility_timeout_s=visibility_timeout_s if request_visibility else None,
        handler_timeout_s=handler_timeout_s,
        release_failed=release_failed,
        canary_max_hops=0,
        **options,
    )
    return build_consumer(
        transport,
        spec,
        identity=identity or Identity(service="test", version="test"),
        config=config,
        queue_visibility_timeout_s=visibility_timeout_s,
        fifo=transport.queue_name.endswith(".fifo") if fifo is None else fifo,
        max_receive_count=max_receive_count,
        dead_letter=dead_letter,
        retry_policy=retry_policy or RetryPolicy(base_s=0, max_s=0),
        middleware=middleware,
        sinks=sinks,
        clock=clock,
        sleep=sleep,
        envelope=envelope,
        handler_middleware=handler_middleware,
    )


@final
@dataclass(frozen=True, slots=True)
class Drained:
    """What a drain did: every outcome, in the order they were recorded.

    Attributes:
        records: One `OutcomeRecord` per delivery (a message retried twice then done has three).
        statistics: Each consumer's counters, by queue name.
    """

    records: tuple[OutcomeRecord, ...]
    statistics: Mapping[str, ConsumerStatistics]

    def count(self, outcome: Outcome | str) -> int:
        """How many deliveries ended with `outcome` (`Outcome.SUCCEEDED` or `"succeeded"`)."""
        wanted = Outcome(outcome)
        return sum(1 for r in self.records if r.outcome is wanted)

    @property
    def outcomes(self) -> list[Outcome]:
        """Each delivery's outcome, in order."""
        return [r.outcome for r in self.records]

    @property
    def errors(self) -> list[str]:
        """The error (or `Retry`/`Reject` reason) of each delivery that has one, in order."""
        return [r.error for r in self.records if r.error is not None]

    @property
    def succeeded(self) -> int:
        """Deliveries whose handler returned (their messages are deleted)."""
        return self.count(Outcome.SUCCEEDED)

    @property
    def failed(self) -> int:
        """Deliveries whose handler raised or timed out."""
        return self.count(Outcome.FAILED)

    @property
    def retried(self) -> int:
        """Deliveries whose handler raised `Retry`."""
        return self.count(Outcome.RETRIED)

    @property
    def rejected(self) -> int:
        """Deliveries rejected: an undecodable body, or `Reject` (sent to the dead-letter queue)."""
        return self.count(Outcome.REJECTED)

    @property
    def released(self) -> int:
        """Deliveries released unstarted (e.g. the rest of a FIFO group after a failure)."""
        return self.count(Outcome.RELEASED)


@final
class _Collect:
    """An outcome sink that keeps every record."""

    def __init__(self) -> None:
        self.records: list[OutcomeRecord] = []

    def record(self, record: OutcomeRecord) -> None:
        self.records.append(record)


@final
class Drainer:
    """Runs handlers against a `FakeSqs` until their queues are empty (the `drain` fixture).

    ```python
    sqs = FakeSqs(clock=ManualClock())
    orders = sqs.create_queue("orders", dead_letter="orders-dlq")
    orders.put('{"order_id": "o-1"}')
    drained = Drainer(sqs)(handle, "orders")  # or Drainer(sqs)(app)
    assert drained.succeeded == 1
    ```

    A failed message comes back at once (no backoff) until the queue's `maxReceiveCount` moves it
    to the dead-letter queue; a `Retry` hides it for its delay on the fake's clock, so the drain
    ends and `sqs.advance(delay)` plus another drain delivers it again.
    """

    def __init__(self, sqs: FakeSqs) -> None:
        """Drain queues of `sqs`."""
        self.sqs = sqs

    def __repr__(self) -> str:
        """Show the fake it drains."""
        return f"Drainer({self.sqs!r})"

    def __call__(
        self,
        target: HandlerFunc | Router,
        queue: FakeQueueTransport | str | None = None,
        **options: Any,  # noqa: ANN401 (passed on to consumer_for, which types them)
    ) -> Drained:
        """Drain from plain (sync) code, in an event loop of its own; see `run()`.

        Raises:
            RuntimeError: Called inside a running event loop (an async test): use `await run()`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(target, queue, **options))
        raise RuntimeError(
            "drain(...) runs its own event loop; in an async test use `await drain.run(...)`"
        )

    async def run(
        self,
        target: HandlerFunc | Router,
        queue: FakeQueueTransport | str | None = None,
        **options: Any,  # noqa: ANN401 (passed on to consumer_for, which types them)
    ) -> Drained:
        """Run `target` until its queues are empty and nothing is held; return every outcome.

        Args:
            target: A handler function, or a `QWorker` app / `Router` (every handler runs on its
                own queue, concurrently, with its own timeout and `max_in_flight`). An app's
                lifespan runs around the drain, and its middleware and envelope mode apply.
            queue: The queue of a function, or of an app's handler registered without a queue
                (default: the app's name): a fake queue or a name. A queue that does not exist
                yet is created with a dead-letter queue `<name>-dlq` (`maxReceiveCount` 3), as
                the embedded server does.
            **options: `consumer_for` keywords (`handler_timeout_s`, `identity`, `concurrency`,
                `retry_policy`, `release_failed`, ...).

        Raises:
            ValueError: A function was given without a queue.
        """
        collect = _Collect()
        options.setdefault("envelope", getattr(target, "envelope", "auto"))
        if isinstance(target, QWorker):
            options.setdefault("handler_middleware", target.middlewares)
        sinks = [*options.pop("sinks", ()), collect]
        dead_letter: FakeQueueTransport | None = options.pop("dead_letter", None)
        consumers = [
            consumer_for(
                transport,
                spec,
                dead_letter=dead_letter or self.sqs.dead_letter_of(transport),
                clock=self.sqs.clock,
                sinks=sinks,
                **self._fifo_options(transport),
                **options,
            )
            for transport, spec in self._targets(target, queue)
        ]
        running = target.running() if isinstance(target, QWorker) else contextlib.nullcontext()
        async with running, asyncio.TaskGroup() as group:  # the app's lifespan around the drain
            for consumer in consumers:
                group.create_task(consumer.run_until_empty())
        return Drained(
            records=tuple(collect.records),
            statistics={c.transport.queue_name: c.statistics() for c in consumers},
        )

    def _targets(
        self, target: HandlerFunc | Router, queue: FakeQueueTransport | str | None
    ) -> list[tuple[FakeQueueTransport, HandlerSpec]]:
        if isinstance(target, Router):
            default = queue if queue is not None else getattr(target, "name", None)
            return [
                (self._queue(spec.queue if spec.queue is not None else default, spec.name), spec)
                for spec in target.handlers.values()
            ]
        transport = self._queue(queue, getattr(target, "__qualname__", repr(target)))
        return [(transport, HandlerSpec.from_function(target, queue=transport.queue_name))]

    def _queue(self, queue: FakeQueueTransport | str | None, handler: str) -> FakeQueueTransport:
        if isinstance(queue, FakeQueueTransport):
            return queue
        if queue is None:
            raise ValueError(f"which queue does {handler} consume? pass queue=")
        return self.sqs.queue_or_create(queue)

    @staticmethod
    def _fifo_options(transport: FakeQueueTransport) -> dict[str, Any]:
        if not transport.fifo or transport.redrive is None:
            return {}
        # A FIFO head that keeps failing is retried in place, then dead-lettered at the budget.
        return {"max_receive_count": transport.redrive.max_receive_count}
