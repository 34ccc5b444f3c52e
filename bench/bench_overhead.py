"""Framework overhead on the in-memory transport, on one core.

The process is pinned to one CPU. Each round fills a fresh `FakeSqs` queue and drains it:

- **fake transport alone**: one loop of `receive(10)` + `await handle(body)` per message +
  `delete_batch`, straight on `FakeQueueTransport`: what the fake itself costs;
- **qworker**: `consumer_for(queue, handle, pollers=P, concurrency=C).run_until_empty()`;
- **qworker + metrics + tracing** (when `qworker.observability` exists): the same with the EMF
  `MetricsAggregator` as a sink and `TracingMiddleware` (every span sampled, a batch span processor
  and an exporter that drops the spans) as middleware.

Rounds are interleaved; the medians are reported, and qworker's own cost per message is
`1/rate(qworker) - 1/rate(fake alone)`.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final

from benchlib import Section, Server, bodies, fmt, main, median, pin_to_one_core, table

from qworker.consumer import OutcomeSink
from qworker.dispatch import Middleware
from qworker.testing import FakeQueueTransport, FakeSqs, consumer_for
from qworker.transport import SendEntry

MESSAGES: Final = int(os.environ.get("QWORKER_BENCH_FAKE_MESSAGES", "10000"))
ROUNDS: Final = int(os.environ.get("QWORKER_BENCH_ROUNDS", "3"))
POLLERS: Final = 8
CONCURRENCY: Final = 160
"""As in the LocalStack throughput benchmark."""


async def handle(body: str) -> None:
    """The trivial handler."""
    del body


async def filled(messages: int) -> FakeQueueTransport:
    """A fresh in-memory queue holding `messages` small JSON bodies."""
    queue = FakeSqs().create_queue("bench", dead_letter="bench-dlq")
    all_bodies = bodies(messages)
    for start in range(0, messages, 10):
        await queue.send_batch([SendEntry(b) for b in all_bodies[start : start + 10]])
    queue.calls.clear()
    return queue


async def fake_alone(queue: FakeQueueTransport) -> int:
    """Receive + handle + delete, one loop, no framework."""
    handled = 0
    while True:
        found = await queue.receive(10, wait_time_s=0)
        if not found:
            return handled
        for message in found:
            await handle(message.body)
        await queue.delete_batch([m.receipt_handle for m in found])
        handled += len(found)


def qworker_run(
    middleware: Sequence[Middleware] = (), sinks: Sequence[OutcomeSink] = ()
) -> Callable[[FakeQueueTransport], Awaitable[int]]:
    """A contender that drains the queue with qworker's consumer."""

    async def run(queue: FakeQueueTransport) -> int:
        consumer = consumer_for(
            queue,
            handle,
            pollers=POLLERS,
            concurrency=CONCURRENCY,
            middleware=middleware,
            sinks=sinks,
        )
        await consumer.run_until_empty()
        return consumer.statistics().acked

    return run


