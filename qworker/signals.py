"""Signals: SIGTERM, SIGINT and SIGHUP ask the worker to stop; nothing else happens in a handler.

SIGHUP (a terminal hang-up, or a supervisor's stop) is a graceful drain like SIGTERM, not an
instant death with nothing released. ECS stops a task with SIGTERM, waits `stopTimeout` seconds,
then sends SIGKILL; the worker's shutdown grace must fit inside that window. The handlers are
installed with `loop.add_signal_handler` (they run in the event loop, not in the middle of
arbitrary code), the previous handlers are restored on exit, and off the main thread nothing is
installed (Python only lets the main thread set signal handlers), so an app can embed the worker.

A second stop signal while stopping is logged and ignored: the grace period is the limit, and
SIGKILL is the way to cut it short.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Final

__all__ = ["STOP_SIGNALS", "handle_signals"]

log = logging.getLogger(__name__)

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


@contextlib.contextmanager
def handle_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Within the block, SIGTERM, SIGINT and SIGHUP call `stop()` (main thread only).

    Args:
        stop: Called on each signal; must be synchronous and idempotent.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    received: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(sig)
        log.info(
            "signal received; stopping"
            if len(received) == 1
            else "signal received; already stopping",
            extra={"action": "signal", "signal": sig.name},
        )
        stop()

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        yield
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])
