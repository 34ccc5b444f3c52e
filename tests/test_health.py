"""Health (liveness, readiness, stall watchdog, file, `qworker health`, HTTP), and quarantine."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest

from qworker.cli import main
from qworker.consumer import Consumer
from qworker.emf import MetricsAggregator
from qworker.exceptions import QueueUnavailable
from qworker.health import (
    HealthMonitor,
    HealthReport,
    LoopLagWatch,
    default_health_file,
    evaluate,
    read_report,
    running_workers_files,
    serve_http,
    write_report,
)
from qworker.metrics import MetricName
from qworker.observability import Observability, build
from qworker.outcome import Outcome, OutcomeRecord
from qworker.quarantine import CanaryQuarantine
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock, consumer_for

if TYPE_CHECKING:
    from qworker.worker import Worker

CANARY = Identity(service="svc", role="canary", version="v2")


async def handle_ok(body: dict[str, int]) -> None:
    pass


async def fill(queue: FakeQueueTransport, count: int) -> None:
    for n in range(count):
        await queue.send(json.dumps({"n": n}))


def monitor_of(consumer: Consumer, clock: ManualClock, **options: object) -> HealthMonitor:
    monitor = HealthMonitor(wait_time_s=20, stall_margin_s=10, clock=clock, **options)  # type: ignore[arg-type]
    monitor.watch(lambda: [consumer], ready=lambda: True, stopping=lambda: consumer.stopping)
    return monitor


async def until(predicate: Callable[[], bool]) -> None:
    """Let the event loop run until `predicate` holds (under the caller's timeout).

    For states the fake exposes no event for (a receive in progress, a file written); it only
    yields to the loop, it never sleeps.
    """
    while not predicate():  # noqa: ASYNC110 (no event exists for these states; see above)
        await asyncio.sleep(0)


# -- liveness and readiness ---------------------------------------------------------------------


async def test_a_poll_loop_without_progress_is_reported_stalled_then_recovers() -> None:
    clock = ManualClock()
    queue = FakeSqs().create_queue("orders")
    consumer = consumer_for(queue, handle_ok, wait_time_s=20, pollers=1)
    monitor = monitor_of(consumer, clock)
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        group.create_task(consumer.run())
        await until(lambda: queue.calls["receive"] == 1)  # in a long poll now
        assert monitor.check().live
        clock.advance(29)
        assert monitor.check().live  # within wait_time_s + margin
        clock.advance(2)
        report = monitor.check()
        assert not report.live
        assert not report.healthy
        assert report.problems == (
            "poll loop of orders completed no receive for 31 s (0 receive errors so far)",
        )
        await fill(queue, 1)  # the long poll returns: progress
        await until(lambda: consumer.statistics().acked == 1)
        assert monitor.check().live
        consumer.stop()


async def test_a_saturated_consumer_is_waiting_not_stalled() -> None:
    clock = ManualClock()
    queue = FakeSqs().create_queue("orders")
    await fill(queue, 3)
    gate = asyncio.Event()

    async def handle(body: dict[str, int]) -> None:
        await gate.wait()

    consumer = consumer_for(queue, handle, concurrency=1, pollers=1)
    monitor = monitor_of(consumer, clock)
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        group.create_task(consumer.run_until_empty())
        await consumer.wait_in_flight(1)
        monitor.check()
        clock.advance(3600)
        assert monitor.check().live  # every slot is busy: the loop waits for capacity
        gate.set()


async def test_stopping_is_not_ready_and_not_a_stall() -> None:
    clock = ManualClock()
    consumer = consumer_for(FakeSqs().create_queue("orders"), handle_ok)
    monitor = monitor_of(consumer, clock)
    assert monitor.check().ready
    consumer.stop()
    clock.advance(3600)
    report = monitor.check()
    assert report.live
    assert not report.ready
    assert report.problems == ("stopping: draining in-flight messages",)


def test_a_worker_that_has_not_started_is_live_but_not_ready() -> None:
    monitor = HealthMonitor(wait_time_s=20)
    monitor.watch(list, ready=lambda: False, stopping=lambda: False)
    report = monitor.check()
    assert report.live
    assert not report.ready


def test_a_worker_that_never_reached_its_server_is_not_live_after_the_allowance() -> None:
    clock = ManualClock()
    monitor = HealthMonitor(wait_time_s=20, stall_margin_s=10, clock=clock)
    monitor.watch(list, ready=lambda: False, stopping=lambda: False)
    assert monitor.startup_allowance_s == 30
    clock.advance(30)
    assert monitor.check().healthy  # within the allowance: still starting
    clock.advance(1)
    report = monitor.check()
    assert not report.healthy
    assert report.problems[0] == (
        "has not reached the queue server in 31 s since start (allowance 30 s)"
    )


async def test_failed_receives_are_not_progress() -> None:
    clock = ManualClock()
    queue = FakeSqs().create_queue("orders")
    queue.fail_next("receive", QueueUnavailable("cut off"), times=1_000_000)
    parked = asyncio.Event()

    async def sleep(_: float) -> None:  # the receive backoff's (and the heartbeat's)
        await asyncio.sleep(0)
        if consumer.statistics().receive_errors >= 5:  # enough failed receives to count
            parked.set()
            await asyncio.Event().wait()

    consumer = consumer_for(queue, handle_ok, wait_time_s=20, pollers=1, sleep=sleep)
    monitor = monitor_of(consumer, clock)
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        group.create_task(consumer.run())
        monitor.check()
        await parked.wait()
        clock.advance(31)
        report = monitor.check()
        assert consumer.statistics().receive_errors == 5  # the five above
        assert not report.live  # retrying all the time, yet cut off from the server
        assert report.problems == (
            "poll loop of orders completed no receive for 31 s (5 receive errors so far)",
        )
        consumer.stop()


# -- the file and `qworker health` --------------------------------------------------------------


def test_report_round_trips_through_the_file(tmp_path: Path) -> None:
    report = HealthReport(time_s=1000.0, live=True, ready=False, problems=("starting",))
    path = tmp_path / "nested" / "health.json"
    write_report(path, report)
    assert read_report(path) == report
    assert json.loads(path.read_text())["healthy"] is True
    assert list(path.parent.iterdir()) == [path]  # no partial file left behind


@pytest.mark.parametrize(
    ("report", "ready", "expected"),
    [
        (HealthReport(time_s=100.0, live=True, ready=True), False, []),
        (HealthReport(time_s=100.0, live=True, ready=False, problems=("starting",)), False, []),
        (
            HealthReport(time_s=100.0, live=True, ready=False, problems=("starting",)),
            True,
            ["starting"],
        ),
        (
            HealthReport(time_s=100.0, live=False, ready=True, problems=("stalled",)),
            False,
            ["stalled"],
        ),
        (
            HealthReport(time_s=100.0, live=True, ready=False, quarantined=True, problems=("q",)),
            False,
            ["q"],
        ),
    ],
)
def test_evaluate(report: HealthReport, ready: bool, expected: list[str]) -> None:
    assert evaluate(report, now_s=110.0, require_ready=ready) == expected


def test_a_stale_report_is_unhealthy() -> None:
    report = HealthReport(time_s=100.0, live=True, ready=True, stale_after_s=15)
    assert evaluate(report, now_s=114.0) == []
    (problem,) = evaluate(report, now_s=116.0)
    assert "16 s old" in problem
    assert evaluate(report, now_s=116.0, max_age_s=60) == []


def test_health_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "health.json"
    assert main(["health", "--health-file", str(path)]) == 1
    assert "no readable health file" in capsys.readouterr().out
    import time  # noqa: PLC0415 (only this test needs the wall clock)

    write_report(path, HealthReport(time_s=time.time(), live=True, ready=False, problems=("s",)))
    assert main(["health", "--health-file", str(path)]) == 0
    assert capsys.readouterr().out == "healthy\n"
    assert main(["health", "--health-file", str(path), "--ready"]) == 1
    assert capsys.readouterr().out == "unhealthy: s\n"


def test_health_command_finds_the_file_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "from-env.json"
    monkeypatch.setenv("QWORKER_HEALTH_FILE", str(path))
    write_report(path, HealthReport(time_s=0.0, live=True, ready=True))
    assert main(["health"]) == 1
    assert "old" in capsys.readouterr().out


def test_health_command_reads_every_running_workers_own_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import os  # noqa: PLC0415 (only this test needs process ids)
    import tempfile  # noqa: PLC0415
    import time  # noqa: PLC0415

    monkeypatch.delenv("QWORKER_HEALTH_FILE", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    mine = default_health_file("primary")
    assert mine == tmp_path / "qworker-health" / f"primary-{os.getpid()}.json"
    assert main(["health"]) == 1
    assert "no running worker's health file" in capsys.readouterr().out

    now = time.time()
    write_report(mine, HealthReport(time_s=now, live=True, ready=True))
    # A worker that exited long ago left an unhealthy file: it is not read (its pid is gone).
    dead = default_health_file("primary", pid=2**22 + 1)
    write_report(dead, HealthReport(time_s=0.0, live=False, ready=False, problems=("x",)))
    assert running_workers_files() == [mine]
    assert main(["health"]) == 0
    assert capsys.readouterr().out == "healthy\n"

    # Two running workers of one host: each has its own file, and both must be healthy.
    other = default_health_file("canary", pid=os.getppid())
    write_report(other, HealthReport(time_s=now, live=False, ready=True, problems=("stalled",)))
    assert main(["health"]) == 1
    out = capsys.readouterr().out
    assert f"unhealthy: {other}: stalled" in out
    assert f"healthy: {mine}" in out


# -- the event loop lag watch -------------------------------------------------------------------


async def test_a_blocked_event_loop_is_logged_naming_the_handler_and_reported(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = FakeSqs().create_queue("orders")
    consumer = consumer_for(queue, handle_ok)
    monitor = monitor_of(consumer, ManualClock())
    reported = threading.Event()
    seen: list[HealthReport] = []

    def on_blocked() -> None:
        seen.append(monitor.check())  # what the health file gets while the loop is stuck
        reported.set()

    watch = LoopLagWatch(monitor, threshold_s=0.2, on_blocked=on_blocked)

    async def blocking_handler() -> None:
        # A sync call inside an async handler: the loop is stuck until the watch reports it.
        assert reported.wait(timeout=10)

    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="qworker.health"):
        async with asyncio.timeout(15), asyncio.TaskGroup() as group:
            group.create_task(watch.run(stop))
            await asyncio.sleep(0)  # the watch's thread is up
            await group.create_task(blocking_handler(), name="handle orders[msg-1]")
            assert monitor.blocked is not None
            await until(lambda: monitor.blocked is None)  # the loop runs again
            stop.set()

    (line,) = [r for r in caplog.records if r.action == "event_loop_blocked"]  # type: ignore[attr-defined]
    assert line.levelname == "WARNING"
    assert line.handler == consumer.dispatcher.spec.name  # type: ignore[attr-defined]
    assert line.message_id == "msg-1"  # type: ignore[attr-defined]
    assert "blocking_handler" in line.where  # type: ignore[attr-defined]
    assert f"by handler {consumer.dispatcher.spec.name}" in line.getMessage()
    assert not seen[0].live
    assert seen[0].problems[0].startswith("event loop blocked for")
    assert "(message msg-1)" in seen[0].problems[0]
    assert [r.action for r in caplog.records if r.action.startswith("event_loop")] == [  # type: ignore[attr-defined]
        "event_loop_blocked",
        "event_loop_unblocked",
    ]
    assert monitor.check().live


async def test_a_handler_runner_blocking_the_loop_is_named_by_the_message_it_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A standard queue's handlers run in runner tasks (`handle <queue>[runner <n>]`): the watch
    # asks the consumer which message the blocking runner runs.
    queue = FakeSqs().create_queue("orders")
    reported = threading.Event()
    second = asyncio.Event()

    async def handle(body: dict[str, int]) -> None:
        if body["n"] == 1:  # runner 1's message blocks, while runner 0's waits
            assert reported.wait(timeout=10)
        else:
            await second.wait()

    consumer = consumer_for(queue, handle, concurrency=4)
    monitor = monitor_of(consumer, ManualClock())
    watch = LoopLagWatch(monitor, threshold_s=0.2, on_blocked=reported.set)
    ids = [queue.put(json.dumps({"n": n})) for n in range(2)]
    stop = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="qworker.health"):
        async with asyncio.timeout(15), asyncio.TaskGroup() as group:
            group.create_task(watch.run(stop))
            run = group.create_task(consumer.run())
            await until(lambda: monitor.blocked is None and reported.is_set())
            second.set()
            await consumer.wait_idle()
            consumer.stop()
            await run
            stop.set()

    (line,) = [r for r in caplog.records if r.action == "event_loop_blocked"]  # type: ignore[attr-defined]
    assert line.message_id == ids[1]  # type: ignore[attr-defined]
    assert line.handler == consumer.dispatcher.spec.name  # type: ignore[attr-defined]
    assert consumer.statistics().acked == 2


# -- HTTP ---------------------------------------------------------------------------------------


async def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    await writer.drain()
    response = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def test_http_endpoint_answers_health_and_ready() -> None:
    ready = False
    monitor = HealthMonitor(wait_time_s=20)
    monitor.watch(list, ready=lambda: ready, stopping=lambda: False)
    async with asyncio.timeout(5), serve_http(monitor, port=0) as port:
        status, body = await get(port, "/health")
        assert (status, body["live"]) == (200, True)
        assert (await get(port, "/ready"))[0] == 503
        ready = True
        assert (await get(port, "/ready"))[0] == 200
        assert (await get(port, "/nope"))[0] == 404


# -- quarantine ---------------------------------------------------------------------------------


def outcome(kind: Outcome, receive_count: int = 1) -> OutcomeRecord:
    return OutcomeRecord(kind, "orders", "h", "canary", "v2", "m", receive_count)


def test_quarantine_needs_enough_first_attempts_and_a_rate_above_the_limit() -> None:
    quarantine = CanaryQuarantine(failure_rate=0.5, min_messages=4, window_s=60)
    for kind in (Outcome.FAILED, Outcome.FAILED, Outcome.FAILED):
        quarantine.record(outcome(kind))
    assert not quarantine.quarantined  # 3 of 3, but fewer than 4 first attempts
    quarantine.record(outcome(Outcome.FAILED, receive_count=2))  # a retry: not counted
    quarantine.record(outcome(Outcome.RELEASED))  # not processed: not counted
    assert quarantine.counts == (3, 3)
    quarantine.record(outcome(Outcome.SUCCEEDED))
    assert quarantine.quarantined  # 3 of 4 > 50 %


def test_quarantine_at_the_limit_does_not_trip_and_old_outcomes_leave_the_window() -> None:
    clock = ManualClock()
    quarantine = CanaryQuarantine(failure_rate=0.5, min_messages=2, window_s=60, clock=clock)
    quarantine.record(outcome(Outcome.FAILED))
    quarantine.record(outcome(Outcome.SUCCEEDED))
    assert not quarantine.quarantined  # 50 % is not above 50 %
    clock.advance(61)
    quarantine.record(outcome(Outcome.SUCCEEDED))
    assert quarantine.counts == (0, 1)
    quarantine.record(outcome(Outcome.FAILED))
    quarantine.record(outcome(Outcome.FAILED))
    assert quarantine.quarantined  # 2 of 3 within the window


async def test_a_failing_canary_quarantines_itself_on_the_fake_transport(
    caplog: pytest.LogCaptureFixture,
) -> None:
    queue = FakeSqs().create_queue("orders")
    await fill(queue, 50)

    tried: set[int] = set()

    async def handle(body: dict[str, int]) -> None:
        first = body["n"] not in tried
        tried.add(body["n"])
        if first and body["n"] % 4:  # 75 % of first attempts fail; retries (released) succeed
            raise RuntimeError("bad release")

    quarantine = CanaryQuarantine(failure_rate=0.5, min_messages=10, window_s=300)
    aggregator = MetricsAggregator(role="canary", quarantined=lambda: quarantine.quarantined)
    consumer = consumer_for(
        queue,
        handle,
        identity=CANARY,
        sinks=[aggregator, quarantine],
        release_failed=True,
        concurrency=1,
        pollers=1,
    )
    quarantine.on_trip(consumer.stop)
    monitor = monitor_of(consumer, ManualClock(), quarantined=lambda: quarantine.quarantined)
    with caplog.at_level(logging.ERROR, logger="qworker.quarantine"):
        async with asyncio.timeout(5):
            await consumer.run()  # returns: the quarantine stopped it

    assert quarantine.quarantined
    stats = consumer.statistics()
    assert stats.acked + stats.failed < 50  # it stopped polling well before the queue was empty
    assert len(queue.messages) > 0
    (line,) = [r for r in caplog.records if getattr(r, "action", None) == "canary_quarantined"]
    assert "canary quarantined" in line.getMessage()
    report = monitor.check()
    assert not report.healthy
    assert "canary quarantined itself: polling stopped" in report.problems
    (aggregate,) = aggregator.snapshot().aggregates
    assert aggregate.counts[MetricName.QUARANTINED] == 1


class StubWorker:
    """What `Observability.run` needs of a worker, without a queue server."""

    def __init__(self, consumer: Consumer) -> None:
        self.consumers = [consumer]
        self.ready = asyncio.Event()
        self.identity = CANARY
        self.consumer = consumer

    @property
    def stopping(self) -> bool:
        return self.consumer.stopping

    def stop(self) -> None:
        self.consumer.stop()

    async def run(self) -> None:
        self.ready.set()
        await self.consumer.run()


async def test_a_quarantined_canary_stays_up_unhealthy_until_stopped(tmp_path: Path) -> None:
    settings = QWorkerSettings(
        queue_name="orders",
        deployment_role="canary",
        health_file=str(tmp_path / "health.json"),
        metrics_publish_cloudwatch=False,
        canary_quarantine_failure_rate=0.5,
        canary_quarantine_min_messages=5,
    )
    queue = FakeSqs().create_queue("orders")
    await fill(queue, 20)

    async def handle(body: dict[str, int]) -> None:
        raise RuntimeError("bad release")

    ticks: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(_: float) -> None:
        await ticks.get()

    async with asyncio.timeout(5), build(settings, CANARY, sleep=sleep) as obs:
        assert obs.quarantine is not None
        consumer = consumer_for(queue, handle, identity=CANARY, sinks=obs.sinks, pollers=1)
        worker = StubWorker(consumer)
        run = asyncio.create_task(obs.run(cast("Worker", worker)))
        await until(lambda: consumer.stopping)
        for _ in range(3):
            await asyncio.sleep(0)
        assert not run.done()  # held up, reporting unhealthy
        assert not obs.monitor.check().healthy
        obs.stop()
        await run
    report = read_report(Path(settings.health_file or ""))
    assert report.quarantined
    assert not report.healthy


async def test_build_writes_the_health_file_periodically(tmp_path: Path) -> None:
    path = tmp_path / "health.json"
    settings = QWorkerSettings(
        queue_name="orders", health_file=str(path), metrics_publish_cloudwatch=False
    )
    written: list[HealthReport] = []
    ticks: asyncio.Queue[None] = asyncio.Queue()
    slept = asyncio.Event()

    async def sleep(_: float) -> None:
        slept.set()
        await ticks.get()

    consumer = consumer_for(FakeSqs().create_queue("orders"), handle_ok)
    async with asyncio.timeout(5), build(settings, CANARY, sleep=sleep) as obs:
        assert obs.quarantine is None  # not asked for
        worker = StubWorker(consumer)
        obs.watch(cast("Worker", worker))
        await until(path.exists)
        written.append(read_report(path))
        worker.ready.set()
        await next_write(path, ticks, written)
    written.append(read_report(path))
    assert [r.ready for r in written] == [False, True, True]
    assert all(r.live for r in written)
    assert written[0].stale_after_s == 15.0


def snapshot(path: Path) -> tuple[int, str]:
    return path.stat().st_mtime_ns, path.read_text()


async def next_write(path: Path, ticks: asyncio.Queue[None], written: list[HealthReport]) -> None:
    before = snapshot(path)
    ticks.put_nowait(None)
    ticks.put_nowait(None)  # the metrics emitter sleeps on the same clock
    await until(lambda: snapshot(path) != before)
    written.append(read_report(path))


async def test_primary_never_quarantines(tmp_path: Path) -> None:
    settings = QWorkerSettings(
        queue_name="orders",
        health_file=str(tmp_path / "h.json"),
        metrics_publish_cloudwatch=False,
        canary_quarantine_failure_rate=0.1,
    )
    primary = Identity(service="svc", role="primary")

    async def never(_: float) -> None:
        await asyncio.Event().wait()

    async with build(settings, primary, sleep=never) as obs:
        assert isinstance(obs, Observability)
        assert obs.quarantine is None
