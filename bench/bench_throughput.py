"""Throughput against LocalStack: qworker vs a bare aiobotocore loop, on two workloads.

One LocalStack, one process, interleaved rounds (the order of the async contenders rotates each
round, and each pair compared, qworker and the bare loop on either workload, runs back to back,
which one first alternating; the naive loop runs last). Each contender gets a fresh queue filled
with the same small JSON bodies before its clock starts. Two workloads:

**Drain** (a trivial async handler; `QWORKER_BENCH_MESSAGES` messages):

- **qworker** (tuned): `consumer_for(SqsTransport(...), handle, pollers=P, concurrency=C)`,
  `run_until_empty()` (drain mode), on the worker's own client (`open_sqs_client`).
- **qworker defaults**: the same with the concurrency and pollers `qworker run` uses without
  tuning flags (`QWorkerSettings()`'s defaults).
- **qworker + tracing 1.0**: tuned, with the `TracingMiddleware` at sample ratio 1.0 on a tracer
  provider sampling every root span into a `BatchSpanProcessor` whose exporter drops the spans.
- **bare aiobotocore**: P concurrent loops of ReceiveMessage(10, long poll, same attributes as
  qworker asks) + one `await handle(body)` per message + DeleteMessageBatch, on the same client.
- **naive boto3**: one thread, ReceiveMessage(1) + DeleteMessage, for a fixed time budget.

**I/O-bound** (every handler awaits a fixed `QWORKER_BENCH_IO_DELAY_S`, 50 ms; C_io = 100 handlers
in flight; `QWORKER_BENCH_IO_MESSAGES` messages): its ideal is min(C_io / t, what the server
gives the bare loop).

- **qworker I/O-bound**: `consumer_for(..., pollers=P_io, concurrency=C_io)`, drain mode.
- **bare I/O-bound**: P_io loops of ReceiveMessage(10, long poll); each received message waits
  for one of C_io slots (a semaphore) and runs as its own task; finished receipts are deleted in
  batches of 10 (a partial batch after 5 ms).

Reported: the median msg/s over the rounds, ratios to the bare loop of the same run (per round and
of the medians), the CPU each side spent per message (this process, and the LocalStack process),
the receives per message, and the machine's load (`/proc/loadavg` per run, and the CPU other
processes used meanwhile), which is what moves the ratios on a small shared machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import boto3
from benchlib import (
    Section,
    Server,
    delete_queue,
    fill,
    fmt,
    fresh_queue,
    machine_busy_s,
    main,
    median,
    sqs_client,
    table,
)

from qworker.dispatch import Middleware
from qworker.settings import QWorkerSettings
from qworker.testing import consumer_for
from qworker.transport import MAX_BATCH, MESSAGE_ATTRIBUTES, SYSTEM_ATTRIBUTES, SqsTransport

MESSAGES: Final = int(os.environ.get("QWORKER_BENCH_MESSAGES", "5000"))
ROUNDS: Final = int(os.environ.get("QWORKER_BENCH_ROUNDS", "7"))
POLLERS: Final = int(os.environ.get("QWORKER_BENCH_POLLERS", "8"))
CONCURRENCY: Final = int(os.environ.get("QWORKER_BENCH_CONCURRENCY", str(POLLERS * 10 * 2)))
"""Two full receives' worth of slots per poller: a poller never waits for capacity."""
IO_MESSAGES: Final = int(os.environ.get("QWORKER_BENCH_IO_MESSAGES", "4000"))
IO_CONCURRENCY: Final = int(os.environ.get("QWORKER_BENCH_IO_CONCURRENCY", "100"))
IO_DELAY_S: Final = float(os.environ.get("QWORKER_BENCH_IO_DELAY_S", "0.05"))
IO_POLLERS: Final = int(os.environ.get("QWORKER_BENCH_IO_POLLERS", "4"))
"""Receive-10 pollers of both I/O-bound contenders (equal pollers)."""
IO_DELETE_LINGER_S: Final = 0.005
WARMUP_MESSAGES: Final = 500
NAIVE_BUDGET_S: Final = float(os.environ.get("QWORKER_BENCH_NAIVE_S", "4"))
NAIVE_MESSAGES: Final = 2000
"""Enough that the naive loop never runs dry within its budget."""
BLOCKS: Final = (
    ("qworker", "bare aiobotocore"),
    ("qworker defaults",),
    ("qworker + tracing 1.0",),
    ("qworker I/O-bound", "bare I/O-bound"),
)
"""The contenders in the order of a round; a pair compared with each other runs back to back."""
CONTENDERS: Final = tuple(name for block in BLOCKS for name in block)
NAIVE: Final = "naive boto3 (1 msg)"
SEND_WAIT_S: Final = 20


