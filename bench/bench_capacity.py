"""The receive loop's capacity rule, in isolation: the in-memory fake with simulated SQS latency.

On LocalStack on a small shared machine, client and server compete for the CPUs, so what the
capacity rule costs is hidden in CPU noise. Here the queue is `FakeSqs` behind a transport that
waits a fixed round trip (`--receive-ms`, `--delete-ms`) before each call: the waits cost no CPU,
so the throughput shows what the rule itself allows. Workloads:

- **I/O-bound**: every handler awaits a fixed delay (50 ms), C = 100 in flight; ideal C/t.
- **drain, defaults**: a trivial handler, the concurrency and pollers of `qworker run` without
  tuning flags; compared with the bare loop at 8 pollers.

Contenders:

- **bare**: P receive-10 loops; each message waits for one of C slots (a semaphore) and runs as
  its own task; receipts are deleted in batches of 10 (a partial batch after 5 ms).
- **qworker today**: `consumer_for(...)`, drain mode, as shipped.
- **prototype A (handler gate)**: *a measurement of a proposed change, not qworker's behaviour*.
  The consumer may hold C + 10 x P messages; a middleware semaphore lets only C handlers run.
  So a handler's slot is free as soon as the handler returns (not when its delete is
  confirmed), and a receive overlaps the tail of running handlers, as in the bare loop.
- **prototype B (A + batched take)**: also replaces the consumer's capacity (a private attribute,
  so this may stop working when the consumer changes) by one whose `take()` waits until
  min(10, requested) slots are free, or 5 ms after the first free slot.
- **prototype C (B + pollers from concurrency)**: B with max(2, ceil(C / 10)) pollers.
  B and C are skipped (with a note) when the consumer's capacity is no longer the one they
  replace.
- **prototype D (A with 4 pollers)**, drain with the defaults' concurrency: A with 4 pollers.

`python bench/bench_capacity.py [--messages N] [--rounds R] [--receive-ms MS] [--delete-ms MS]`
prints Markdown. Interleaved rounds, medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from benchlib import bodies, table

from qworker.concurrency import first
from qworker.dispatch import Dispatch, Middleware
from qworker.outcome import OutcomeRecord
from qworker.settings import QWorkerSettings
from qworker.testing import FakeQueueTransport, FakeSqs, consumer_for
from qworker.transport import (
    MAX_BATCH,
    BatchFailure,
    Message,
    QueueAttributes,
    SendEntry,
)

IO_CONCURRENCY: Final = 100
IO_DELAY_S: Final = 0.05
BARE_POLLERS: Final = 4
"""Pollers of the bare loop and of qworker (equal pollers) on the I/O-bound workload."""
DRAIN_BARE_POLLERS: Final = 8
DEFAULTS_POLLERS: Final = 4
"""Prototype D: the defaults' concurrency with more pollers (so 10 x 4 more messages held)."""
DELETE_LINGER_S: Final = 0.005
TAKE_LINGER_S: Final = 0.005


