"""`first()`, `cancel_and_wait()` (no task they create outlives the call), `Capacity`, `Gate`."""

from __future__ import annotations

import asyncio

import pytest

from qworker.concurrency import Capacity, Gate, ahead, cancel_and_wait, first


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


def test_ahead_covers_the_receive_round_trips_within_its_bounds() -> None:
    # Unknown handler time: the concurrency, at most two receives per poller.
    assert ahead(100, 10, 10, 0.0, 0.0) == 100
    assert ahead(16, 8, 10, 0.0, 0.0) == 16
    # Handlers finish 100 / 0.05 = 2,000 a second; two 10 ms round trips' worth is 40.
    assert ahead(100, 10, 10, 0.05, 0.01) == 40
    # Fast handlers: capped at two receives per poller.
    assert ahead(16, 8, 10, 0.000_01, 0.03) == 160
    # Slow handlers: still one receive's worth (so a receive overlaps them), or the concurrency.
    assert ahead(16, 8, 10, 60.0, 0.02) == 10
    assert ahead(1, 8, 10, 60.0, 0.02) == 1


async def test_capacity_take_gathers_a_batch_or_lingers() -> None:
    capacity = Capacity(20, linger_s=0.001)
    stopping = asyncio.Event()
    assert await capacity.take(10, stopping) == 10
    assert await capacity.take(10, stopping) == 10
    capacity.give(3)
    took = asyncio.create_task(capacity.take(10, stopping))
    await asyncio.sleep(0)
    assert not took.done()  # 3 free: it waits for more
    capacity.give(7)
    assert await took == 10  # a full batch: taken at once
    capacity.give(2)
    assert await capacity.take(10, stopping) == 2  # after the linger, what is free


async def test_capacity_resize_below_what_is_taken_waits_for_gives() -> None:
    capacity = Capacity(10)
    stopping = asyncio.Event()
    assert await capacity.take(10, stopping) == 10
    capacity.resize(5)
    capacity.give(5)  # 5 given back, but 5 slots fewer: none free
    assert capacity.free == 0
    took = asyncio.create_task(capacity.take(10, stopping))
    await asyncio.sleep(0)
    assert not took.done()
    capacity.resize(8)
    assert await took == 3


async def test_gate_lets_the_total_in_hands_slots_on_and_turns_away_when_closed() -> None:
    gate = Gate(2)
    assert await gate.enter()
    assert await gate.enter()
    third = asyncio.create_task(gate.enter())
    fourth = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    assert not third.done()
    gate.leave()
    assert await third  # handed the slot that was left
    assert not fourth.done()
    gate.close()
    assert not await fourth  # turned away: never started
    assert not await gate.enter()


async def test_gate_slot_handed_to_a_cancelled_waiter_passes_on() -> None:
    gate = Gate(1)
    assert await gate.enter()
    second = asyncio.create_task(gate.enter())
    third = asyncio.create_task(gate.enter())
    await asyncio.sleep(0)
    gate.leave()  # handed to the second...
    second.cancel()  # ...which is cancelled before it runs: the slot goes to the third
    with pytest.raises(asyncio.CancelledError):
        await second
    assert await third
    assert gate.free == 0


async def test_capacity_take_woken_but_beaten_to_the_slots_waits_on() -> None:
    capacity = Capacity(10, linger_s=0.001)
    stopping = asyncio.Event()
    assert await capacity.take(10, stopping) == 10
    waiting = asyncio.create_task(capacity.take(10, stopping))
    await asyncio.sleep(0)
    capacity.give(10)  # wakes the waiting take...
    assert await capacity.take(10, stopping) == 10  # ...but another take gets there first
    for _ in range(5):
        await asyncio.sleep(0)
    assert not waiting.done()  # it waits on: 0 would mean "stopping"
    capacity.give(10)
    assert await waiting == 10
    stopped = asyncio.create_task(capacity.take(10, stopping))
    await asyncio.sleep(0)
    stopping.set()
    assert await stopped == 0
    assert not _others()


async def test_gate_try_enter_takes_only_a_free_slot_of_an_open_gate() -> None:
    gate = Gate(1)
    assert gate.try_enter()
    assert not gate.try_enter()  # full
    waiting = asyncio.ensure_future(gate.enter())
    await asyncio.sleep(0)
    gate.leave()  # the slot goes to the waiter ...
    assert await waiting
    gate.leave()
    assert gate.try_enter()  # ... and is free again once it leaves
    gate.leave()
    gate.close()
    assert not gate.try_enter()  # closed: nobody enters