@dataclass(slots=True)
class Run:
    """One timed run of one contender."""

    contender: str
    round: int
    messages: int
    seconds: float
    client_cpu_s: float
    server_cpu_s: float | None
    machine_busy_s: float
    load1: float = 0.0
    receives: int | None = None
    steady_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """Messages per second."""
        return self.messages / self.seconds

    def client_us(self) -> float:
        """This process's CPU per message, in µs."""
        return self.client_cpu_s / self.messages * 1e6

    def server_us(self) -> float | None:
        """LocalStack's CPU per message, in µs."""
        return None if self.server_cpu_s is None else self.server_cpu_s / self.messages * 1e6

    def others_cores(self) -> float | None:
        """CPUs the rest of the machine kept busy meanwhile (other processes: noise)."""
        if self.server_cpu_s is None:
            return None
        return max(0.0, self.machine_busy_s - self.client_cpu_s - self.server_cpu_s) / self.seconds

    def receives_per_message(self) -> float | None:
        """ReceiveMessage calls per message handled (empty ones included)."""
        return None if self.receives is None else self.receives / self.messages


def loadavg() -> str:
    """`/proc/loadavg`'s three load averages."""
    with contextlib.suppress(OSError):
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


async def handle(body: str) -> None:
    """The trivial handler of the drain workload."""
    del body


_finished: list[float] = []
"""When each I/O-bound handler finished (perf_counter), for the steady-state rate."""


async def io_handle(body: str) -> None:
    """The I/O-bound handler: await a fixed delay (a call to another service, say)."""
    del body
    await asyncio.sleep(IO_DELAY_S)
    _finished.append(time.perf_counter())


def steady_rate(stamps: Sequence[float]) -> float | None:
    """Messages per second between the 10th and the 90th percentile of finishing times."""
    ordered = sorted(stamps)
    if len(ordered) < 20:
        return None
    low, high = len(ordered) // 10, len(ordered) * 9 // 10
    span = ordered[high] - ordered[low]
    return (high - low) / span if span > 0 else None


async def timed(server: Server, contender: str, work: Callable[[], Awaitable[int]]) -> Run:
    """Run `work` (which returns how many messages it handled) and measure it.

    The heap is collected first, so no contender's CPU pays for the garbage the one before left.
    """
    gc.collect()
    load1 = float(loadavg().split()[0])
    cpu0, server0, machine0 = time.process_time(), server.cpu_s(), machine_busy_s()
    began = time.perf_counter()
    handled = await work()
    seconds = time.perf_counter() - began
    cpu1, server1, machine1 = time.process_time(), server.cpu_s(), machine_busy_s()
    server_cpu = None if server0 is None or server1 is None else server1 - server0
    return Run(contender, 0, handled, seconds, cpu1 - cpu0, server_cpu, machine1 - machine0, load1)


def default_options() -> dict[str, Any]:
    """The concurrency and pollers `qworker run` uses without tuning flags."""
    settings = QWorkerSettings()
    options: dict[str, Any] = {"concurrency": settings.concurrency}
    pollers = getattr(settings, "pollers", None)
    if isinstance(pollers, int):  # else the consumer derives it
        options["pollers"] = pollers
    return options


