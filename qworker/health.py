"""Health: is the worker alive (its poll loops make progress) and ready (consuming, not draining)?

`HealthMonitor` looks at the watched consumers' counters. A poll loop makes progress when it
receives (empty long polls count), fails a receive and backs off, or settles a message; a consumer
whose every slot is busy is waiting on its handlers, not stalled. A loop without progress for longer
than `wait_time_s` plus a margin is stalled: the event loop is blocked, or a receive hangs.
`live` is false then; `ready` means started, not stopping and not quarantined.

The worker writes the report to a small JSON file every few seconds; `qworker health` reads it and
exits 0 (healthy) or 1 (unhealthy), which makes it the ECS container health check command. A file
that stopped changing is stale, and so unhealthy too: whatever stopped the writer stopped the
worker. Optionally the same report is served over HTTP on 127.0.0.1 (`/health`, `/ready`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final, final

from qworker.consumer import Consumer, ConsumerStatistics
from qworker.settings import load_settings

__all__ = [
    "HealthMonitor",
    "HealthReport",
    "default_health_file",
    "evaluate",
    "read_report",
    "register",
    "serve_http",
    "write_report",
]

EXIT_HEALTHY: Final = 0
EXIT_UNHEALTHY: Final = 1
STALE_INTERVALS: Final = 3
"""A health file older than this many write intervals is stale."""
HTTP_READ_TIMEOUT_S: Final = 5.0


def default_health_file(role: str) -> Path:
    """The health file of a worker of `role` when the settings name none."""
    return Path(tempfile.gettempdir()) / f"qworker-health-{role}.json"


@final
@dataclass(frozen=True, slots=True)
class HealthReport:
    """One look at the worker's health.

    Attributes:
        time_s: When (epoch seconds).
        live: No poll loop is stalled.
        ready: Started, not stopping, not quarantined.
        quarantined: A canary stopped itself (see `qworker.quarantine`).
        problems: Why not live or not ready, one short line each.
        stale_after_s: How old the report may grow before a reader calls it stale.
        queues: Per queue: its counters and seconds since its poll loop last made progress.
    """

    time_s: float
    live: bool
    ready: bool
    quarantined: bool = False
    problems: tuple[str, ...] = ()
    stale_after_s: float = 30.0
    queues: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def healthy(self) -> bool:
        """Live and not quarantined (what the container health check asks)."""
        return self.live and not self.quarantined

    def to_json(self) -> str:
        """The report as one JSON object."""
        return json.dumps({**asdict(self), "healthy": self.healthy, "pid": os.getpid()})

    @classmethod
    def from_json(cls, text: str) -> HealthReport:
        """Read a report written by `to_json`.

        Raises:
            ValueError: Not a report.
        """
        raw = json.loads(text)
        try:
            return cls(
                time_s=float(raw["time_s"]),
                live=bool(raw["live"]),
                ready=bool(raw["ready"]),
                quarantined=bool(raw.get("quarantined", False)),
                problems=tuple(str(p) for p in raw.get("problems", ())),
                stale_after_s=float(raw.get("stale_after_s", 30.0)),
                queues=dict(raw.get("queues", {})),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not a health report: {exc}") from None


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
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Create a monitor; `watch()` what it monitors.

        Args:
            wait_time_s: The consumers' long-poll wait.
            stall_margin_s: Allowed on top of `wait_time_s` before a loop counts as stalled.
            stale_after_s: Written into reports, for readers.
            quarantined: Tells whether the worker quarantined itself.
            clock: Monotonic seconds.
            wall_clock: Epoch seconds, for report times.
        """
        self.stall_after_s = wait_time_s + stall_margin_s
        self.stale_after_s = stale_after_s
        self._quarantined = quarantined or (lambda: False)
        self._clock = clock
        self._wall_clock = wall_clock
        self._consumers: Callable[[], Sequence[Consumer]] = list
        self._ready: Callable[[], bool] = lambda: False
        self._stopping: Callable[[], bool] = lambda: False
        self._progress: dict[int, _Progress] = {}

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
                problems.append(f"poll loop of {name} made no progress for {idle_s:.0f} s")
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
        settled = stats.acked + stats.failed + stats.retried + stats.rejected + stats.released
        marker = (stats.receives, stats.receive_errors, settled)
        seen = self._progress.get(id(consumer))
        if seen is None or seen.marker != marker or stats.in_flight >= consumer.concurrency:
            seen = self._progress[id(consumer)] = _Progress(marker, now)
        return now - seen.at


# -- the file ---------------------------------------------------------------------------------


def write_report(path: Path, report: HealthReport) -> None:
    """Write `report` to `path` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(report.to_json(), encoding="utf-8")
    partial.replace(path)


def read_report(path: Path) -> HealthReport:
    """Read the report at `path`.

    Raises:
        OSError: No file.
        ValueError: Not a report.
    """
    return HealthReport.from_json(path.read_text(encoding="utf-8"))


def evaluate(
    report: HealthReport,
    *,
    now_s: float,
    require_ready: bool = False,
    max_age_s: float | None = None,
) -> list[str]:
    """Return why `report` is unhealthy (empty: healthy).

    Args:
        report: What the worker wrote.
        now_s: Epoch seconds now.
        require_ready: Also require readiness.
        max_age_s: Older reports are stale (default: the report's own `stale_after_s`).
    """
    age_s = now_s - report.time_s
    limit = report.stale_after_s if max_age_s is None else max_age_s
    if age_s > limit:
        return [f"health file is {age_s:.0f} s old (limit {limit:g} s): the worker is not running"]
    if report.healthy and (report.ready or not require_ready):
        return []
    return list(report.problems) or ["not ready"]


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


# -- `qworker health` -------------------------------------------------------------------------


def register(subparsers: Any) -> None:  # noqa: ANN401 (argparse's subparsers action is private)
    """Add `qworker health` to the CLI."""
    parser = subparsers.add_parser(
        "health",
        help="exit 0 if the worker on this host is healthy, 1 if not (the ECS health check)",
        description="Read the worker's health file; exit 0 when healthy, 1 when not.",
    )
    parser.add_argument("--health-file", help="the file (default: from QWORKER_HEALTH_FILE)")
    parser.add_argument("--ready", action="store_true", help="also require readiness")
    parser.add_argument("--max-age-s", type=float, help="older files are stale")
    parser.set_defaults(func=_cmd_health)


def _cmd_health(args: argparse.Namespace) -> int:
    settings = load_settings(health_file=args.health_file)
    path = Path(settings.health_file or default_health_file(settings.deployment_role.value))
    try:
        report = read_report(path)
    except (OSError, ValueError) as exc:
        sys.stdout.write(f"unhealthy: no readable health file at {path}: {exc}\n")
        return EXIT_UNHEALTHY
    problems = evaluate(
        report, now_s=time.time(), require_ready=args.ready, max_age_s=args.max_age_s
    )
    if problems:
        sys.stdout.write(f"unhealthy: {'; '.join(problems)}\n")
        return EXIT_UNHEALTHY
    sys.stdout.write("healthy\n")
    return EXIT_HEALTHY
