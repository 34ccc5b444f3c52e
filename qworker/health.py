"""Health: is the worker alive (its poll loops make progress) and ready (consuming, not draining)?

`HealthMonitor` looks at the watched consumers' counters. A poll loop makes progress when a receive
completes (a message, or an empty long poll); a failed receive is not progress, so a worker cut off
from its server turns unhealthy once no receive completed for `wait_time_s` plus a margin, however
often it retries. A consumer whose every slot is busy is waiting on its handlers, not stalled. A
worker that has not reached its server (queues not resolved) within the same allowance after start
is not live either: a mistyped endpoint does not look healthy. `ready` means started, not stopping
and not quarantined.

`LoopLagWatch` watches the event loop from a thread: when the loop is blocked (a sync call inside an
async handler) for longer than `health_loop_lag_s`, it logs a warning naming the handler, the
message and where the loop is stuck (`event_loop_blocked`), reports the worker not live, and writes
the health file itself, since the loop that normally writes it cannot.

The worker writes the report to a small JSON file every few seconds, one file per worker process
(by default `<temp dir>/qworker-health/<role>-<pid>.json`). `qworker health` reads it (without a
file named, every running worker's file in that directory) and exits 0 (healthy) or 1 (unhealthy),
which makes it the ECS container health check command. A file that stopped changing is stale, and
so unhealthy too: whatever stopped the writer stopped the worker. Optionally the same report is
served over HTTP on 127.0.0.1 (`/health`, `/ready`). The file's format and the command live in
`qworker.health_file`, which imports only the standard library, so a probe stays cheap; they are
re-exported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import sysconfig
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Final, final

from qworker.consumer import Consumer, ConsumerStatistics
from qworker.health_file import (
    EXIT_HEALTHY,
    EXIT_UNHEALTHY,
    STALE_INTERVALS,
    HealthReport,
    default_health_dir,
    default_health_file,
    evaluate,
    read_report,
    register,
    running_workers_files,
    write_report,
)

__all__ = [
    "EXIT_HEALTHY",
    "EXIT_UNHEALTHY",
    "STALE_INTERVALS",
    "HealthMonitor",
    "HealthReport",
    "LoopLagWatch",
    "default_health_dir",
    "default_health_file",
    "evaluate",
    "read_report",
    "register",
    "running_workers_files",
    "serve_http",
    "write_report",
]

HTTP_READ_TIMEOUT_S: Final = 5.0


log = logging.getLogger(__name__)


@final
@dataclass(slots=True)
class _Progress:
    marker: tuple[int, ...]
    at: float


@final
class HealthMonitor:
    """Watches consumers and tells whether the worker is live and ready."""

    def __init__(
        self,
        *,
        wait_time_s: float,
        stall_margin_s: float = 30.0,
        stale_after_s: float = 30.0,
        quarantined: Callable[[], bool] | None = None,
        startup_allowance_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Create a monitor; `watch()` what it monitors.

        Args:
            wait_time_s: The consumers' long-poll wait.
            stall_margin_s: Allowed on top of `wait_time_s` before a loop counts as stalled.
            stale_after_s: Written into reports, for readers.
            quarantined: Tells whether the worker quarantined itself.
            startup_allowance_s: How long the worker may take to reach its server (default: as
                long as a poll loop may go without progress).
            clock: Monotonic seconds.
            wall_clock: Epoch seconds, for report times.
        """
        self.stall_after_s = wait_time_s + stall_margin_s
        self.startup_allowance_s = (
            self.stall_after_s if startup_allowance_s is None else startup_allowance_s
        )
        self.blocked: str | None = None
        """Set by `LoopLagWatch` while the event loop is blocked: what blocks it."""
        self.stale_after_s = stale_after_s
        self._quarantined = quarantined or (lambda: False)
        self._clock = clock
        self._wall_clock = wall_clock
        self._consumers: Callable[[], Sequence[Consumer]] = list
        self._ready: Callable[[], bool] = lambda: False
        self._stopping: Callable[[], bool] = lambda: False
        self._progress: dict[int, _Progress] = {}
        self._created_at = clock()

    def consumers(self) -> Sequence[Consumer]:
        """The consumers watched now."""
        return self._consumers()

    def watch(
        self,
        consumers: Callable[[], Sequence[Consumer]],
        *,
        ready: Callable[[], bool],
        stopping: Callable[[], bool],
    ) -> None:
        """Watch the consumers `consumers()` returns (a worker creates them once it started).

        Args:
            consumers: The consumers now.
            ready: Whether the worker finished starting.
            stopping: Whether the worker is stopping.
        """
        self._consumers, self._ready, self._stopping = consumers, ready, stopping

    def check(self) -> HealthReport:
        """Look at the consumers now."""
        now = self._clock()
        stopping = self._stopping()
        problems: list[str] = []
        queues: dict[str, dict[str, float]] = {}
        for consumer in self._consumers():
            stats = consumer.statistics()
            idle_s = self._idle_s(consumer, stats, now)
            name = consumer.transport.queue_name
            queues[name] = {
                "received": stats.received,
                "in_flight": stats.in_flight,
                "receives": stats.receives,
                "receive_errors": stats.receive_errors,
                "idle_s": round(idle_s, 3),
            }
            if not stopping and idle_s > self.stall_after_s:
                problems.append(
                    f"poll loop of {name} completed no receive for {idle_s:.0f} s "
                    f"({stats.receive_errors} receive errors so far)"
                )
        started_s = now - self._created_at
        if not self._ready() and not stopping and started_s > self.startup_allowance_s:
            problems.append(
                f"has not reached the queue server in {started_s:.0f} s since start "
                f"(allowance {self.startup_allowance_s:g} s)"
            )
        if self.blocked is not None:
            problems.append(self.blocked)
        live = not problems
        quarantined = self._quarantined()
        if quarantined:
            problems.append("canary quarantined itself: polling stopped")
        ready = self._ready() and not stopping and not quarantined
        if not self._ready():
            problems.append("starting: queues not resolved yet")
        elif stopping:
            problems.append("stopping: draining in-flight messages")
        return HealthReport(
            self._wall_clock(),
            live,
            ready,
            quarantined,
            tuple(problems),
            self.stale_after_s,
            queues,
        )

    def _idle_s(self, consumer: Consumer, stats: ConsumerStatistics, now: float) -> float:
        # Only a completed receive is progress: failed receives and their backoff are not.
        marker = (stats.receives,)
        seen = self._progress.get(id(consumer))
        if seen is None or seen.marker != marker or stats.in_flight >= consumer.concurrency:
            seen = self._progress[id(consumer)] = _Progress(marker, now)
        return now - seen.at