def observability() -> tuple[list[Middleware], list[OutcomeSink], Callable[[], None]] | None:
    """Metrics and tracing as a worker wires them, or None if the module is not there yet."""
    if importlib.util.find_spec("qworker.observability") is None:
        return None
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )

    from qworker.emf import MetricsAggregator  # noqa: PLC0415
    from qworker.role import Identity  # noqa: PLC0415
    from qworker.tracing import TracingMiddleware, resource  # noqa: PLC0415

    class DropSpans(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            del spans
            return SpanExportResult.SUCCESS

    identity = Identity(service="bench", version="bench")
    provider = TracerProvider(resource=resource(identity), shutdown_on_exit=False)
    provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    tracer = provider.get_tracer("qworker", identity.version)
    middleware: list[Middleware] = [TracingMiddleware(tracer, identity=identity, queue="bench")]
    sinks: list[OutcomeSink] = [MetricsAggregator(role=identity.role)]
    return middleware, sinks, provider.shutdown


async def timed(run: Callable[[FakeQueueTransport], Awaitable[int]]) -> tuple[float, float]:
    """Fill a queue, drain it with `run`; return (msg/s, CPU µs per message)."""
    queue = await filled(MESSAGES)
    gc.collect()
    cpu, began = time.process_time(), time.perf_counter()
    handled = await run(queue)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    if handled != MESSAGES or queue.messages:
        raise RuntimeError(f"handled {handled} of {MESSAGES}; {len(queue.messages)} left")
    return handled / seconds, cpu / handled * 1e6


async def measure(server: Server | None) -> Section:
    """Run the rounds and summarise them."""
    del server
    cpu = pin_to_one_core()
    contenders: dict[str, Callable[[FakeQueueTransport], Awaitable[int]]] = {
        "fake transport alone": fake_alone,
        "qworker": qworker_run(),
    }
    observed = observability()
    if observed is not None:
        middleware, sinks, _ = observed
        contenders["qworker + metrics + tracing"] = qworker_run(middleware, sinks)
    for run in contenders.values():  # warm-up
        await run(await filled(500))
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    cpus: dict[str, list[float]] = {name: [] for name in contenders}
    names = list(contenders)
    for round_index in range(ROUNDS):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            rate, cpu_us = await timed(contenders[name])
            rates[name].append(rate)
            cpus[name].append(cpu_us)
            print(f"# round {round_index + 1}: {name:<28} {rate:8.0f} msg/s", file=sys.stderr)
    if observed is not None:
        observed[2]()
    return _summarise(rates, cpus, cpu, observed=observed is not None)


def _summarise(
    rates: dict[str, list[float]], cpus: dict[str, list[float]], cpu: int | None, *, observed: bool
) -> Section:
    base = median(rates["fake transport alone"])
    rows = []
    data: dict[str, Any] = {
        "messages": MESSAGES,
        "rounds": ROUNDS,
        "pollers": POLLERS,
        "concurrency": CONCURRENCY,
        "cpu": cpu,
    }
    base_cpu = median(cpus["fake transport alone"])
    for name, values in rates.items():
        rate = median(values)
        cpu_us = median(cpus[name])
        alone = name == "fake transport alone"
        own_us = None if alone else (1 / rate - 1 / base) * 1e6
        own_cpu_us = None if alone else cpu_us - base_cpu
        rows.append(
            [
                name,
                fmt(rate),
                f"{rate / base:.2f}x",
                " / ".join(fmt(v) for v in values),
                fmt(1e6 / rate, 1),
                fmt(cpu_us, 1),
                "-" if own_us is None else fmt(own_us, 1),
                "-" if own_cpu_us is None else fmt(own_cpu_us, 1),
            ]
        )
        data[name] = {
            "median_msg_per_s": rate,
            "ratio_to_fake_alone": rate / base,
            "runs_msg_per_s": values,
            "us_per_msg": 1e6 / rate,
            "own_us_per_msg": own_us,
            "cpu_us_per_msg": cpu_us,
            "own_cpu_us_per_msg": own_cpu_us,
        }
    note = (
        ""
        if observed
        else "\n\n`qworker.observability` is not there: metrics and tracing not measured."
    )
    markdown = (
        f"{MESSAGES:,} messages per run, {ROUNDS} interleaved rounds, one process pinned to "
        f"CPU {cpu}, qworker with {POLLERS} pollers and concurrency {CONCURRENCY}, a trivial "
        "async handler taking the body as `str`. Tracing samples every span (the default ratio "
        'when tracing is on) into a batch span processor whose exporter drops them. "Own" = '
        "minus the fake transport alone; CPU time is steadier than wall time when other "
        "processes share the machine.\n\n"
        + table(
            [
                "contender",
                "median msg/s",
                "vs fake alone",
                "rounds (msg/s)",
                "µs/msg (wall)",
                "CPU µs/msg",
                "qworker's own µs/msg (wall)",
                "qworker's own CPU µs/msg",
            ],
            rows,
        )
        + note
    )
    return Section("Framework overhead (in-memory transport, one core)", markdown, data)


if __name__ == "__main__":
    raise SystemExit(main(measure, needs_localstack=False, doc=__doc__))
