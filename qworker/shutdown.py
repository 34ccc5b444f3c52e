"""Bounded shutdown: after a stop signal, exit within `shutdown_grace_s` + a flush budget.

The consumer's shutdown (`qworker.consumer`) is cooperative: stop receiving, release what did not
start, give running handlers the grace period, cancel them, release their messages, flush. Some
things do not cooperate: a sync handler's thread cannot be stopped (Python cannot kill threads), an
async handler may ignore its cancellation, a hung network may swallow the last release, or the
event loop may be blocked. `run()` bounds all of them:

- A stop signal arms a watchdog thread (armed from the signal's own Python-level handler, so even a
  blocked event loop cannot delay it). If the process is still there `shutdown_grace_s` +
  `SHUTDOWN_FLUSH_S` (less `EXIT_MARGIN_S`, the time the exit itself may take) after the signal,
  the watchdog logs `shutdown_abandoned` naming every message still held, flushes the logs and
  ends the process with `os._exit(EXIT_ABANDONED)`.
- When the worker returned but a handler thread still runs, the process does not wait for it: it
  logs `shutdown_abandoned` naming the messages cut short and exits with `EXIT_ABANDONED` at once.
  The thread's late result is never acted on: its message was released when its task was
  cancelled, so a late success cannot delete a message another worker now holds.
- A shutdown that cut handlers short but released all their messages exits 0; one that could not
  release a message (it is left for its visibility to lapse) exits `EXIT_ABANDONED`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, final

from qworker.signals import STOP_SIGNALS

if TYPE_CHECKING:
    from qworker.worker import Worker

__all__ = ["EXIT_ABANDONED", "SHUTDOWN_FLUSH_S", "HandlerExecutor", "ShutdownGuard", "run"]

log = logging.getLogger(__name__)

SHUTDOWN_FLUSH_S: Final = 5.0
"""Budget after the grace period for releases, the last deletes, metrics and logs."""

EXIT_MARGIN_S: Final = 0.5
"""The watchdog fires this long before the bound, so the process is gone by the bound."""

EXIT_ABANDONED: Final = 3
"""Exit code of a shutdown that had to abandon work (a message not released, a thread left)."""

_SignalHandler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


@final
class HandlerExecutor(ThreadPoolExecutor):
    """The default executor of a worker's loop: it knows which of its threads are still busy."""

    def __init__(self) -> None:
        """Create an executor for sync handlers (and the loop's other thread calls)."""
        super().__init__(thread_name_prefix="qworker-thread")
        self._futures: set[Future[Any]] = set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:  # noqa: ANN401 (the base signature)
        """Run `fn` in a thread and track it until done."""
        future = super().submit(fn, *args, **kwargs)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return future

    def busy(self) -> int:
        """How many calls are still running in a thread."""
        return sum(1 for f in list(self._futures) if f.running())