async def run_qworker(
    server: Server,
    client: Any,  # noqa: ANN401 (aiobotocore)
    messages: int,
    *,
    contender: str = "qworker",
    options: dict[str, Any] | None = None,
    middleware: Callable[[str], Sequence[Middleware]] | None = None,
) -> Run:
    """qworker's consumer in drain mode (tuned unless `options` say otherwise)."""
    transport = await filled(client, contender, messages)
    consumer = consumer_for(
        transport,
        handle,
        middleware=middleware(transport.queue_name) if middleware else (),
        **(options or {"pollers": POLLERS, "concurrency": CONCURRENCY}),
    )

    async def work() -> int:
        await consumer.run_until_empty()
        return consumer.statistics().acked

    run = await timed(server, contender, work)
    run.receives = consumer.statistics().receives
    run.extra = {"pollers": consumer.pollers, "concurrency": consumer.concurrency}
    await delete_queue(transport)
    _check(run, messages)
    return run


@dataclass(slots=True)
class BareDrain:
    """P loops of receive(10, long poll) + handler + delete batch, until all are deleted."""

    client: Any
    url: str
    messages: int
    pollers: int = POLLERS
    deleted: int = 0
    receives: int = 0

    async def poller(self, done: asyncio.Event) -> None:
        """One receive loop."""
        while self.deleted < self.messages:
            response = await self.client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=MAX_BATCH,
                WaitTimeSeconds=SEND_WAIT_S,
                MessageSystemAttributeNames=list(SYSTEM_ATTRIBUTES),
                MessageAttributeNames=list(MESSAGE_ATTRIBUTES),
            )
            self.receives += 1
            found = response.get("Messages", [])
            if not found:
                continue
            for message in found:
                await handle(message["Body"])
            result = await self.client.delete_message_batch(
                QueueUrl=self.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(found)
                ],
            )
            self.deleted += len(result.get("Successful", []))
        done.set()

    async def work(self) -> int:
        """Drain; return how many messages were deleted."""
        done = asyncio.Event()
        tasks = [asyncio.create_task(self.poller(done)) for _ in range(self.pollers)]
        await done.wait()
        for task in tasks:  # the others wait in a long poll on an empty queue
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return self.deleted


async def run_bare(server: Server, client: Any, messages: int) -> Run:  # noqa: ANN401
    """The bare loop on the drain workload."""
    transport = await filled(client, "bare", messages)
    bare = BareDrain(client, transport.queue_url, messages)
    run = await timed(server, "bare aiobotocore", bare.work)
    run.receives = bare.receives
    await delete_queue(transport)
    _check(run, messages)
    return run


async def run_qworker_io(server: Server, client: Any, messages: int) -> Run:  # noqa: ANN401
    """qworker's consumer on the I/O-bound workload, drain mode."""
    transport = await filled(client, "qworker-io", messages)
    consumer = consumer_for(transport, io_handle, pollers=IO_POLLERS, concurrency=IO_CONCURRENCY)
    _finished.clear()

    async def work() -> int:
        await consumer.run_until_empty()
        return consumer.statistics().acked

    run = await timed(server, "qworker I/O-bound", work)
    run.receives = consumer.statistics().receives
    run.steady_rate = steady_rate(_finished)
    await delete_queue(transport)
    _check(run, messages)
    return run


