"""Peak memory while 1,000 messages are in flight.

A consumer with `concurrency=1000` drains a queue of 1,000 small JSON messages; every handler
blocks on an event until all 1,000 are held (received, running, heartbeat-tracked), then they are
released and settled. The process's VmRSS and VmHWM (`/proc/self/status`) are read before the
consumer starts (after a small warm-up run, with VmHWM reset through `/proc/self/clear_refs`)
and when the 1,000th handler starts; the delta per in-flight message is reported. A second pass
under `tracemalloc` gives the Python heap per in-flight message, which RSS (page-granular,
allocator-retained) only approximates.

On the in-memory fake, and on LocalStack over the real aiobotocore transport.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import tracemalloc
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

from benchlib import (
    Section,
    Server,
    bodies,
    delete_queue,
    fill,
    fmt,
    fresh_queue,
    main,
    memory_kb,
    reset_peak_rss,
    sqs_client,
    table,
)

from qworker.testing import FakeSqs, consumer_for
from qworker.transport import QueueTransport, SendEntry

IN_FLIGHT: Final = 1000
WARMUP: Final = 50
POLLERS: Final = 8
BODY_BYTES: Final = len(bodies(1)[0])


@dataclass(slots=True)
class Peak:
    """Memory at the peak of one run, relative to just before it."""

    rss_before_kb: int
    rss_peak_kb: int
    hwm_peak_kb: int
    hwm_was_reset: bool
    python_heap_bytes: int | None = None

    @property
    def rss_delta_kb(self) -> int:
        """VmRSS at the peak minus VmRSS before."""
        return self.rss_peak_kb - self.rss_before_kb

    @property
    def hwm_delta_kb(self) -> int:
        """VmHWM at the peak minus VmRSS before (the high-water mark includes transients)."""
        return self.hwm_peak_kb - self.rss_before_kb


async def hold(transport: QueueTransport, count: int, *, traced: bool = False) -> Peak:
    """Drain `count` messages with every handler blocked until all `count` are held."""
    held = 0
    all_held = asyncio.Event()
    release = asyncio.Event()

    async def handle(body: str) -> None:
        nonlocal held
        del body
        held += 1
        if held >= count:
            all_held.set()
        await release.wait()

    consumer = consumer_for(transport, handle, concurrency=count, pollers=POLLERS)
    gc.collect()
    if traced:
        tracemalloc.start()
    reset = reset_peak_rss()
    rss_before, _ = memory_kb()
    run = asyncio.create_task(consumer.run_until_empty())
    await all_held.wait()
    rss_peak, hwm_peak = memory_kb()
    heap = tracemalloc.get_traced_memory()[0] if traced else None
    if traced:
        tracemalloc.stop()
    if consumer.statistics().in_flight != count:
        raise RuntimeError(f"{consumer.statistics().in_flight} in flight, not {count}")
    release.set()
    await run
    if consumer.statistics().acked != count:
        raise RuntimeError(f"acked {consumer.statistics().acked} of {count}")
    return Peak(rss_before, rss_peak, hwm_peak, reset, heap)


async def fake_queue(count: int) -> QueueTransport:
    """An in-memory queue holding `count` messages."""
    queue = FakeSqs().create_queue("bench", dead_letter="bench-dlq")
    all_bodies = bodies(count)
    for start in range(0, count, 10):
        await queue.send_batch([SendEntry(b) for b in all_bodies[start : start + 10]])
    return queue


QueueMaker = Callable[[int], AbstractAsyncContextManager[QueueTransport]]


@asynccontextmanager
async def on_fake(count: int) -> AsyncIterator[QueueTransport]:
    """A filled in-memory queue."""
    yield await fake_queue(count)


def on_localstack(client: Any) -> QueueMaker:  # noqa: ANN401 (aiobotocore)
    """Filled LocalStack queues, deleted afterwards."""

    @asynccontextmanager
    async def make(count: int) -> AsyncIterator[QueueTransport]:
        transport = await fresh_queue(client, "memory")
        await fill(transport, count)
        try:
            yield transport
        finally:
            await delete_queue(transport)

    return make


async def measure_on(make: QueueMaker) -> tuple[Peak, Peak]:
    """Warm up, then one RSS run and one tracemalloc run of `IN_FLIGHT` messages."""
    async with make(WARMUP) as queue:
        await hold(queue, WARMUP)
    async with make(IN_FLIGHT) as queue:
        rss = await hold(queue, IN_FLIGHT)
    async with make(IN_FLIGHT) as queue:
        traced = await hold(queue, IN_FLIGHT, traced=True)
    return rss, traced


async def measure(server: Server | None) -> Section:
    """Measure on the fake, then on LocalStack if there is one."""
    results: dict[str, tuple[Peak, Peak]] = {}
    results["in-memory fake"] = await measure_on(on_fake)
    if server is not None:
        async with sqs_client(server.endpoint_url, pollers=POLLERS) as client:
            results["LocalStack (aiobotocore)"] = await measure_on(on_localstack(client))
    for name, (rss, traced) in results.items():
        print(
            f"# {name}: RSS {rss.rss_before_kb} -> {rss.rss_peak_kb} kB (HWM {rss.hwm_peak_kb}), "
            f"heap {traced.python_heap_bytes}",
            file=sys.stderr,
        )
    return _summarise(results)


def _summarise(results: dict[str, tuple[Peak, Peak]]) -> Section:
    rows = []
    data: dict[str, Any] = {"in_flight": IN_FLIGHT, "body_bytes": BODY_BYTES, "pollers": POLLERS}
    for name, (rss, traced) in results.items():
        heap = traced.python_heap_bytes or 0
        rows.append(
            [
                name,
                fmt(rss.rss_before_kb / 1024, 1),
                fmt(rss.rss_peak_kb / 1024, 1),
                fmt(rss.hwm_peak_kb / 1024, 1),
                fmt(rss.rss_delta_kb * 1024 / IN_FLIGHT / 1024, 2),
                fmt(rss.hwm_delta_kb * 1024 / IN_FLIGHT / 1024, 2),
                fmt(heap / IN_FLIGHT / 1024, 2),
            ]
        )
        data[name] = {
            "rss_before_kb": rss.rss_before_kb,
            "rss_peak_kb": rss.rss_peak_kb,
            "hwm_peak_kb": rss.hwm_peak_kb,
            "hwm_was_reset": rss.hwm_was_reset,
            "rss_delta_kb_per_msg": rss.rss_delta_kb / IN_FLIGHT,
            "hwm_delta_kb_per_msg": rss.hwm_delta_kb / IN_FLIGHT,
            "python_heap_kb_per_msg": heap / IN_FLIGHT / 1024,
        }
    reset = all(rss.hwm_was_reset for rss, _ in results.values())
    markdown = (
        f"{IN_FLIGHT:,} messages held at once (`concurrency={IN_FLIGHT}`, {POLLERS} pollers), "
        f"bodies of {BODY_BYTES} bytes, handlers blocked on an event until all are held. "
        + (
            "VmHWM was reset just before each run, so the peak column is that run's own."
            if reset
            else "VmHWM could not be reset: the peak column is the process's whole life."
        )
        + "\n\n"
        + table(
            [
                "transport",
                "VmRSS before (MiB)",
                "VmRSS at peak (MiB)",
                "VmHWM (MiB)",
                "Δ VmRSS per message (KiB)",
                "Δ VmHWM per message (KiB)",
                "Python heap per message (KiB, tracemalloc)",
            ],
            rows,
        )
    )
    return Section(f"Memory with {IN_FLIGHT:,} messages in flight", markdown, data)


if __name__ == "__main__":
    raise SystemExit(main(measure, needs_localstack=True, doc=__doc__))