@final
class ShutdownGuard:
    """Arms a watchdog at the stop signal and decides the exit code."""

    def __init__(
        self,
        grace_s: float,
        *,
        flush_s: float = SHUTDOWN_FLUSH_S,
        exit_now: Callable[[int], object] = os._exit,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create a guard.

        Args:
            grace_s: The worker's `shutdown_grace_s`.
            flush_s: Budget after the grace period.
            exit_now: Ends the process without waiting for threads (`os._exit`).
            clock: Monotonic seconds.
        """
        self.grace_s = grace_s
        self.flush_s = flush_s
        self.bound_s = grace_s + flush_s
        self._exit_now = exit_now
        self._clock = clock
        self._worker: Worker | None = None
        self._armed = threading.Event()
        self._done = threading.Event()
        self.stop_at: float | None = None
        self.fired = False
        self._watchdog = threading.Thread(target=self._watch, name="qworker-shutdown", daemon=True)
        self._watchdog.start()

    def watch(self, worker: Worker) -> None:
        """Name `worker`'s messages when work is abandoned."""
        self._worker = worker

    def arm(self) -> None:
        """Start the countdown (idempotent; safe in a signal handler)."""
        if self.stop_at is None:
            self.stop_at = self._clock()
            self._armed.set()

    def disarm(self) -> None:
        """The process is about to exit by itself: stop the watchdog."""
        self._done.set()
        self._armed.set()

    @contextlib.contextmanager
    def armed_by_signals(self) -> Iterator[None]:
        """Arm on every stop signal, from the signal's Python-level handler (main thread only).

        Enter it after `handle_signals()`: asyncio's own Python-level handler does nothing (the
        loop learns of the signal through its wakeup fd, which is kept), so it is wrapped, not
        replaced. The Python-level handler runs even while the event loop is blocked.
        """
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous: dict[signal.Signals, _SignalHandler] = {}
        for sig in STOP_SIGNALS:
            before = signal.getsignal(sig)
            previous[sig] = before
            signal.signal(sig, self._chain(before))
        try:
            yield
        finally:
            for sig, before in previous.items():
                signal.signal(sig, before)

    def _chain(self, before: _SignalHandler) -> Callable[[int, FrameType | None], None]:
        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.arm()
            if callable(before):
                before(signum, frame)

        return on_signal

    def _watch(self) -> None:
        self._armed.wait()
        if self._done.is_set() or self.stop_at is None:
            return
        remaining = self.stop_at + self.bound_s - EXIT_MARGIN_S - self._clock()
        if self._done.wait(max(0.0, remaining)):
            return
        self.fired = True
        held = _held_ids(self._worker)
        self.abandon(
            f"shutdown did not finish within {self.bound_s:g} s "
            f"(shutdown_grace_s {self.grace_s:g} + flush {self.flush_s:g})",
            held,
        )

    def abandon(self, reason: str, message_ids: list[str], **extra: object) -> None:
        """Log what is abandoned, flush the logs, and end the process now."""
        log.error(
            "shutdown abandoned work: %s; exiting now",
            reason,
            extra={
                "action": "shutdown_abandoned",
                "reason": reason,
                "message_ids": message_ids,
                "count": len(message_ids),
                "seconds_since_stop": (
                    round(self._clock() - self.stop_at, 3) if self.stop_at is not None else None
                ),
                **extra,
            },
        )
        _flush_logs()
        self._exit_now(EXIT_ABANDONED)

    def exit_code(self, executor: HandlerExecutor) -> int:
        """After the worker returned: abandon busy threads at once, else say how it went."""
        cut_short, unreleased = _shutdown_ids(self._worker)
        busy = executor.busy()
        if busy:
            self.abandon(
                f"{busy} handler thread(s) still running after the shutdown (Python cannot stop "
                "threads; their messages were released and their late results are ignored)",
                cut_short,
                threads=busy,
            )
            return EXIT_ABANDONED  # only reached when `exit_now` does not exit (tests)
        if unreleased:
            log.error(
                "shutdown could not release every message; they come back when their visibility "
                "lapses",
                extra={
                    "action": "shutdown_abandoned",
                    "reason": "release not recorded on the queue",
                    "message_ids": unreleased,
                    "count": len(unreleased),
                },
            )
            return EXIT_ABANDONED
        return 0


def _held_ids(worker: Worker | None) -> list[str]:
    """Ids of the messages the worker still holds (read from another thread: retried)."""
    if worker is None:
        return []
    for _ in range(10):
        try:
            return [h.message.message_id for c in list(worker.consumers) for h in c.heartbeat]
        except RuntimeError:  # changed size during iteration: look again
            continue
    return []


def _shutdown_ids(worker: Worker | None) -> tuple[list[str], list[str]]:
    if worker is None:
        return [], []
    cut_short = [i for c in worker.consumers for i in c.cut_short]
    unreleased = [i for c in worker.consumers for i in c.unreleased]
    return cut_short, unreleased


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def run(
    main: Callable[[ShutdownGuard], Coroutine[Any, Any, None]],
    *,
    grace_s: float,
    flush_s: float = SHUTDOWN_FLUSH_S,
    exit_now: Callable[[int], object] = os._exit,
) -> int:
    """Run `main(guard)` in a new event loop; return the exit code (0, or `EXIT_ABANDONED`).

    `main` should `guard.watch(worker)` and enter `guard.armed_by_signals()` inside its signal
    handling. The process never outlives the bound after a stop signal (see the module docs).

    Args:
        main: Makes the coroutine to run, given the guard.
        grace_s: The worker's `shutdown_grace_s`.
        flush_s: Budget after the grace period.
        exit_now: Ends the process without waiting for threads (`os._exit`).
    """
    guard = ShutdownGuard(grace_s, flush_s=flush_s, exit_now=exit_now)
    executor = HandlerExecutor()
    runner = asyncio.Runner()
    code: int | None = None
    try:
        runner.get_loop().set_default_executor(executor)
        runner.run(main(guard))
        code = guard.exit_code(executor)
    finally:
        if code is None and executor.busy():
            # An error ended the worker while a handler thread runs: do not wait for it either.
            guard.abandon("the worker ended while a handler thread still runs", [])
        guard.disarm()
        runner.close()
    return code