@final
class LoopLagWatch:
    """Notices, from a thread, an event loop blocked for longer than `threshold_s`.

    A task on the loop stamps the time every `tick_s`; a thread looks at the stamp. When it is
    older than `threshold_s` (beyond the tick), the loop is blocked: the thread logs
    `event_loop_blocked` at WARNING, naming the running task's handler and message and the line
    the loop is stuck on, sets `HealthMonitor.blocked` (the worker is not live) and calls
    `on_blocked` (which writes the health file) every tick while the block lasts. When the loop runs
    again, `event_loop_unblocked` says for how long it was blocked.
    """

    def __init__(
        self,
        monitor: HealthMonitor,
        *,
        threshold_s: float,
        on_blocked: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Watch the loop that will `run()` this.

        Args:
            monitor: Gets the block (`blocked`) and names handlers from its consumers.
            threshold_s: A block longer than this is reported.
            on_blocked: Called from the thread while the loop is blocked.
            clock: Monotonic seconds (shared by the thread and the loop).
        """
        self.monitor = monitor
        self.threshold_s = threshold_s
        self.tick_s = min(threshold_s / 4, 1.0)
        self._on_blocked = on_blocked
        self._clock = clock
        self._stamp = clock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.get_ident()
        self._blocked_since: float | None = None
        self.blocks = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Stamp the time on the loop until `stop` is set, while the thread watches."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stamp = self._clock()
        ended = threading.Event()
        thread = threading.Thread(
            target=self._watch, args=(ended,), name="qworker-loop-lag", daemon=True
        )
        thread.start()
        try:
            while not stop.is_set():
                self._stamp = self._clock()
                self._recovered()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.tick_s):
                        await stop.wait()
        finally:
            ended.set()

    def _recovered(self) -> None:
        since = self._blocked_since
        if since is None:
            return
        self._blocked_since = None
        self.monitor.blocked = None
        log.warning(
            "event loop ran again after being blocked",
            extra={"action": "event_loop_unblocked", "blocked_s": round(self._stamp - since, 3)},
        )

    def _watch(self, ended: threading.Event) -> None:
        while not ended.wait(self.tick_s):
            stamp = self._stamp
            blocked_s = self._clock() - stamp - self.tick_s
            if blocked_s <= self.threshold_s:
                continue
            first = self._blocked_since is None
            if first:
                self._blocked_since = stamp
                self.blocks += 1
            handler, message_id, where = self.culprit()
            self.monitor.blocked = (
                f"event loop blocked for {blocked_s:.1f} s by handler {handler or '?'} "
                f"(message {message_id or '?'}) at {where}"
            )
            if first:
                log.warning(
                    "event loop blocked for %.1f s by handler %s",
                    blocked_s,
                    handler or "?",
                    extra={
                        "action": "event_loop_blocked",
                        "handler": handler,
                        "message_id": message_id,
                        "where": where,
                        "blocked_s": round(blocked_s, 3),
                        "threshold_s": self.threshold_s,
                    },
                )
            if self._on_blocked is not None:
                self._on_blocked()

    def culprit(self) -> tuple[str | None, str | None, str]:
        """The running task's handler and message, and the line the loop thread is on.

        Read from the watching thread while the loop is stuck, so everything is looked up once.
        """
        task = asyncio.current_task(self._loop) if self._loop is not None else None
        handler: str | None = None
        message_id: str | None = None
        name = task.get_name() if task is not None else ""
        if name.startswith("handle ") and name.endswith("]") and "[" in name:
            queue, _, inner = name.removeprefix("handle ").partition("[")
            inner = inner.removesuffix("]")
            for consumer in list(self.monitor.consumers()):
                if consumer.transport.queue_name == queue:
                    handler = consumer.dispatcher.spec.name
                    message_id = _running_message(consumer, inner)
        frame = sys._current_frames().get(self._loop_thread)  # noqa: SLF001 (the only way to see it)
        return handler, message_id, _where(frame)


_STDLIB: Final = sysconfig.get_paths()["stdlib"]


def _in_stdlib(filename: str) -> bool:
    return filename.startswith(_STDLIB) and "site-packages" not in filename


def _where(frame: FrameType | None) -> str:
    """The innermost line outside the standard library (a handler's), and what it calls."""
    if frame is None:
        return "?"
    inner = frame
    while frame is not None and _in_stdlib(frame.f_code.co_filename):
        frame = frame.f_back
    if frame is None:
        frame = inner
    where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
    if frame is not inner:
        where += f" (calling {inner.f_code.co_name})"
    return where


def _running_message(consumer: Consumer, inner: str) -> str | None:
    """The message a handler task named `handle <queue>[<inner>]` runs.

    `runner <n>`: a standard queue's handler runner; `group <id>`: a FIFO group's chain.
    """
    runner = inner.removeprefix("runner ")
    if runner != inner and runner.isdigit():
        held = consumer.handling(int(runner))
        return held.message.message_id if held is not None else None
    if not inner.startswith("group "):
        return inner
    group = inner.removeprefix("group ")
    for held in consumer.heartbeat:
        if held.started and held.message.group_id == group and not held.claimed:
            return held.message.message_id
    return None


# -- HTTP -------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_http(monitor: HealthMonitor, *, port: int) -> AsyncIterator[int]:
    """Serve `/health` (live and not quarantined) and `/ready` on 127.0.0.1; yield the port.

    200 when the check holds, 503 when not, 404 for other paths; the body is the JSON report.
    """

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(HTTP_READ_TIMEOUT_S):
                request = await reader.readline()
                while (await reader.readline()).strip():  # skip the headers
                    pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) > 1 else "/"
            report = monitor.check()
            checks = {"/health": report.healthy, "/ready": report.healthy and report.ready}
            status = "404 Not Found"
            if path in checks:
                status = "200 OK" if checks[path] else "503 Service Unavailable"
            body = report.to_json().encode()
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (OSError, TimeoutError):
            pass  # a client that went away or never spoke: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(answer, "127.0.0.1", port)
    async with server:
        yield int(server.sockets[0].getsockname()[1])
