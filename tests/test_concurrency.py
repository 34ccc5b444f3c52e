"""`first()` and `cancel_and_wait()`: no task they create outlives the call."""

from __future__ import annotations

import asyncio

import pytest

from qworker.concurrency import Capacity, cancel_and_wait, first


def _others() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_first_cancels_and_awaits_the_rest() -> None:
    done = asyncio.Event()
    done.set()
    never = asyncio.Event()
    await first(done.wait(), never.wait(), never.wait())
    assert not _others()


async def test_first_interrupted_leaves_no_task_but_the_kept_one() -> None:
    never = asyncio.Event()
    kept = asyncio.ensure_future(never.wait())
    started = asyncio.Event()

    async def waiter() -> None:
        started.set()
        await first(kept, never.wait(), cancel=False)

    task = asyncio.create_task(waiter())
    await started.wait()
    await asyncio.sleep(0)  # inside first()'s wait now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _others() == {kept}  # the caller's to decide: still running
    await cancel_and_wait([kept])
    assert kept.cancelled()
    assert not _others()


async def test_capacity_take_waits_for_a_slot_and_stops() -> None:
    capacity = Capacity(1)
    stopping = asyncio.Event()
    assert await capacity.take(10, stopping) == 1
    waiting = asyncio.create_task(capacity.take(10, stopping))
    await asyncio.sleep(0)
    assert not waiting.done()
    capacity.give(1)
    assert await waiting == 1
    stopping.set()
    assert await capacity.take(10, stopping) == 0
    assert not _others()
