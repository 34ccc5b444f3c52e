"""The shutdown guard on its own: watchdog, signal arming, busy threads, exit codes (no server).

The process-level behaviour (real signals, LocalStack, measured exit times) is in
tests/test_shutdown_bound.py; here `exit_now` is a stand-in for `os._exit`, so nothing exits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import pytest

from qworker.shutdown import EXIT_ABANDONED, EXIT_MARGIN_S, HandlerExecutor, ShutdownGuard, run
from qworker.signals import handle_signals

if TYPE_CHECKING:
    from qworker.worker import Worker


@dataclass
class StubMessage:
    message_id: str


@dataclass
class StubHeld:
    message: StubMessage


@dataclass
class StubConsumer:
    held: list[str] = field(default_factory=list)
    cut_short: list[str] = field(default_factory=list)
    unreleased: list[str] = field(default_factory=list)

    @property
    def heartbeat(self) -> list[StubHeld]:
        return [StubHeld(StubMessage(i)) for i in self.held]


@dataclass
class StubWorker:
    consumers: list[StubConsumer]


class Exits:
    """Records what `os._exit` would have been called with."""

    def __init__(self) -> None:
        self.codes: list[int] = []
        self.called = threading.Event()

    def __call__(self, code: int) -> None:
        self.codes.append(code)
        self.called.set()


def test_the_watchdog_abandons_at_the_bound_naming_the_held_messages(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exits = Exits()
    guard = ShutdownGuard(0.05, flush_s=EXIT_MARGIN_S + 0.05, exit_now=exits)
    guard.watch(cast("Worker", StubWorker([StubConsumer(held=["m-1", "m-2"])])))
    with caplog.at_level(logging.ERROR, logger="qworker.shutdown"):
        guard.arm()
        guard.arm()  # idempotent: the countdown started at the first signal
        assert exits.called.wait(timeout=10)
    assert exits.codes == [EXIT_ABANDONED]
    assert guard.fired
    (line,) = [r for r in caplog.records if r.action == "shutdown_abandoned"]  # type: ignore[attr-defined]
    assert line.message_ids == ["m-1", "m-2"]  # type: ignore[attr-defined]
    assert "did not finish within 0.6 s" in line.getMessage()


def test_a_shutdown_that_finishes_disarms_the_watchdog() -> None:
    exits = Exits()
    guard = ShutdownGuard(3600, exit_now=exits)
    guard.arm()
    guard.disarm()
    guard._watchdog.join(timeout=10)
    assert not guard._watchdog.is_alive()
    assert exits.codes == []


def test_an_unarmed_guard_never_fires() -> None:
    exits = Exits()
    guard = ShutdownGuard(0, flush_s=0, exit_now=exits)
    guard.disarm()
    guard._watchdog.join(timeout=10)
    assert not guard._watchdog.is_alive()
    assert exits.codes == []


async def test_a_stop_signal_arms_the_guard_while_the_loop_is_blocked() -> None:
    guard = ShutdownGuard(3600, exit_now=Exits())
    stopped = asyncio.Event()
    with handle_signals(stopped.set), guard.armed_by_signals():
        threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGTERM)).start()
        # Block the event loop (no await) until the guard is armed: the signal's Python-level
        # handler arms it in the middle of the blocking call, the loop cannot have run.
        assert guard._armed.wait(timeout=10)  # the loop is blocked here
        assert guard.stop_at is not None
        assert not stopped.is_set()
        async with asyncio.timeout(10):
            await stopped.wait()  # asyncio's own handler still runs, through the wakeup fd
    guard.disarm()


def test_exit_codes_after_the_worker_returned(caplog: pytest.LogCaptureFixture) -> None:
    executor = HandlerExecutor()
    clean = ShutdownGuard(1, exit_now=Exits())
    clean.watch(cast("Worker", StubWorker([StubConsumer(cut_short=["m-1"])])))
    assert clean.exit_code(executor) == 0  # cut short, but released: nothing abandoned

    lapsing = ShutdownGuard(1, exit_now=Exits())
    lapsing.watch(cast("Worker", StubWorker([StubConsumer(unreleased=["m-2"])])))
    with caplog.at_level(logging.ERROR, logger="qworker.shutdown"):
        assert lapsing.exit_code(executor) == EXIT_ABANDONED
    (line,) = [r for r in caplog.records if r.action == "shutdown_abandoned"]  # type: ignore[attr-defined]
    assert line.message_ids == ["m-2"]  # type: ignore[attr-defined]
    for guard in (clean, lapsing):
        guard.disarm()
    executor.shutdown()


def test_the_executor_knows_its_busy_threads() -> None:
    executor = HandlerExecutor()
    release = threading.Event()
    future = executor.submit(release.wait, 10)
    assert executor.busy() in {0, 1}  # the thread may not have picked it up yet
    executor.submit(lambda: None).result(timeout=10)
    assert executor.busy() == 1
    release.set()
    future.result(timeout=10)
    assert executor.busy() == 0
    executor.shutdown()


def test_run_does_not_wait_for_a_handler_thread_still_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker returned while a sync handler's thread runs: abandon it, exit at once."""
    release = threading.Event()
    running = threading.Event()
    exits = Exits()

    def sync_handler() -> None:
        running.set()
        release.wait(timeout=30)

    async def main(guard: ShutdownGuard) -> None:
        guard.watch(cast("Worker", StubWorker([StubConsumer(cut_short=["m-3"])])))
        task = asyncio.ensure_future(asyncio.to_thread(sync_handler))
        await asyncio.to_thread(running.wait, 10)
        task.cancel()  # the grace ran out: the task ends, the thread does not

    def exit_now(code: int) -> Any:
        exits(code)
        release.set()  # in a real exit the thread dies with the process

    with caplog.at_level(logging.ERROR, logger="qworker.shutdown"):
        code = run(main, grace_s=1, exit_now=exit_now)
    assert code == EXIT_ABANDONED
    assert exits.codes == [EXIT_ABANDONED]
    (line,) = [r for r in caplog.records if r.action == "shutdown_abandoned"]  # type: ignore[attr-defined]
    assert line.threads == 1  # type: ignore[attr-defined]
    assert line.message_ids == ["m-3"]  # type: ignore[attr-defined]


def test_run_returns_zero_after_a_clean_shutdown() -> None:
    async def main(guard: ShutdownGuard) -> None:
        guard.watch(cast("Worker", StubWorker([StubConsumer()])))
        await asyncio.to_thread(lambda: None)

    assert run(main, grace_s=1, exit_now=Exits()) == 0