class BareIoLoop:
    """P_io receive-10 pollers feeding C_io concurrent handler tasks; deletes in batches of 10."""

    def __init__(self, client: Any, url: str, messages: int) -> None:  # noqa: ANN401
        """Consume `messages` messages of `url`."""
        self.client = client
        self.url = url
        self.messages = messages
        self.slots = asyncio.Semaphore(IO_CONCURRENCY)
        self.running: set[asyncio.Task[None]] = set()
        self.pending: list[str] = []
        self.generation = 0
        self.deleted = 0
        self.receives = 0
        self.done = asyncio.Event()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run `coro` as a task kept until it ends."""
        task = asyncio.create_task(coro)
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def delete(self, handles: list[str]) -> None:
        """Delete one batch."""
        result = await self.client.delete_message_batch(
            QueueUrl=self.url,
            Entries=[{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(handles)],
        )
        self.deleted += len(result.get("Successful", []))
        if self.deleted >= self.messages:
            self.done.set()

    def flush(self, generation: int | None = None) -> None:
        """Send the pending receipts (a timer's flush only if no batch left since it was set)."""
        if not self.pending or (generation is not None and generation != self.generation):
            return
        self.generation += 1
        self.spawn(self.delete(self.pending[:]))
        self.pending.clear()

    async def handler_task(self, message: dict[str, Any]) -> None:
        """Run the handler, free the slot, queue the receipt for deleting."""
        try:
            await io_handle(message["Body"])
        finally:
            self.slots.release()
        self.pending.append(message["ReceiptHandle"])
        if len(self.pending) >= MAX_BATCH:
            self.flush()
        elif len(self.pending) == 1:
            asyncio.get_running_loop().call_later(IO_DELETE_LINGER_S, self.flush, self.generation)

    async def poller(self) -> None:
        """Receive 10, then start each message as soon as a slot is free."""
        while True:
            response = await self.client.receive_message(
                QueueUrl=self.url,
                MaxNumberOfMessages=MAX_BATCH,
                WaitTimeSeconds=SEND_WAIT_S,
                MessageSystemAttributeNames=list(SYSTEM_ATTRIBUTES),
                MessageAttributeNames=list(MESSAGE_ATTRIBUTES),
            )
            self.receives += 1
            for message in response.get("Messages", []):
                await self.slots.acquire()
                self.spawn(self.handler_task(message))

    async def work(self) -> int:
        """Consume until every message is deleted; return how many were."""
        pollers = [asyncio.create_task(self.poller()) for _ in range(IO_POLLERS)]
        await self.done.wait()
        for task in pollers:  # they wait in a long poll on an empty queue
            task.cancel()
        await asyncio.gather(*pollers, *self.running, return_exceptions=True)
        return self.deleted


async def run_bare_io(server: Server, client: Any, messages: int) -> Run:  # noqa: ANN401
    """The bare loop on the I/O-bound workload."""
    transport = await filled(client, "bare-io", messages)
    bare = BareIoLoop(client, transport.queue_url, messages)
    _finished.clear()
    run = await timed(server, "bare I/O-bound", bare.work)
    run.receives = bare.receives
    run.steady_rate = steady_rate(_finished)
    await delete_queue(transport)
    _check(run, messages)
    return run


async def run_naive(server: Server, client: Any, budget_s: float) -> Run:  # noqa: ANN401
    """One boto3 thread: receive 1, handle, delete 1, until the time budget is spent."""
    transport = await filled(client, "naive", NAIVE_MESSAGES)
    url = transport.queue_url
    endpoint = server.endpoint_url
    sync = boto3.session.Session().client(
        "sqs",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 (LocalStack does not check it)
    )

    def loop() -> int:
        handled = 0
        deadline = time.perf_counter() + budget_s
        while time.perf_counter() < deadline:
            response = sync.receive_message(QueueUrl=url, MaxNumberOfMessages=1, WaitTimeSeconds=1)
            for message in response.get("Messages", []):
                sync.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])
                handled += 1
        return handled

    async def work() -> int:
        return await asyncio.to_thread(loop)

    run = await timed(server, NAIVE, work)
    await delete_queue(transport)
    return run


async def filled(client: Any, prefix: str, messages: int) -> SqsTransport:  # noqa: ANN401
    transport = await fresh_queue(client, re.sub(r"[^a-z0-9]+", "-", prefix.lower()).strip("-"))
    seconds = await fill(transport, messages)
    print(f"# filled {messages} in {seconds:.2f} s", file=sys.stderr)
    return transport


def _check(run: Run, messages: int) -> None:
    if run.messages != messages:
        raise RuntimeError(f"{run.contender}: handled {run.messages} of {messages} messages")


