"""The one place a consumer is wired: handler, dispatcher, settler, consumer, from plain config.

`build_consumer()` is shared by the `Worker` (one per resolved queue), the test kit
(`qworker.testing.consumer_for`, the `make_consumer` and `drain` fixtures) and so the drill's
workers: the rules below hold alike everywhere.

- The visibility asked at receive is the configured one, else the queue's own (not asked).
- A handler's `max_in_flight` wins over the configured concurrency, its timeout over the
  configured handler timeout.
- Failures are released at once when configured, else on a canary.
- A canary on a standard queue hands a non-success back as a fresh copy (up to
  `canary_max_hops` times); never on FIFO.
- The primary keeps the receive budget across hand-back copies (`max_receive_count`, from the
  queue's redrive policy); a FIFO head that keeps failing is retried in place up to it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence

from qworker.config import ConsumerConfig
from qworker.consumer import Consumer
from qworker.dispatch import Dispatcher, Middleware
from qworker.envelopes import EnvelopeMode
from qworker.exceptions import ConfigError
from qworker.handler import HandlerSpec
from qworker.message import Message
from qworker.middleware import Middleware as HandlerMiddleware
from qworker.outcome import RetryPolicy
from qworker.role import Identity
from qworker.settle import Settler
from qworker.statistics import OutcomeSink
from qworker.transport import QueueTransport

__all__ = ["build_consumer"]


def build_consumer(
    transport: QueueTransport,
    spec: HandlerSpec,
    *,
    identity: Identity,
    config: ConsumerConfig,
    queue_visibility_timeout_s: int,
    fifo: bool,
    max_receive_count: int | None = None,
    dead_letter: QueueTransport | None = None,
    retry_policy: RetryPolicy | None = None,
    middleware: Sequence[Middleware] = (),
    sinks: Sequence[OutcomeSink] = (),
    body: Callable[[Message], Awaitable[Message]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    envelope: EnvelopeMode = "auto",
    handler_middleware: Sequence[HandlerMiddleware] = (),
) -> Consumer:
    """Build the consumer of one queue running one handler.

    Args:
        transport: The queue.
        spec: The handler.
        identity: The worker's identity (a canary hands back; role and version on records).
        config: Concurrency, polling, timeouts, retries, hand-back.
        queue_visibility_timeout_s: The queue's own visibility timeout.
        fifo: The queue is FIFO.
        max_receive_count: The queue's redrive budget (None: no redrive policy).
        dead_letter: Where rejected messages go (None: left for the redrive policy).
        retry_policy: Backoff of failed messages (default: `config`'s base and ceiling).
        middleware: Wraps every handler call, outermost first.
        sinks: Receive every outcome record.
        body: Turns a received message into the one the handler decodes (large payloads).
        clock: Monotonic seconds.
        sleep: Injectable sleep (backoff, heartbeat).
        envelope: The envelope mode of handlers that set none (the app's).
        handler_middleware: The app's public middleware, around each handler call.

    Raises:
        ConfigError: A batch handler on a FIFO queue, or with more `batch_size` than slots.
    """
    if spec.batch is not None:
        _check_batch(spec, spec.batch.size, transport.queue_name, fifo=fifo, config=config)
    canary = identity.is_canary
    release_failed = canary if config.release_failed is None else config.release_failed
    dispatcher = Dispatcher(
        spec,
        queue=transport.queue_name,
        identity=identity,
        timeout_s=config.handler_timeout_s,
        middleware=middleware,
        body=body,
        envelope=envelope,
        handler_middleware=handler_middleware,
    )
    settler = Settler(
        transport,
        dead_letter=dead_letter,
        retry_policy=retry_policy
        or RetryPolicy(base_s=config.retry_base_s, max_s=config.retry_max_s),
        release_failed=release_failed,
        # A canary's non-success goes back to the primary as a fresh copy (not on FIFO).
        max_hops=config.canary_max_hops if canary and not fifo else 0,
        # The primary dead-letters a copy at the end of the budget its original had left.
        max_receive_count=None if canary else max_receive_count,
    )
    return Consumer(
        transport,
        dispatcher,
        visibility_timeout_s=config.visibility_timeout_s or queue_visibility_timeout_s,
        request_visibility=config.visibility_timeout_s is not None,
        concurrency=spec.max_in_flight or config.concurrency,
        pollers=config.pollers,
        wait_time_s=config.wait_time_s,
        fifo=fifo,
        shutdown_grace_s=config.shutdown_grace_s,
        max_hold_s=config.max_hold_s,
        max_receive_count=max_receive_count,
        settler=settler,
        sinks=sinks,
        clock=clock,
        sleep=sleep,
    )


def _check_batch(
    spec: HandlerSpec, size: int, queue: str, *, fifo: bool, config: ConsumerConfig
) -> None:
    """A batch must be able to fill: a standard queue, and at least `size` handler slots."""
    if fifo:
        raise ConfigError(
            f"handler {spec.name}: a batch handler needs a standard queue; {queue} is FIFO "
            "(its groups run one message at a time)"
        )
    slots = spec.max_in_flight or config.concurrency
    if slots < size:
        where = "its max_in_flight" if spec.max_in_flight else "QWORKER_CONCURRENCY (--concurrency)"
        raise ConfigError(
            f"handler {spec.name}: batch_size {size} is more than {where}, {slots}: a batch "
            "could never fill; raise it, or lower batch_size"
        )
