"""Shared helpers of the benchmarks: LocalStack, machine facts, memory, result plumbing.

Every benchmark is a script with a `measure(endpoint_url) -> Section` coroutine function and a
`main()` that runs it alone (`python bench/bench_throughput.py`), printing Markdown. `run_all.py`
runs each one in its own process (so one benchmark's heap does not skew another's memory figures),
against one shared LocalStack whose endpoint it passes in `QWORKER_BENCH_ENDPOINT`, collects the
sections as JSON and writes `bench/RESULTS.md`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from qworker import localstack as qworker_localstack
from qworker.local import create_queue_with_dlq
from qworker.producer import send_bodies
from qworker.settings import QWorkerSettings
from qworker.transport import (
    BatchFailure,
    Message,
    QueueAttributes,
    QueueTransport,
    SendEntry,
    SqsTransport,
)
from qworker.worker import open_sqs_client

ROOT: Final = Path(__file__).resolve().parent.parent
ENDPOINT_ENV: Final = "QWORKER_BENCH_ENDPOINT"
"""Set by `run_all.py`: the LocalStack every benchmark process shares."""
PID_ENV: Final = "QWORKER_BENCH_LOCALSTACK_PID"
"""Set by `run_all.py`: that LocalStack's process id (for its CPU time)."""

SENDERS: Final = 16
"""Concurrent SendMessageBatch loops when filling a queue."""


@dataclass(slots=True)
class Section:
    """One benchmark's results: a Markdown section, and its numbers for machines."""

    title: str
    markdown: str
    data: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        """Serialise."""
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> Section:
        """Deserialise."""
        raw = json.loads(text)
        return cls(title=str(raw["title"]), markdown=str(raw["markdown"]), data=dict(raw["data"]))


# -- LocalStack ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Server:
    """A running LocalStack: where to reach it, and its process (for its CPU time)."""

    endpoint_url: str
    pid: int | None

    def cpu_s(self) -> float | None:
        """The server process's CPU time so far (user + system), or None if unknown."""
        if self.pid is None:
            return None
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            return None
        # Fields 14-17 of proc(5) (utime, stime, cutime, cstime), here at index 11-14.
        ticks = sum(int(x) for x in fields[11:15])
        return ticks / os.sysconf("SC_CLK_TCK")


def start_localstack() -> tuple[Server, Callable[[], None]]:
    """Install (if needed) and start LocalStack on 127.0.0.1; return it and its `stop`.

    It runs with `SQS_DISABLE_CLOUDWATCH_METRICS=1` (about three times the SQS
    throughput) and is stopped by its PID.
    """
    began = time.monotonic()
    qworker_localstack.install()
    server = qworker_localstack.start(fast=True)
    print(
        f"# LocalStack pid {server.pid} at {server.endpoint_url} "
        f"(ready in {time.monotonic() - began:.1f} s)",
        file=sys.stderr,
    )
    return Server(str(server.endpoint_url), int(server.pid)), server.stop


@contextlib.contextmanager
def localstack() -> Iterator[Server]:
    """Yield a LocalStack: the shared one `run_all.py` names, or one started (and stopped) here."""
    given = os.environ.get(ENDPOINT_ENV)
    if given:
        pid = os.environ.get(PID_ENV)
        yield Server(given, int(pid) if pid else None)
        return
    server, stop = start_localstack()
    try:
        yield server
    finally:
        stop()


def sqs_settings(endpoint_url: str, *, pollers: int, wait_time_s: int = 20) -> QWorkerSettings:
    """Settings for `open_sqs_client` (its connection pool is sized from `pollers`)."""
    return QWorkerSettings(
        endpoint_url=endpoint_url, region="us-east-1", pollers=pollers, wait_time_s=wait_time_s
    )


@contextlib.asynccontextmanager
async def sqs_client(endpoint_url: str, *, pollers: int) -> AsyncIterator[Any]:
    """The worker's own aiobotocore client, as `qworker run` opens it."""
    async with open_sqs_client(sqs_settings(endpoint_url, pollers=pollers), local=True) as client:
        yield client


async def fresh_queue(client: Any, prefix: str) -> SqsTransport:  # noqa: ANN401 (aiobotocore)
    """Create a new queue (with its DLQ) and bind a transport to it."""
    url = await create_queue_with_dlq(client, f"bench-{prefix}-{uuid.uuid4().hex[:8]}")
    return SqsTransport(client, url)


def bodies(count: int) -> list[str]:
    """Small JSON bodies, as a trivial handler takes them."""
    return [json.dumps({"n": n, "pad": "x" * 64}) for n in range(count)]


