"""What tracing at sample ratio 1.0 costs per message, and what a leaner span would cost.

In-memory fake (no network), qworker tuned (8 pollers, concurrency 160), a trivial handler, CPU
time per message of the whole process (the batch span processor's thread included), interleaved
rounds, medians. Variants:

- **untraced**: no middleware.
- **TracingMiddleware, ratio 0.0**: every message takes the unsampled path (the fixed floor).
- **TracingMiddleware, ratio 1.0**: as shipped; a tracer provider sampling every root span into a
  `BatchSpanProcessor` whose exporter drops the spans.
- **prototype: lean span**: *a measurement of a proposed change, not qworker's behaviour*. The
  same span (same name, kind, attributes, link, status) built with one attribute dict at
  `start_span` (the static ones, the message id and receive count, the producer link) and one
  `set_attributes` at the end (outcome, handler), instead of four `set_attribute` calls and an
  `add_link`.
- **prototype: gen-0 threshold 10,000** (untraced and at 1.0): the garbage collector's first
  threshold raised for the run (`gc.set_threshold(10_000, ...)`), as a worker could at start.

`python bench/bench_tracing.py [--messages N] [--rounds R]` prints Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, final

from bench_overhead import filled, handle
from benchlib import table
from opentelemetry import context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, Tracer

from qworker.dispatch import Dispatch, Middleware
from qworker.outcome import Outcome, OutcomeRecord
from qworker.role import Identity
from qworker.testing import FakeQueueTransport, consumer_for
from qworker.tracing import (
    CANCELLED,
    HANDLER,
    MESSAGING_DESTINATION,
    MESSAGING_MESSAGE_ID,
    MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE,
    MESSAGING_SYSTEM,
    OUTCOME,
    ROLE,
    SERVICE_VERSION,
    SQS_RECEIVE_COUNT,
    TracingMiddleware,
    producer_context,
    resource,
)
from qworker.transport import Message

POLLERS: Final = 8
CONCURRENCY: Final = 160
QUEUE: Final = "bench"
_ROOT: Final = context.Context()
_ERRORS: Final = frozenset({Outcome.FAILED, Outcome.REJECTED})


class DropSpans(SpanExporter):
    """An exporter that drops every span."""

    def export(self, spans: Sequence[Any]) -> SpanExportResult:
        """Drop."""
        del spans
        return SpanExportResult.SUCCESS


@final
class LeanTracing:
    """PROTOTYPE of `TracingMiddleware._sampled` with one attribute dict at start."""

    def __init__(self, tracer: Tracer, *, identity: Identity, queue: str) -> None:
        """Trace with `tracer`."""
        self._tracer = tracer
        self._name = f"process {queue}"
        self._static: dict[str, str | int] = {
            MESSAGING_SYSTEM: "aws_sqs",
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_OPERATION_NAME: "process",
            ROLE: identity.role,
            SERVICE_VERSION: identity.version,
            MESSAGING_DESTINATION: queue,
        }

    async def __call__(self, message: Message, call_next: Dispatch) -> OutcomeRecord:
        """Process `message` inside its span."""
        attributes = dict(self._static)
        attributes[MESSAGING_MESSAGE_ID] = message.message_id
        attributes[SQS_RECEIVE_COUNT] = message.receive_count
        producer = producer_context(message)
        span = self._tracer.start_span(
            self._name,
            context=_ROOT,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=None if producer is None else [Link(producer)],
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            record = await call_next(message)
        except asyncio.CancelledError:
            span.set_attribute(CANCELLED, value=True)
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        else:
            span.set_attributes({OUTCOME: record.outcome.value, HANDLER: record.handler})
            if record.outcome in _ERRORS:
                span.set_status(Status(StatusCode.ERROR, record.error))
            return record
        finally:
            context.detach(token)
            span.end()


def provider() -> TracerProvider:
    """Sample every root span into a batch processor that drops them (as a worker, exporting
    to nowhere)."""
    identity = Identity(service="bench", version="bench")
    made = TracerProvider(
        resource=resource(identity), sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False
    )
    made.add_span_processor(BatchSpanProcessor(DropSpans()))
    return made


def contender(middleware: Sequence[Middleware]) -> Callable[[FakeQueueTransport], Awaitable[int]]:
    """Drain with qworker and `middleware`."""

    async def run(queue: FakeQueueTransport) -> int:
        consumer = consumer_for(
            queue, handle, pollers=POLLERS, concurrency=CONCURRENCY, middleware=middleware
        )
        await consumer.run_until_empty()
        return consumer.statistics().acked

    return run


async def cpu_per_message(
    run: Callable[[FakeQueueTransport], Awaitable[int]], n: int, *, gen0: int | None = None
) -> float:
    """Fill, drain, return the process's CPU µs per message (`gen0`: a GC threshold for it)."""
    queue = await filled(n)
    gc.collect()
    threshold = gc.get_threshold()
    if gen0 is not None:
        gc.set_threshold(gen0, threshold[1], threshold[2])
    began = time.process_time()
    try:
        handled = await run(queue)
    finally:
        spent = time.process_time() - began
        gc.set_threshold(*threshold)
    if handled != n:
        raise RuntimeError(f"handled {handled} of {n}")
    return spent / n * 1e6


async def measure(messages: int, rounds: int) -> str:
    """Run the rounds; return Markdown."""
    tracer_provider = provider()
    tracer = tracer_provider.get_tracer("qworker", "bench")
    identity = Identity(service="bench", version="bench")
    variants: dict[str, Callable[[FakeQueueTransport], Awaitable[int]]] = {
        "untraced": contender([]),
        "TracingMiddleware, ratio 0.0": contender(
            [TracingMiddleware(tracer, identity=identity, queue=QUEUE, sample_ratio=0.0)]
        ),
        "TracingMiddleware, ratio 1.0": contender(
            [TracingMiddleware(tracer, identity=identity, queue=QUEUE, sample_ratio=1.0)]
        ),
        "prototype: lean span, ratio 1.0": contender(
            [LeanTracing(tracer, identity=identity, queue=QUEUE)]
        ),
        "untraced, prototype: gen-0 threshold 10,000": contender([]),
        "TracingMiddleware, ratio 1.0, prototype: gen-0 threshold 10,000": contender(
            [TracingMiddleware(tracer, identity=identity, queue=QUEUE, sample_ratio=1.0)]
        ),
    }
    for run in variants.values():  # warm-up
        await cpu_per_message(run, 500)
    cpu: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            gen0 = 10_000 if "threshold" in name else None
            cpu[name].append(await cpu_per_message(variants[name], messages, gen0=gen0))
            print(f"# round {round_index + 1}: {name:<64} {cpu[name][-1]:6.1f} µs/msg",
                  file=sys.stderr, flush=True)  # fmt: skip
    tracer_provider.shutdown()
    base = statistics.median(cpu["untraced"])
    rows = [
        [
            name,
            f"{statistics.median(values):.1f}",
            " / ".join(f"{v:.1f}" for v in values),
            f"{statistics.median(values) - base:+.1f}",
        ]
        for name, values in cpu.items()
    ]
    return (
        f"{messages:,} messages per run, {rounds} interleaved rounds, in-memory fake, qworker "
        f"with {POLLERS} pollers and concurrency {CONCURRENCY}; CPU time of the whole process.\n\n"
        + table(["variant", "median CPU µs/msg", "rounds", "vs untraced (µs/msg)"], rows)
    )


def main() -> int:
    """Parse, run, print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(asyncio.run(measure(args.messages, args.rounds)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
