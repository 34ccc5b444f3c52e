"""Signals: SIGTERM/SIGINT/SIGHUP call stop() inside the block, and nothing else changes."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from types import FrameType

import pytest

from qworker.signals import STOP_SIGNALS, handle_signals


class Stopper:
    """A `stop()` that counts its calls and sets an event."""

    def __init__(self) -> None:
        self.calls = 0
        self.stopped = asyncio.Event()

    def __call__(self) -> None:
        self.calls += 1
        self.stopped.set()


async def test_real_sigterm_calls_stop() -> None:
    stop = Stopper()

    with handle_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            await stop.stopped.wait()

    assert stop.calls == 1


async def test_real_sigint_calls_stop_instead_of_interrupting() -> None:
    stop = Stopper()

    with handle_signals(stop):
        os.kill(os.getpid(), signal.SIGINT)
        async with asyncio.timeout(5):
            await stop.stopped.wait()

    assert stop.calls == 1


async def test_real_sighup_calls_stop_instead_of_killing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SIGHUP's default action ends the process at once; inside the block it drains instead."""
    stop = Stopper()

    with caplog.at_level(logging.INFO, logger="qworker.signals"), handle_signals(stop):
        os.kill(os.getpid(), signal.SIGHUP)
        async with asyncio.timeout(5):
            await stop.stopped.wait()

    assert stop.calls == 1
    assert [getattr(r, "signal", None) for r in caplog.records] == ["SIGHUP"]


async def test_second_signal_calls_stop_again_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0
    twice = asyncio.Event()

    def stop() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            twice.set()

    with caplog.at_level(logging.INFO, logger="qworker.signals"), handle_signals(stop):
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            await twice.wait()

    assert [r.getMessage() for r in caplog.records] == [
        "signal received; stopping",
        "signal received; already stopping",
    ]
    assert {getattr(r, "signal", None) for r in caplog.records} == {"SIGTERM"}


async def test_previous_handlers_are_restored() -> None:
    def custom(signum: int, frame: FrameType | None) -> None: ...

    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(signal.SIGTERM, custom)
    try:
        with handle_signals(Stopper()):
            assert signal.getsignal(signal.SIGTERM) is not custom
        assert signal.getsignal(signal.SIGTERM) is custom
        assert signal.getsignal(signal.SIGINT) == before[signal.SIGINT]
    finally:
        signal.signal(signal.SIGTERM, before[signal.SIGTERM])


async def test_handlers_are_restored_when_the_block_raises() -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    loop = asyncio.get_running_loop()

    with pytest.raises(RuntimeError, match="inside"), handle_signals(Stopper()):
        raise RuntimeError("inside")

    assert {sig: signal.getsignal(sig) for sig in STOP_SIGNALS} == before
    assert getattr(loop, "_signal_handlers", {}) == {}  # nothing left installed on the loop


def test_off_the_main_thread_nothing_is_installed() -> None:
    before = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    seen: dict[str, object] = {}

    async def body() -> None:
        with handle_signals(Stopper()):
            seen["inside"] = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
            seen["loop_handlers"] = dict(
                getattr(asyncio.get_running_loop(), "_signal_handlers", {})
            )
        seen["done"] = True

    def run() -> None:
        try:
            asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001 (reported to the test thread below)
            seen["error"] = exc

    thread = threading.Thread(target=run, name="embedded app")
    thread.start()
    thread.join(timeout=10)

    assert not thread.is_alive()
    assert "error" not in seen, seen.get("error")
    assert seen["done"] is True
    assert seen["inside"] == before
    assert seen["loop_handlers"] == {}
