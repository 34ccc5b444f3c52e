"""Profile qworker's consumer (cProfile): where a message's time goes, vs a bare loop.

- `python bench/profile_consumer.py [--messages N] [--top K] [--tracing]`: drain the in-memory
  fake (the hot path without network) with qworker and with a bare loop, print own time and calls
  per message by package side by side, then qworker's functions with the most own time, then
  qworker's own functions by cumulative time. `--tracing` adds the `TracingMiddleware` at sample
  ratio 1.0 (a batch span processor whose exporter drops the spans).
- `python bench/profile_consumer.py --localstack [--messages N] [--tracing]`: drain LocalStack
  with qworker (8 pollers, concurrency 160) and with the bare aiobotocore loop (8 pollers), each
  under the profiler, and print own time and calls per message by package side by side (qworker,
  aiobotocore/botocore, aiohttp, asyncio, opentelemetry, ...): where qworker's extra client CPU
  goes. It starts its own LocalStack unless `QWORKER_BENCH_ENDPOINT` names one.

cProfile inflates the cost of calls (it charges each one), so read the shares and the differences,
not the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import pstats
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, Final, Self

from bench_overhead import fake_alone, filled, qworker_run
from bench_throughput import (
    CONCURRENCY,
    POLLERS,
    BareDrain,
    handle,
    tracing_middleware,
)
from benchlib import delete_queue, fill, fresh_queue, localstack, sqs_client, table

from qworker.dispatch import Middleware
from qworker.testing import consumer_for

PACKAGES: Final = (
    ("/qworker/testing.py", "the fake transport"),
    ("/qworker/", "qworker"),
    ("/aiobotocore/", "aiobotocore"),
    ("/botocore/", "botocore"),
    ("/aiohttp/", "aiohttp"),
    ("/yarl/", "aiohttp"),
    ("/multidict/", "aiohttp"),
    ("/opentelemetry/", "opentelemetry"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/logging/", "logging"),
)


def package(filename: str) -> str:
    """The group a profiled function belongs to."""
    if filename == "~":
        return "builtins (C)"
    for marker, name in PACKAGES:
        if marker in filename:
            return name
    if "/bench/" in filename:
        return "the benchmark"
    if "site-packages" in filename:
        return "other libraries"
    return "other stdlib"


def by_package(stats: pstats.Stats) -> tuple[Counter[str], Counter[str]]:
    """Own time (s) and primitive calls per package."""
    seconds: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for (filename, _, _), (primitive, _, own, _, _) in raw.items():
        group = package(filename)
        seconds[group] += own
        calls[group] += primitive
    return seconds, calls


class GcMeter:
    """Counts the garbage collector's runs (by generation) and the time they take."""

    def __init__(self) -> None:
        """Not yet counting: use it as a context manager."""
        self.collections: Counter[int] = Counter()
        self.seconds = 0.0
        self._began = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        # CPU time of this thread (the event loop's), not wall time: other load must not count.
        if phase == "start":
            self._began = time.thread_time()
        else:
            self.seconds += time.thread_time() - self._began
            self.collections[info["generation"]] += 1

    def __enter__(self) -> Self:
        """Start counting."""
        gc.collect()
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop counting."""
        gc.callbacks.remove(self._callback)


CPU_CONTENDERS: Final = (
    "qworker",
    "bare aiobotocore",
    "qworker + tracing 1.0",
    "qworker, prototype: gc.freeze() first",
    "qworker, prototype: gen-0 threshold 10,000",
)
"""The prototypes change only the garbage collector's settings, around that one run."""


@contextlib.contextmanager
def gc_variant(name: str) -> Iterator[None]:
    """PROTOTYPE garbage-collector settings for one run (restored after it)."""
    threshold = gc.get_threshold()
    if "freeze" in name:
        gc.collect()
        gc.freeze()  # what exists now (modules, botocore's models, the client) is never scanned
    if "threshold" in name:
        gc.set_threshold(10_000, threshold[1], threshold[2])
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*threshold)


async def metered(work: Callable[[], Awaitable[int]]) -> tuple[float, GcMeter, int]:
    """Run `work` unprofiled; return its CPU seconds, the GC meter and the messages handled."""
    with GcMeter() as meter:
        began = time.process_time()
        handled = await work()
        spent = time.process_time() - began
    return spent, meter, handled


async def cpu_rounds(
    endpoint: str, messages: int, rounds: int, traced: Callable[[str], Sequence[Middleware]]
) -> str:
    """Interleaved unprofiled drains on LocalStack: CPU and GC per message, qworker vs bare."""
    found: dict[str, list[tuple[float, GcMeter, int]]] = {name: [] for name in CPU_CONTENDERS}
    async with sqs_client(endpoint, pollers=POLLERS) as client:
        for index in range(rounds + 1):  # the first round warms up
            shift = index % len(found)
            for name in [*CPU_CONTENDERS[shift:], *CPU_CONTENDERS[:shift]]:
                transport = await fresh_queue(client, "cpu")
                await fill(transport, messages)
                if name == "bare aiobotocore":
                    outcome = await metered(BareDrain(client, transport.queue_url, messages).work)
                else:
                    consumer = consumer_for(
                        transport,
                        handle,
                        pollers=POLLERS,
                        concurrency=CONCURRENCY,
                        middleware=traced(transport.queue_name) if "tracing" in name else (),
                    )

                    async def drain(consumer: Any = consumer) -> int:  # noqa: ANN401
                        await consumer.run_until_empty()
                        return int(consumer.statistics().acked)

                    with gc_variant(name):
                        outcome = await metered(drain)
                await delete_queue(transport)
                if index:
                    found[name].append(outcome)
    rows = []
    for name, runs in found.items():
        cpu = statistics.median(spent / n * 1e6 for spent, _, n in runs)
        gc_us = statistics.median(meter.seconds / n * 1e6 for _, meter, n in runs)
        per_k = [
            statistics.median(meter.collections[g] / n * 1000 for _, meter, n in runs)
            for g in range(3)
        ]
        rows.append([name, f"{cpu:.0f}", f"{gc_us:.1f}", " / ".join(f"{c:.1f}" for c in per_k)])
    return (
        f"# LocalStack drain, unprofiled, {messages} messages, {rounds} interleaved rounds, "
        f"{POLLERS} pollers each\n"
        + table(
            [
                "contender",
                "client CPU µs/msg (median)",
                "of which GC µs/msg",
                "GC runs per 1,000 msgs (gen 0 / 1 / 2)",
            ],
            rows,
        )
    )