async def fill(transport: SqsTransport, count: int) -> float:
    """Send `count` messages with `SENDERS` concurrent batch loops; return the seconds it took."""
    began = time.perf_counter()
    all_bodies = bodies(count)
    share = -(-count // SENDERS)
    await asyncio.gather(
        *(send_bodies(transport, all_bodies[k : k + share]) for k in range(0, count, share))
    )
    return time.perf_counter() - began


async def delete_queue(transport: SqsTransport) -> None:
    """Delete a benchmark queue and its DLQ (best effort)."""
    client: Any = transport._client  # noqa: SLF001 (the transport's own client)
    for url in (transport.queue_url, f"{transport.queue_url}-dlq"):
        with contextlib.suppress(Exception):
            await client.delete_queue(QueueUrl=url)


class CountingTransport:
    """A `QueueTransport` that counts the calls it passes on to an inner one (e.g. SqsTransport)."""

    def __init__(self, inner: QueueTransport) -> None:
        """Wrap `inner`."""
        self.inner = inner
        self.calls: Counter[str] = Counter()
        self.received = 0
        self.empty_receives = 0

    @property
    def queue_name(self) -> str:
        """The queue's name."""
        return self.inner.queue_name

    async def receive(
        self, max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        """Count, then receive."""
        self.calls["receive"] += 1
        found = await self.inner.receive(
            max_messages, wait_time_s=wait_time_s, visibility_timeout_s=visibility_timeout_s
        )
        self.received += len(found)
        self.empty_receives += not found
        return found

    async def delete_batch(self, receipt_handles: Sequence[str]) -> list[BatchFailure]:
        """Count, then delete."""
        self.calls["delete_batch"] += 1
        return await self.inner.delete_batch(receipt_handles)

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """Count, then change one visibility."""
        self.calls["change_visibility"] += 1
        await self.inner.change_visibility(receipt_handle, timeout_s)

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        """Count, then change visibilities."""
        self.calls["change_visibility_batch"] += 1
        return await self.inner.change_visibility_batch(entries)

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        """Count, then send."""
        self.calls["send_batch"] += 1
        return await self.inner.send_batch(entries)

    async def get_attributes(self) -> QueueAttributes:
        """Count, then describe."""
        self.calls["get_attributes"] += 1
        return await self.inner.get_attributes()


CONSUME_OPERATIONS: Final = (
    "receive",
    "delete_batch",
    "change_visibility",
    "change_visibility_batch",
)
"""The calls that consuming costs (sending is the producer's)."""


# -- machine and memory ---------------------------------------------------------------------------


def _proc_field(path: str, key: str) -> str | None:
    with contextlib.suppress(OSError), Path(path).open() as file:
        for line in file:
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    return None


def machine() -> dict[str, str]:
    """The facts RESULTS.md records about where it ran."""
    memory_kb = int((_proc_field("/proc/meminfo", "MemTotal") or "0 kB").split()[0])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "memory": f"{memory_kb / 1024 / 1024:.1f} GiB",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "load": load,
    }


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has spent so far (all CPUs, idle excluded)."""
    try:
        first = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return 0.0
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def memory_kb() -> tuple[int, int]:
    """This process's resident set now and its peak (VmRSS, VmHWM), in KiB."""
    rss = int((_proc_field("/proc/self/status", "VmRSS") or "0 kB").split()[0])
    hwm = int((_proc_field("/proc/self/status", "VmHWM") or "0 kB").split()[0])
    return rss, hwm


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+: write 5 to clear_refs); return whether it did."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def pin_to_one_core() -> int | None:
    """Run this process on one CPU (the last one it may use); return it, or None if not possible."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpus[-1]})
    except (AttributeError, OSError):
        return None
    return cpus[-1]


# -- statistics and formatting --------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median (0 for none)."""
    return statistics.median(values) if values else 0.0


def fmt(value: float, digits: int = 0) -> str:
    """A number with thousands separators."""
    return f"{value:,.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# -- running one benchmark ------------------------------------------------------------------------


def main(
    measure: Callable[[Server | None], Coroutine[Any, Any, Section]],
    *,
    needs_localstack: bool,
    doc: str | None,
) -> int:
    """Run one benchmark: print its Markdown, or write its JSON where `--json` says."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the section as JSON here (run_all.py)")
    parser.add_argument(
        "--no-localstack", action="store_true", help="skip the parts that need LocalStack"
    )
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        endpoint = (
            stack.enter_context(localstack())
            if needs_localstack and not args.no_localstack
            else None
        )
        section = asyncio.run(measure(endpoint))
    if args.json is not None:
        args.json.write_text(section.to_json())
    else:
        print(f"## {section.title}\n\n{section.markdown}")
    return 0
