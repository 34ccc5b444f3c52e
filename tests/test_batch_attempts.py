"""A batch try that never gets an answer (a silently dead pooled connection) is cut short and
retried within the batch's time, instead of using up all of it and failing every caller."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from qworker.batch import Batcher
from qworker.exceptions import TransportError
from qworker.transport import BatchFailure


class HangsOnce:
    """The first call hangs for ever (no answer on a dead connection); later ones answer."""

    def __init__(self) -> None:
        self.calls = 0
        self.cancelled = 0

    async def __call__(self, items: Sequence[str]) -> list[BatchFailure]:
        assert items
        self.calls += 1
        if self.calls == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancelled += 1  # the try was given up: its connection is closed
                raise
        return []


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


async def test_a_hung_try_is_cut_short_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    send = HangsOnce()
    batcher: Batcher[str] = Batcher(
        send, name="delete", max_wait_s=0, attempt_timeout_s=0.05, timeout_s=30, sleep=no_sleep
    )
    with caplog.at_level(logging.WARNING, logger="qworker.batch"):
        async with asyncio.timeout(10), asyncio.TaskGroup() as group:
            runner = group.create_task(batcher.run())
            assert await batcher.submit("r-1") is None  # deleted on the second try
            runner.cancel()
    assert (send.calls, send.cancelled) == (2, 1)
    (line,) = [r for r in caplog.records if r.action == "delete_retry"]  # type: ignore[attr-defined]
    assert line.error == "delete batch call: no answer within 0.05 s"  # type: ignore[attr-defined]


async def test_a_try_that_never_answers_fails_the_callers_after_the_last_attempt() -> None:
    async def never(items: Sequence[str]) -> list[BatchFailure]:
        await asyncio.Event().wait()
        return []

    batcher: Batcher[str] = Batcher(
        never, name="release", max_wait_s=0, attempts=2, attempt_timeout_s=0.05, sleep=no_sleep
    )
    async with asyncio.timeout(10), asyncio.TaskGroup() as group:
        runner = group.create_task(batcher.run())
        with pytest.raises(TransportError, match=r"no answer within 0\.05 s"):
            await batcher.submit("r-1")
        runner.cancel()
    assert batcher.calls == 2
