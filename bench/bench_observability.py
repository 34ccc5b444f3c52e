"""Per-message cost of observability: metrics + unsampled tracing on vs off, in one run.

Each repetition processes the same messages on the in-memory transport twice, once bare and once
with the EMF aggregator (plus one emission per run) and the tracing middleware with a sampler that
drops every trace (what most traffic sees in production); the order alternates between repetitions
so drift (CPU frequency, other load) hits both sides alike, and the result is the median of the
per-repetition ratios. Every message carries a `traceparent`, as a traced producer sends it.

Cost is the process's CPU time per message: on the in-memory transport the wall clock mostly
measures the delete batcher's timers, not work. Two handlers are measured, interleaved: the
project's example (`handlers.orders`, a pydantic model) and one that does nothing (the worst case:
nothing but the framework to compare with). Target: less than 15 % added.

Run: `python bench/bench_observability.py [--messages N] [--repetitions R]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # handlers/ lives at the root

from handlers import orders
from qworker.consumer import OutcomeSink
from qworker.dispatch import Middleware
from qworker.emf import EmfStdoutSink, MetricsAggregator
from qworker.observability import MetricsEmitter
from qworker.producer import send_bodies
from qworker.role import Identity
from qworker.testing import FakeSqs, consumer_for
from qworker.tracing import TracingMiddleware

TARGET_RATIO: Final = 1.15
IDENTITY: Final = Identity(service="bench", role="canary", version="bench")


async def nothing(body: dict[str, int]) -> None:
    """A handler that does nothing: what is left is the framework's own cost."""


def order_body(n: int) -> str:
    """A valid body for `handlers.orders`."""
    return json.dumps(
        {
            "order_id": f"o-{n}",
            "customer_id": f"c-{n % 97}",
            "amount_cents": 100 + n,
            "currency": "EUR",
        }
    )


WORKLOADS: Final[dict[str, tuple[Callable[..., Awaitable[None]], Callable[[int], str]]]] = {
    "handlers.orders": (orders.handle, order_body),
    "no-op handler": (nothing, lambda n: json.dumps({"n": n})),
}


VARIANTS: Final = ("bare", "metrics", "metrics+tracing")
"""Measured in every repetition, in a rotating order; ratios are against `bare`."""


def observed_parts(
    variant: str,
) -> tuple[list[Middleware], list[OutcomeSink], MetricsEmitter | None]:
    """The middleware, sinks and emitter of a variant (tracing samples nothing)."""
    if variant == "bare":
        return [], [], None
    aggregator = MetricsAggregator(role=IDENTITY.role, queues=["bench"])
    emitter = MetricsEmitter(
        aggregator, EmfStdoutSink(), namespace="QWorker", identity=IDENTITY, interval_s=10
    )
    middleware: list[Middleware] = []
    if variant == "metrics+tracing":
        # As the worker builds it: the provider samples roots always, and the middleware applies
        # the ratio (here 0: nothing recorded) before asking the SDK for a span.
        provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False)
        tracer = provider.get_tracer("qworker")
        middleware.append(
            TracingMiddleware(tracer, identity=IDENTITY, queue="bench", sample_ratio=0.0)
        )
    return middleware, [aggregator], emitter


async def one_run(workload: str, messages: int, variant: str) -> tuple[float, float]:
    """Process `messages` messages; return (CPU seconds, wall seconds) per message."""
    handler, body = WORKLOADS[workload]
    queue = FakeSqs().create_queue("bench")
    producer = TracerProvider(shutdown_on_exit=False)
    with producer.get_tracer("bench").start_as_current_span("send", kind=SpanKind.PRODUCER):
        await send_bodies(queue, (body(n) for n in range(messages)))
    middleware, sinks, emitter = observed_parts(variant)
    consumer = consumer_for(
        queue,
        handler,
        identity=IDENTITY,
        middleware=middleware,
        sinks=sinks,
        concurrency=16,
        pollers=2,
        wait_time_s=0,
    )
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    await consumer.run_until_empty()
    if emitter is not None:  # one interval's emission, as every few thousand messages in production
        with contextlib.redirect_stdout(io.StringIO()):
            await emitter.emit()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert consumer.statistics().acked == messages
    return cpu / messages, wall / messages


Runs = dict[str, dict[str, list[tuple[float, float]]]]


async def measure(messages: int, repetitions: int) -> Runs:
    """Run every workload and variant `repetitions` times, interleaved, rotating the order."""
    for workload in WORKLOADS:  # warm-up: imports, caches, pydantic's validators
        for variant in VARIANTS:
            await one_run(workload, 200, variant)
    runs: Runs = {w: {v: [] for v in VARIANTS} for w in WORKLOADS}
    for repetition in range(repetitions):
        shift = repetition % len(VARIANTS)
        order = VARIANTS[shift:] + VARIANTS[:shift]
        for workload in WORKLOADS:
            for variant in order:
                runs[workload][variant].append(await one_run(workload, messages, variant))
    return runs


def report(runs: Runs, messages: int, repetitions: int) -> dict[str, float]:
    """Print the table; return each workload's median metrics+tracing ratio."""
    print(f"{messages} messages per run, {repetitions} interleaved repetitions, CPU time:\n")
    print("| handler | variant | us/message | added vs bare (median ratio) | range |")
    print("| --- | --- | ---: | ---: | --- |")
    ratios: dict[str, float] = {}
    for workload, by_variant in runs.items():
        bare = by_variant["bare"]
        for variant, results in by_variant.items():
            cost = statistics.median(r[0] for r in results) * 1e6
            if variant == "bare":
                print(f"| {workload} | bare | {cost:.1f} | | |")
                continue
            per_rep = [o[0] / b[0] for b, o in zip(bare, results, strict=True)]
            ratio = statistics.median(per_rep)
            print(
                f"| {workload} | {variant} | {cost:.1f} | {(ratio - 1) * 100:+.1f} % "
                f"({ratio:.3f}) | {min(per_rep):.3f}-{max(per_rep):.3f} |"
            )
            ratios[workload] = ratio
    print(f"\nTarget: less than {(TARGET_RATIO - 1) * 100:.0f} % added (metrics+tracing).")
    return ratios


def main(argv: list[str] | None = None) -> Any:  # noqa: ANN401 (a script's exit status)
    """Parse the arguments and run the benchmark."""
    parser = argparse.ArgumentParser(description="metrics + unsampled tracing: cost per message")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--repetitions", type=int, default=9)
    args = parser.parse_args(argv)
    runs = asyncio.run(measure(args.messages, args.repetitions))
    ratios = report(runs, args.messages, args.repetitions)
    verdict = "within" if all(r < TARGET_RATIO for r in ratios.values()) else "ABOVE"
    print(f"Result: {verdict} target.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