def tracing_middleware() -> tuple[Callable[[str], Sequence[Middleware]], Callable[[], None]]:
    """Tracing as a worker with `--otel-sample-ratio 1.0` wires it, exporting to nowhere.

    Returns the middleware for a queue (the worker names its one queue), and the shutdown.
    """
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SpanExporter,
        SpanExportResult,
    )
    from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased  # noqa: PLC0415

    from qworker.role import Identity  # noqa: PLC0415
    from qworker.tracing import TracingMiddleware, resource  # noqa: PLC0415

    class DropSpans(SpanExporter):
        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            del spans
            return SpanExportResult.SUCCESS

    identity = Identity(service="bench", version="bench")
    provider = TracerProvider(
        resource=resource(identity), sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False
    )
    provider.add_span_processor(BatchSpanProcessor(DropSpans()))
    tracer = provider.get_tracer("qworker", identity.version)

    def middleware(queue: str) -> Sequence[Middleware]:
        return [TracingMiddleware(tracer, identity=identity, queue=queue, sample_ratio=1.0)]

    return middleware, provider.shutdown


async def measure(server: Server | None) -> Section:
    """Run the rounds and summarise them."""
    if server is None:
        return Section("Throughput on LocalStack", "Skipped: no LocalStack.", {})
    runs: list[Run] = []
    load_before = loadavg()
    traced, shutdown = tracing_middleware()
    defaults = default_options()
    async with sqs_client(server.endpoint_url, pollers=POLLERS) as client:
        contenders: dict[str, Callable[[int], Awaitable[Run]]] = {
            "qworker": lambda n: run_qworker(server, client, n),
            "bare aiobotocore": lambda n: run_bare(server, client, n),
            "qworker defaults": lambda n: run_qworker(
                server, client, n, contender="qworker defaults", options=defaults
            ),
            "qworker + tracing 1.0": lambda n: run_qworker(
                server, client, n, contender="qworker + tracing 1.0", middleware=traced
            ),
            "qworker I/O-bound": lambda n: run_qworker_io(server, client, n),
            "bare I/O-bound": lambda n: run_bare_io(server, client, n),
        }
        # Warm-up: connections, botocore's loaders, qworker's code paths. Not counted.
        for run_one in contenders.values():
            await run_one(WARMUP_MESSAGES)
        for round_index in range(ROUNDS):
            for name in round_order(round_index):
                if name == NAIVE:
                    run = await run_naive(server, client, NAIVE_BUDGET_S)
                else:
                    count = IO_MESSAGES if "I/O" in name else MESSAGES
                    run = await contenders[name](count)
                run.round = round_index
                runs.append(run)
                others = run.others_cores()
                print(
                    f"# round {round_index + 1}: {run.contender:<22} {run.rate:8.0f} msg/s "
                    f"({run.messages} in {run.seconds:.2f} s; client {run.client_us():.0f} "
                    f"µs/msg; receives {run.receives}; load {run.load1:.2f}; other processes "
                    f"{others if others is not None else -1:.2f} CPUs)",
                    flush=True,
                    file=sys.stderr,
                )
    shutdown()
    return _summarise(runs, load_before, loadavg(), defaults)


def round_order(round_index: int) -> list[str]:
    """The contenders of round `round_index`, in the order they run.

    The async contenders back to back, the order of the blocks rotating, so each round's
    contenders see about the same machine; then the naive loop. Each pair (qworker and the bare
    loop, on either workload) runs back to back, which of the two goes first alternating from
    one round to the next: the pair's per-round ratio compares runs seconds apart that follow
    the same contenders equally often (a machine's slow spell, or what the run before left
    behind, falls on both sides alike).
    """
    shift = round_index % len(BLOCKS)
    order: list[str] = []
    for block in (*BLOCKS[shift:], *BLOCKS[:shift]):
        order.extend(block if round_index % 2 == 0 else reversed(block))
    return [*order, NAIVE]