class LatencyTransport:
    """A `QueueTransport` that waits a fixed round trip before each call to the fake."""

    def __init__(self, inner: FakeQueueTransport, *, receive_s: float, delete_s: float) -> None:
        """Wrap `inner`."""
        self.inner = inner
        self.receive_s = receive_s
        self.delete_s = delete_s
        self.receives = 0
        self.deletes = 0

    @property
    def queue_name(self) -> str:
        """The queue's name."""
        return self.inner.queue_name

    async def receive(
        self, max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        """Wait the round trip, then receive (never a long poll: the fake answers at once)."""
        del wait_time_s
        self.receives += 1
        await asyncio.sleep(self.receive_s)
        return await self.inner.receive(
            max_messages, wait_time_s=0, visibility_timeout_s=visibility_timeout_s
        )

    async def delete_batch(self, receipt_handles: Sequence[str]) -> list[BatchFailure]:
        """Wait, then delete."""
        self.deletes += 1
        await asyncio.sleep(self.delete_s)
        return await self.inner.delete_batch(receipt_handles)

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """Wait, then change one visibility."""
        await asyncio.sleep(self.delete_s)
        await self.inner.change_visibility(receipt_handle, timeout_s)

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        """Wait, then change visibilities."""
        await asyncio.sleep(self.delete_s)
        return await self.inner.change_visibility_batch(entries)

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        """Send (no wait: filling is not measured)."""
        return await self.inner.send_batch(entries)

    async def get_attributes(self) -> QueueAttributes:
        """Describe."""
        return await self.inner.get_attributes()


@dataclass(slots=True)
class Handlers:
    """The handler of a workload, counting how many run at once."""

    delay_s: float
    running: int = 0
    most: int = 0
    done: int = 0

    async def __call__(self, body: str) -> None:
        """Handle one message."""
        del body
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
        finally:
            self.running -= 1
            self.done += 1


Contender = Callable[[LatencyTransport, Handlers, int, int, int], Awaitable[int]]
"""A contender: (transport, handler, messages, pollers, concurrency) -> messages handled."""


class Gate:
    """PROTOTYPE middleware: at most `limit` handlers run; the rest of the held messages wait."""

    def __init__(self, limit: int) -> None:
        """Let `limit` handlers run at once."""
        self._slots = asyncio.Semaphore(limit)

    async def __call__(self, message: Message, call_next: Dispatch) -> OutcomeRecord:
        """Run the handler once a slot is free."""
        async with self._slots:
            return await call_next(message)


UNFIT: Final = (
    "the consumer's capacity is not the one prototype B replaces (that of commit 687ecee): "
    "prototypes B and C are skipped"
)


def batched_take_fits(consumer: object) -> bool:
    """Whether the consumer's capacity has exactly the interface `BatchedCapacity` replaces."""
    capacity = getattr(consumer, "_capacity", None)
    public = {name for name in dir(capacity) if not name.startswith("_")}
    return capacity is not None and public == {"total", "free", "take", "give"}


class BatchedCapacity:
    """PROTOTYPE capacity: `take()` waits for a full batch of free slots, or a short linger."""

    def __init__(self, total: int, linger_s: float = TAKE_LINGER_S) -> None:
        """Start with `total` free slots."""
        self.total = total
        self.free = total
        self.linger_s = linger_s
        self._changed = asyncio.Event()

    async def take(self, most: int, stopping: asyncio.Event) -> int:
        """Wait until min(most, 10) slots are free, or `linger_s` after the first one was."""
        want = min(most, MAX_BATCH, self.total)
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while not stopping.is_set() and self.free < want:
            timeout = None
            if self.free > 0:
                deadline = deadline if deadline is not None else loop.time() + self.linger_s
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await first(stopping.wait(), self._changed.wait())
        if stopping.is_set():
            return 0
        taken = min(most, self.free)
        self.free -= taken
        return taken

    def give(self, count: int) -> None:
        """Give slots back."""
        self.free += count
        self._changed.set()


@dataclass(slots=True)
class Result:
    """One run."""

    contender: str
    rate: float
    receives_per_msg: float
    deletes_per_msg: float
    most_running: int
    cpu_us: float
    extra: dict[str, Any] = field(default_factory=dict)


async def filled(messages: int, *, receive_s: float, delete_s: float) -> LatencyTransport:
    """A fresh fake queue holding `messages` small bodies, behind the simulated latency."""
    queue = FakeSqs().create_queue("capacity", dead_letter="capacity-dlq")
    all_bodies = bodies(messages)
    for start in range(0, messages, MAX_BATCH):
        await queue.send_batch([SendEntry(b) for b in all_bodies[start : start + MAX_BATCH]])
    return LatencyTransport(queue, receive_s=receive_s, delete_s=delete_s)


async def bare(  # noqa: C901 (one loop, its helpers inline, as a user would write it)
    transport: LatencyTransport, handler: Handlers, messages: int, pollers: int, concurrency: int
) -> int:
    """P receive-10 loops feeding C handler tasks; deletes in batches of 10."""
    slots = asyncio.Semaphore(concurrency)
    running: set[asyncio.Task[None]] = set()
    pending: list[str] = []
    state = {"generation": 0, "deleted": 0}
    done = asyncio.Event()
    loop = asyncio.get_running_loop()

    def spawn(coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        running.add(task)
        task.add_done_callback(running.discard)

    async def delete(handles: list[str]) -> None:
        failures = await transport.delete_batch(handles)
        state["deleted"] += len(handles) - len(failures)
        if state["deleted"] >= messages:
            done.set()

    def flush(generation: int | None = None) -> None:
        if not pending or (generation is not None and generation != state["generation"]):
            return
        state["generation"] += 1
        spawn(delete(pending[:]))
        pending.clear()

    async def run_one(message: Message) -> None:
        try:
            await handler(message.body)
        finally:
            slots.release()
        pending.append(message.receipt_handle)
        if len(pending) >= MAX_BATCH:
            flush()
        elif len(pending) == 1:
            loop.call_later(DELETE_LINGER_S, flush, state["generation"])

    async def poller() -> None:
        while True:
            found = await transport.receive(MAX_BATCH, wait_time_s=0)
            if not found:
                await asyncio.sleep(0.01)  # a long poll's stand-in on an empty queue
            for message in found:
                await slots.acquire()
                spawn(run_one(message))

    tasks = [asyncio.create_task(poller()) for _ in range(pollers)]
    await done.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, *running, return_exceptions=True)
    return state["deleted"]


def qworker(*, gate: bool, batched: bool, pollers: int | None = None) -> Contender:
    """qworker's consumer, as shipped or with the prototype changes."""

    async def run(
        transport: LatencyTransport, handler: Handlers, messages: int, poll: int, concurrency: int
    ) -> int:
        del messages
        count = pollers or poll
        middleware: list[Middleware] = [Gate(concurrency)] if gate else []
        held = concurrency + MAX_BATCH * count if gate else concurrency

        async def handle(body: str) -> None:
            await handler(body)

        consumer = consumer_for(
            transport, handle, pollers=count, concurrency=held, middleware=middleware
        )
        if batched:
            if not batched_take_fits(consumer):
                raise RuntimeError(UNFIT)
            consumer._capacity = BatchedCapacity(held)  # type: ignore[assignment]  # noqa: SLF001
        await consumer.run_until_empty()
        return consumer.statistics().acked

    return run


@dataclass(frozen=True, slots=True)
class Prototype:
    """A workload's own last prototype: its row label, whether its take is batched, its pollers."""

    label: str
    batched: bool
    pollers: int


def lineup(
    pollers: int, where: str, *, bare_at: tuple[int, str], today: str, last: Prototype
) -> dict[str, tuple[Contender, int]]:
    """A workload's contenders, by row label: each with the pollers it runs.

    The bare loop (`bare_at`: its pollers and label), qworker as shipped (labelled `today`) and
    prototypes A and B, these three with `pollers` (`where` ends their labels), and the workload's
    own prototype `last` (a handler gate, with a batched take or not).
    """
    bare_pollers, bare_where = bare_at
    return {
        f"bare ({bare_where})": (bare, bare_pollers),
        f"{today} ({where})": (qworker(gate=False, batched=False), pollers),
        f"prototype A: handler gate ({where})": (qworker(gate=True, batched=False), pollers),
        f"prototype B: A + batched take ({where})": (qworker(gate=True, batched=True), pollers),
        last.label: (qworker(gate=True, batched=last.batched), last.pollers),
    }


async def bare_handler(body: str) -> None:
    """A handler for the interface probe (never run)."""
    del body


def defaults() -> tuple[int, int]:
    """`qworker run`'s concurrency and pollers without tuning flags."""
    settings = QWorkerSettings()
    pollers = getattr(settings, "pollers", None)
    return settings.concurrency, pollers if isinstance(pollers, int) else 2


async def one(
    name: str,
    contender: Contender,
    *,
    messages: int,
    pollers: int,
    concurrency: int,
    delay_s: float,
    receive_s: float,
    delete_s: float,
) -> Result:
    """Fill, run, measure."""
    transport = await filled(messages, receive_s=receive_s, delete_s=delete_s)
    handler = Handlers(delay_s)
    cpu, began = time.process_time(), time.perf_counter()
    handled = await contender(transport, handler, messages, pollers, concurrency)
    seconds, cpu = time.perf_counter() - began, time.process_time() - cpu
    if handled != messages or transport.inner.messages:
        raise RuntimeError(f"{name}: handled {handled} of {messages}")
    return Result(
        name,
        messages / seconds,
        transport.receives / messages,
        transport.deletes / messages,
        handler.most,
        cpu / messages * 1e6,
    )


async def measure(args: argparse.Namespace) -> str:
    """Run both workloads' rounds; return Markdown."""
    c_default, p_default = defaults()
    pollers_c = max(2, math.ceil(IO_CONCURRENCY / MAX_BATCH))
    io_where = f"{BARE_POLLERS} pollers"
    drain_where = f"C={c_default}, {p_default} pollers"
    prototype_c = Prototype(
        f"prototype C: B + {pollers_c} pollers (ceil(C/10))", batched=True, pollers=pollers_c
    )
    prototype_d = Prototype(
        f"prototype D: A with {DEFAULTS_POLLERS} pollers (C={c_default})",
        batched=False,
        pollers=DEFAULTS_POLLERS,
    )
    workloads: dict[str, dict[str, Any]] = {
        "I/O-bound": {
            "concurrency": IO_CONCURRENCY,
            "delay_s": IO_DELAY_S,
            "ideal": IO_CONCURRENCY / IO_DELAY_S,
            "contenders": lineup(
                BARE_POLLERS,
                io_where,
                bare_at=(BARE_POLLERS, io_where),
                today="qworker today",
                last=prototype_c,
            ),
        },
        "drain, defaults": {
            "concurrency": c_default,
            "delay_s": 0.0,
            "ideal": None,
            "contenders": lineup(
                p_default,
                drain_where,
                bare_at=(DRAIN_BARE_POLLERS, f"{DRAIN_BARE_POLLERS} pollers, C={c_default}"),
                today="qworker defaults today",
                last=prototype_d,
            ),
        },
    }
    parts = [
        (
            f"{args.messages:,} messages per run, {args.rounds} interleaved rounds, simulated "
            f"round trips: receive {args.receive_ms:g} ms, delete {args.delete_ms:g} ms (no "
            "server CPU). Prototype rows measure proposed changes made from bench/ (a "
            "middleware, a replaced private attribute), not qworker's shipped behaviour."
        ),
    ]
    probe = consumer_for(await filled(1, receive_s=0, delete_s=0), bare_handler)
    if not batched_take_fits(probe):
        parts.append(f"Note: {UNFIT}.")
        for spec in workloads.values():
            spec["contenders"] = {
                name: entry
                for name, entry in spec["contenders"].items()
                if "batched take" not in name and not name.startswith("prototype C")
            }
    for workload, spec in workloads.items():
        results: dict[str, list[Result]] = {name: [] for name in spec["contenders"]}
        names = list(results)
        for round_index in range(args.rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                contender, pollers = spec["contenders"][name]
                result = await one(
                    name,
                    contender,
                    messages=args.messages,
                    pollers=pollers,
                    concurrency=spec["concurrency"],
                    delay_s=spec["delay_s"],
                    receive_s=args.receive_ms / 1000,
                    delete_s=args.delete_ms / 1000,
                )
                results[name].append(result)
                print(
                    f"# {workload} round {round_index + 1}: {name:<52} {result.rate:7.0f} msg/s "
                    f"receives/msg {result.receives_per_msg:.3f}",
                    file=sys.stderr,
                    flush=True,
                )
        parts += ["", f"### {workload}", "", _table(results, spec["ideal"])]
    return "\n".join(parts)


def _table(results: dict[str, list[Result]], ideal: float | None) -> str:
    first_name = next(iter(results))
    bare_rate = statistics.median(r.rate for r in results[first_name])
    limit = min(ideal, bare_rate) if ideal else bare_rate
    rows = []
    for name, runs in results.items():
        rate = statistics.median(r.rate for r in runs)
        rows.append(
            [
                name,
                f"{rate:,.0f}",
                " / ".join(f"{r.rate:,.0f}" for r in runs),
                f"{rate / limit:.2f}x",
                f"{statistics.median(r.receives_per_msg for r in runs):.3f}",
                f"{statistics.median(r.deletes_per_msg for r in runs):.3f}",
                str(max(r.most_running for r in runs)),
                f"{statistics.median(r.cpu_us for r in runs):.0f}",
            ]
        )
    versus = "min(C/t, bare)" if ideal else "bare"
    return table(
        [
            "contender",
            "median msg/s",
            "rounds",
            f"vs {versus}",
            "receives/msg",
            "deletes/msg",
            "most handlers at once",
            "CPU µs/msg",
        ],
        rows,
    )


def main() -> int:
    """Parse, run, print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--receive-ms", type=float, default=10.0)
    parser.add_argument("--delete-ms", type=float, default=10.0)
    args = parser.parse_args()
    print(asyncio.run(measure(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