async def profiled(work: Callable[[], Awaitable[int]]) -> tuple[pstats.Stats, int]:
    """Run `work` under the profiler; return the stats and how many messages it handled."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        handled = await work()
    finally:
        profiler.disable()
    return pstats.Stats(profiler), handled


async def profile_fake(
    messages: int, middleware: Sequence[Middleware]
) -> dict[str, tuple[pstats.Stats, int]]:
    """Warm up, then drain `messages` messages of the fake under the profiler: qworker, then the
    fake alone (one receive/handle/delete loop, no framework)."""
    run = qworker_run(middleware)
    await run(await filled(500))
    queue = await filled(messages)
    results = {"qworker": await profiled(lambda: run(queue))}
    alone = await filled(messages)
    results["fake alone"] = await profiled(lambda: fake_alone(alone))
    return results


async def profile_localstack(
    endpoint: str, messages: int, middleware: Callable[[str], Sequence[Middleware]] | None
) -> dict[str, tuple[pstats.Stats, int]]:
    """Drain LocalStack with qworker and with the bare loop, each under the profiler."""
    results: dict[str, tuple[pstats.Stats, int]] = {}
    async with sqs_client(endpoint, pollers=POLLERS) as client:
        for warm in (True, False):
            count = 500 if warm else messages
            transport = await fresh_queue(client, "profile-qworker")
            await fill(transport, count)
            consumer = consumer_for(
                transport,
                handle,
                pollers=POLLERS,
                concurrency=CONCURRENCY,
                middleware=middleware(transport.queue_name) if middleware else (),
            )

            async def drain(consumer: Any = consumer) -> int:  # noqa: ANN401
                await consumer.run_until_empty()
                return int(consumer.statistics().acked)

            outcome = await profiled(drain)
            await delete_queue(transport)
            if not warm:
                results["qworker"] = outcome
            transport = await fresh_queue(client, "profile-bare")
            await fill(transport, count)
            bare = BareDrain(client, transport.queue_url, count)
            outcome = await profiled(bare.work)
            await delete_queue(transport)
            if not warm:
                results["bare aiobotocore"] = outcome
    return results


def compare(results: dict[str, tuple[pstats.Stats, int]]) -> str:
    """Own µs and calls per message by package, side by side, and the difference."""
    grouped = {name: (by_package(stats), handled) for name, (stats, handled) in results.items()}
    names = list(grouped)
    groups = sorted(
        {g for (seconds, _), _ in grouped.values() for g in seconds},
        key=lambda g: -max(s[g] / n for (s, _), n in grouped.values()),
    )
    rows = []
    for group in [*groups, "total"]:
        row = [group]
        per: list[float] = []
        for name in names:
            (seconds, calls), handled = grouped[name]
            own = (sum(seconds.values()) if group == "total" else seconds[group]) / handled * 1e6
            count = (sum(calls.values()) if group == "total" else calls[group]) / handled
            per.append(own)
            row += [f"{own:.1f}", f"{count:.1f}"]
        row.append(f"{per[0] - per[-1]:+.1f}")
        rows.append(row)
    header = ["package"]
    for name in names:
        header += [f"{name}: own µs/msg", f"{name}: calls/msg"]
    header.append(f"{names[0]} - {names[-1]} (µs/msg)")
    return table(header, rows)


def main() -> int:
    """Profile and print."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--tracing", action="store_true", help="trace every message (ratio 1.0)")
    parser.add_argument("--localstack", action="store_true", help="qworker vs bare on LocalStack")
    parser.add_argument(
        "--cpu-rounds",
        type=int,
        default=0,
        help=(
            "with --localstack: first N interleaved unprofiled rounds (CPU and GC per message); "
            "with --top 0, only those"
        ),
    )
    args = parser.parse_args()
    make, shutdown = tracing_middleware() if args.tracing else (None, None)
    try:
        if args.localstack:
            with localstack() as server:
                if args.cpu_rounds:
                    tracing, stop_tracing = tracing_middleware()
                    text = asyncio.run(
                        cpu_rounds(server.endpoint_url, args.messages, args.cpu_rounds, tracing)
                    )
                    stop_tracing()
                    print(text, flush=True)
                    if args.top == 0:
                        return 0
                results = asyncio.run(profile_localstack(server.endpoint_url, args.messages, make))
            print(f"# LocalStack drain, {args.messages} messages, {POLLERS} pollers each")
            print(compare(results))
            stats = results["qworker"][0]
        else:
            middleware = make("bench") if make else ()
            results = asyncio.run(profile_fake(args.messages, middleware))
            print(f"# in-memory fake drain, {args.messages} messages")
            print(compare(results))
            stats = results["qworker"][0]
        print(f"\n# {args.messages} messages; own time")
        stats.sort_stats("tottime").print_stats(args.top)
        print("# qworker's functions, cumulative")
        stats.sort_stats("cumulative").print_stats(r"qworker[/\\]", args.top)
    finally:
        if shutdown is not None:
            with contextlib.suppress(Exception):
                shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