def _total_cpu(entry: dict[str, Any]) -> float | None:
    """Client + LocalStack CPU per message (µs), if both are known."""
    server = entry["server_cpu_us_per_msg"]
    return None if server is None else float(entry["client_cpu_us_per_msg"]) + float(server)


def _ratio(top: float | None, bottom: float | None) -> float | None:
    return None if top is None or not bottom else top / bottom


def _us(value: float | None) -> str:
    return "?" if value is None else f"{value:.0f}"


def _paired(
    runs: list[Run], name: str, base: str, value: Callable[[Run], float] = lambda r: r.rate
) -> list[float]:
    """Per-round ratios of `name`'s `value` (its rate) to `base`'s (same round)."""
    by_round = {r.round: r for r in runs if r.contender == base}
    return [
        value(r) / value(by_round[r.round])
        for r in runs
        if r.contender == name and r.round in by_round
    ]


def _summarise(
    runs: list[Run], load_before: str, load_after: str, defaults: dict[str, Any]
) -> Section:
    names = [*CONTENDERS, NAIVE]
    by_name = {name: [r for r in runs if r.contender == name] for name in names}
    bare_rate = median([r.rate for r in by_name["bare aiobotocore"]])
    bare_io_rate = median([r.rate for r in by_name["bare I/O-bound"]])
    ideal = IO_CONCURRENCY / IO_DELAY_S
    data: dict[str, Any] = {
        "messages": MESSAGES,
        "rounds": ROUNDS,
        "pollers": POLLERS,
        "concurrency": CONCURRENCY,
        "defaults": defaults,
        "io_messages": IO_MESSAGES,
        "io_concurrency": IO_CONCURRENCY,
        "io_delay_s": IO_DELAY_S,
        "io_pollers": IO_POLLERS,
        "io_ideal_msg_per_s": ideal,
        "naive_budget_s": NAIVE_BUDGET_S,
        "nproc": os.cpu_count(),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    }
    for name in names:
        mine = by_name[name]
        rate = median([r.rate for r in mine])
        base = bare_io_rate if "I/O" in name else bare_rate
        server_us = [u for r in mine if (u := r.server_us()) is not None]
        others = [o for r in mine if (o := r.others_cores()) is not None]
        receives = [x for r in mine if (x := r.receives_per_message()) is not None]
        steady = [x for r in mine if r.steady_rate is not None for x in [r.steady_rate]]
        data[name] = {
            "median_msg_per_s": rate,
            "ratio_to_bare": rate / base if base else None,
            "runs_msg_per_s": [r.rate for r in mine],
            "client_cpu_us_per_msg": median([r.client_us() for r in mine]),
            "runs_client_cpu_us_per_msg": [r.client_us() for r in mine],
            "server_cpu_us_per_msg": median(server_us) if server_us else None,
            "other_processes_cpus": median(others) if others else None,
            "load1": [r.load1 for r in mine],
            "receives_per_msg": median(receives) if receives else None,
            "steady_msg_per_s": median(steady) if steady else None,
        }
    for name in names:
        # When the CPUs are the limit (client and LocalStack share them), the throughput ratio
        # tends to the inverse ratio of CPU spent per message: steadier under other load.
        reference = "bare I/O-bound" if "I/O" in name else "bare aiobotocore"
        data[name]["cpu_per_msg_total"] = _total_cpu(data[name])
        data[name]["cpu_bound_ratio"] = _ratio(
            _total_cpu(data[reference]), data[name]["cpu_per_msg_total"]
        )
    for name in ("qworker", "qworker defaults", "qworker + tracing 1.0"):
        paired = _paired(runs, name, "bare aiobotocore")
        data[name]["paired_ratios"] = paired
        data[name]["median_paired_ratio"] = median(paired)
    traced = _paired(runs, "qworker + tracing 1.0", "qworker")
    data["qworker + tracing 1.0"]["paired_to_qworker"] = traced
    data["qworker + tracing 1.0"]["cost"] = 1 - median(traced) if traced else None
    cpu_ratio = _ratio(
        data["qworker"]["cpu_per_msg_total"], data["qworker + tracing 1.0"]["cpu_per_msg_total"]
    )
    data["qworker + tracing 1.0"]["cpu_bound_cost"] = None if cpu_ratio is None else 1 - cpu_ratio
    io = data["qworker I/O-bound"]
    io_paired = [
        r.rate / min(ideal, b.rate)
        for r in by_name["qworker I/O-bound"]
        for b in by_name["bare I/O-bound"]
        if b.round == r.round
    ]
    io["ideal_msg_per_s"] = min(ideal, bare_io_rate)
    io["ratio_to_ideal"] = io["median_msg_per_s"] / io["ideal_msg_per_s"]
    io["paired_ratios_to_ideal"] = io_paired
    io["median_paired_ratio_to_ideal"] = median(io_paired)
    # Client CPU: the ratio of the same round's runs (as for throughput: the rounds' drift in
    # machine load cancels within a round), and the ratio of the medians beside it.
    client_paired = _paired(runs, "qworker", "bare aiobotocore", Run.client_us)
    data["client_cpu_paired_ratios"] = client_paired
    data["client_cpu_ratio"] = median(client_paired)
    data["client_cpu_ratio_of_medians"] = (
        data["qworker"]["client_cpu_us_per_msg"] / data["bare aiobotocore"]["client_cpu_us_per_msg"]
    )
    return Section("Throughput on LocalStack", _markdown(data, by_name), data)


def _markdown(data: dict[str, Any], by_name: dict[str, list[Run]]) -> str:
    rows = []
    for name, mine in by_name.items():
        d = data[name]
        rows.append(
            [
                name,
                fmt(d["median_msg_per_s"]),
                f"{d['ratio_to_bare']:.2f}x" if d["ratio_to_bare"] else "-",
                " / ".join(fmt(r.rate) for r in mine),
                fmt(d["client_cpu_us_per_msg"]),
                _us(d["server_cpu_us_per_msg"]),
                "-" if d["cpu_bound_ratio"] is None else f"{d['cpu_bound_ratio']:.2f}x",
                "-" if d["receives_per_msg"] is None else f"{d['receives_per_msg']:.3f}",
                " / ".join(f"{r.load1:.1f}" for r in mine),
                "-" if d["other_processes_cpus"] is None else f"{d['other_processes_cpus']:.2f}",
            ]
        )
    mine, bare = data["qworker"], data["bare aiobotocore"]
    dflt, trc, io, bio = (
        data["qworker defaults"],
        data["qworker + tracing 1.0"],
        data["qworker I/O-bound"],
        data["bare I/O-bound"],
    )
    defaults = data["defaults"]
    ideal = data["io_ideal_msg_per_s"]

    def ratios(values: Sequence[float]) -> str:
        return ", ".join(f"{p:.2f}" for p in values)

    verdicts = [
        (
            f"- **Drain, tuned**: qworker reaches **{mine['median_paired_ratio']:.2f}x** the bare "
            f"loop (median of the per-round ratios {ratios(mine['paired_ratios'])}; of the "
            f"medians {mine['ratio_to_bare']:.2f}x; CPU-bound {_x(mine['cpu_bound_ratio'])}; "
            "target ≥ 0.90x)."
        ),
        (
            f"- **Client CPU at equal pollers** ({data['pollers']}): qworker "
            f"{mine['client_cpu_us_per_msg']:.0f} µs/msg vs the bare loop's "
            f"{bare['client_cpu_us_per_msg']:.0f} (**{data['client_cpu_ratio']:.2f}x**, median "
            f"of the per-round ratios {ratios(data['client_cpu_paired_ratios'])}; of the medians "
            f"{data['client_cpu_ratio_of_medians']:.2f}x; target ≤ 1.15x). LocalStack's CPU per "
            f"message: {_us(mine['server_cpu_us_per_msg'])} vs "
            f"{_us(bare['server_cpu_us_per_msg'])} µs."
        ),
        (
            f"- **Drain, defaults** (concurrency {defaults.get('concurrency')}, pollers "
            f"{defaults.get('pollers', 'derived')}): **{dflt['median_paired_ratio']:.2f}x** the "
            f"bare loop (per round {ratios(dflt['paired_ratios'])}; of the medians "
            f"{dflt['ratio_to_bare']:.2f}x; CPU-bound {_x(dflt['cpu_bound_ratio'])}; target "
            "≥ 0.90x); client "
            f"{dflt['client_cpu_us_per_msg']:.0f} µs/msg."
        ),
        (
            f"- **Tracing at sample ratio 1.0**: {trc['ratio_to_bare']:.2f}x the bare loop, "
            f"**{(trc['cost'] or 0) * 100:.0f} %** below untraced qworker (median of the per-round "
            f"ratios {ratios(trc['paired_to_qworker'])}; target ≤ 15 %); CPU-bound cost "
            f"{_pct(trc['cpu_bound_cost'])}; client "
            f"{trc['client_cpu_us_per_msg']:.0f} µs/msg vs {mine['client_cpu_us_per_msg']:.0f}."
        ),
        (
            f"- **I/O-bound** ({data['io_concurrency']} handlers in flight, each awaiting "
            f"{data['io_delay_s'] * 1000:g} ms, so C/t = {ideal:,.0f} msg/s; {data['io_pollers']} "
            f"pollers each): qworker {io['median_msg_per_s']:,.0f} msg/s, the bare loop "
            f"{bio['median_msg_per_s']:,.0f}: **{io['median_paired_ratio_to_ideal']:.2f}x** "
            f"min(C/t, bare) (median of the per-round ratios "
            f"{ratios(io['paired_ratios_to_ideal'])}; of the medians {io['ratio_to_ideal']:.2f}x; "
            f"target ≥ 0.95x). Receives per "
            f"message: qworker {io['receives_per_msg']:.3f}, the bare loop "
            f"{bio['receives_per_msg']:.3f}. Steady state (10th to 90th percentile of finishing "
            f"times): {_rate(io['steady_msg_per_s'])} vs {_rate(bio['steady_msg_per_s'])} msg/s."
        ),
    ]
    intro = (
        f"Drain: {data['messages']:,} messages per run; qworker tuned and the bare loop with "
        f"{data['pollers']} pollers, qworker concurrency {data['concurrency']}. I/O-bound: "
        f"{data['io_messages']:,} messages per run. {data['rounds']} interleaved rounds (the "
        "order of the async contenders rotates each round; qworker and the bare loop of each "
        "workload run back to back, which one first alternating from round to round; then the "
        "naive loop, which runs "
        f"{data['naive_budget_s']:g} s). Fresh queue per run; LocalStack with "
        f"`SQS_DISABLE_CLOUDWATCH_METRICS=1`. Machine: {data['nproc']} CPUs, /proc/loadavg "
        f"{data['loadavg_before']} before and {data['loadavg_after']} after; the load column "
        "is the 1-minute load average at the start of each run (client, LocalStack and any "
        "other work share the CPUs). CPU-bound ratio: the bare loop's CPU per message (client + "
        "LocalStack) over this contender's, for the same workload; it is what the throughput "
        "ratio tends to when the CPUs are the limit, and it moves much less with other load "
        "than the measured msg/s."
    )
    return "\n".join(
        [
            intro,
            "",
            table(
                [
                    "contender",
                    "median msg/s",
                    "vs bare (same workload)",
                    "rounds (msg/s)",
                    "client CPU µs/msg",
                    "LocalStack CPU µs/msg",
                    "CPU-bound ratio",
                    "receives/msg",
                    "load (1 min) per round",
                    "other load (CPUs)",
                ],
                rows,
            ),
            "",
            *verdicts,
        ]
    )


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.0f} %"


def _rate(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.0f}"


if __name__ == "__main__":
    raise SystemExit(main(measure, needs_localstack=True, doc=__doc__))
