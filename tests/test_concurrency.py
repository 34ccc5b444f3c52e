"""`first()`, `cancel_and_wait()` (no task they create outlives the call), `Capacity`, `Runners`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from qworker.concurrency import Capacity, Runners, ahead, cancel_and_wait, first


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


class _Work:
    """Items that run until their event is set; records what ran and what ran at once."""

    def __init__(self) -> None:
        self.release: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.running = 0
        self.most = 0

    async def run(self, item: str) -> None:
        self.started.append(item)
        self.running += 1
        self.most = max(self.most, self.running)
        try:
            await self.release.setdefault(item, asyncio.Event()).wait()
        finally:
            self.running -= 1

    def finish(self, item: str) -> None:
        self.release.setdefault(item, asyncio.Event()).set()


def _pool(
    group: asyncio.TaskGroup, size: int, run: Callable[[str], Coroutine[Any, Any, None]]
) -> Runners[str]:
    """Runners named `h[runner <n>]`, started in `group`."""
    return Runners(size, run, lambda coro, name: group.create_task(coro, name=name), "h")


async def _settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_runners_start_as_work_comes_run_at_most_size_and_take_the_queue_in_order() -> None:
    work = _Work()
    async with asyncio.TaskGroup() as group:
        runners = _pool(group, 2, work.run)
        runners.submit("a")
        await _settle()
        assert len(runners.tasks) == 1  # one item: one runner
        for item in "bcd":
            runners.submit(item)
        await _settle()
        assert len(runners.tasks) == 2  # never more than the size
        assert work.started == ["a", "b"]
        assert len(runners) == 2  # c and d wait for a slot
        assert [runners.current(i) for i in range(3)] == ["a", "b", None]
        assert [t.get_name() for t in runners.tasks] == ["h[runner 0]", "h[runner 1]"]
        work.finish("b")
        await _settle()
        assert work.started == ["a", "b", "c"]  # the free runner takes the next, in order
        assert runners.current(1) == "c"
        for item in "acd":
            work.finish(item)
        await _settle()
        assert work.started == ["a", "b", "c", "d"]
        assert work.most == 2
        assert len(runners) == 0
        assert [runners.current(i) for i in range(2)] == [None, None]  # both idle
        runners.submit("e")  # an idle runner takes it: no third runner
        work.finish("e")
        await _settle()
        assert work.started[-1] == "e"
        assert len(runners.tasks) == 2
        runners.close()
    assert all(t.done() and not t.cancelled() for t in runners.tasks)  # idle runners ended


async def test_quick_items_submitted_together_share_a_runner_waiting_ones_each_get_one() -> None:
    ran: list[tuple[str, str]] = []
    gate = asyncio.Event()

    async def run(item: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        ran.append((item, task.get_name()))
        if item.startswith("wait"):
            await gate.wait()

    async with asyncio.TaskGroup() as group:
        runners = _pool(group, 10, run)
        for index in range(5):  # handlers that finish without waiting (a batch of a receive)
            runners.submit(f"quick {index}")
        await _settle()
        # One runner started, and it ran them all one after another: no runner per item.
        assert [item for item, _ in ran] == [f"quick {i}" for i in range(5)]
        assert {name for _, name in ran} == {"h[runner 0]"}
        assert len(runners.tasks) == 1
        ran.clear()
        for index in range(4):  # handlers that wait: each gets a runner of its own
            runners.submit(f"wait {index}")
        await _settle()
        assert [item for item, _ in ran] == [f"wait {i}" for i in range(4)]
        assert len({name for _, name in ran}) == 4  # all four run at once
        assert len(runners) == 0
        gate.set()
        await _settle()
        ran.clear()
        for index in range(3):  # idle runners: the most recently busy one takes the batch
            runners.submit(f"quick again {index}")
        await _settle()
        assert len({name for _, name in ran}) == 1
        assert len(runners.tasks) == 4
        runners.close()


async def test_runner_woken_but_beaten_to_the_item_waits_on_and_nothing_stalls() -> None:
    work = _Work()
    async with asyncio.TaskGroup() as group:
        runners = _pool(group, 2, work.run)
        runners.submit("a")
        runners.submit("b")
        await _settle()
        work.finish("a")  # runner 0 goes idle
        await _settle()
        runners.submit("c")  # wakes runner 0 ...
        work.finish("b")  # ... but runner 1, done with b, may take c first
        await _settle()
        assert sorted(work.started) == ["a", "b", "c"]
        assert work.running == 1  # c runs; the other runner idles
        assert len(runners.tasks) == 2
        runners.submit("d")
        runners.submit("e")
        await _settle()
        assert work.started[-1] == "d"
        assert len(runners) == 1  # e waits for a slot
        work.finish("c")
        await _settle()
        assert work.started[-1] == "e"
        for item in "de":
            work.finish(item)
        await _settle()
        assert len(runners) == 0
        assert work.running == 0
        runners.close()


async def test_close_runs_the_queue_at_once_though_every_runner_is_busy_then_all_end() -> None:
    work = _Work()
    async with asyncio.TaskGroup() as group:
        runners = _pool(group, 1, work.run)
        for item in ("busy", "q1", "q2"):
            runners.submit(item)
        await _settle()
        assert work.started == ["busy"]
        runners.close()
        runners.close()  # (a second stop starts nothing more)
        await _settle()
        assert work.started == ["busy", "q1", "q2"]  # not held back by the busy runner
        assert len(runners.tasks) == 3
        runners.submit("late")  # after the close: run at once too
        await _settle()
        assert work.started[-1] == "late"
        for item in ("q1", "q2", "late"):
            work.finish(item)
        await _settle()
        assert sum(not t.done() for t in runners.tasks) == 1  # only the busy one is left
        work.finish("busy")
    assert all(t.done() for t in runners.tasks)
    assert not _others()


async def test_a_cancelled_idle_runner_is_passed_over() -> None:
    work = _Work()
    async with asyncio.TaskGroup() as group:
        runners = _pool(group, 2, work.run)
        runners.submit("a")
        runners.submit("b")
        await _settle()
        work.finish("a")
        work.finish("b")
        await _settle()  # both idle
        runners.tasks[0].cancel()
        await _settle()
        runners.submit("c")  # runner 0's wake-up is gone: runner 1 takes it
        await _settle()
        assert work.started == ["a", "b", "c"]
        assert runners.current(1) == "c"
        work.finish("c")
        await _settle()
        runners.close()


async def test_a_runner_error_is_its_task_group_error() -> None:
    async def run(item: str) -> None:
        raise ValueError(item)

    async def pool() -> None:
        async with asyncio.TaskGroup() as group:
            runners = _pool(group, 4, run)
            runners.submit("boom")

    with pytest.raises(ExceptionGroup) as caught:
        await pool()
    assert [str(e) for e in caught.value.exceptions] == ["boom"]


async def test_an_item_starts_without_the_cancel_requests_an_earlier_one_left_behind() -> None:
    seen: list[tuple[str, int]] = []

    async def run(item: str) -> None:
        task = asyncio.current_task()
        assert task is not None
        seen.append((item, task.cancelling()))
        if item == "swallows":
            task.cancel()  # cancels itself and swallows it: the request stays counted on the runner
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)

    async with asyncio.TaskGroup() as group:
        runners = _pool(group, 1, run)
        runners.submit("swallows")
        runners.submit("next")
        await _settle()
        runners.close()
    assert seen == [("swallows", 0), ("next", 0)]  # the next item sees no cancel of its own
    assert len(runners.tasks) == 1


async def test_a_runner_cancelled_while_the_pool_runs_is_replaced() -> None:
    work = _Work()

    async def run(item: str) -> None:
        if item == "cancels itself":
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            await asyncio.sleep(0)  # the cancel ends the runner
        await work.run(item)

    async with asyncio.TaskGroup() as group:
        runners = _pool(group, 1, run)
        runners.submit("cancels itself")
        runners.submit("queued")
        await _settle()
        assert runners.tasks[0].cancelled()
        assert work.started == ["queued"]  # a new runner took the queued item
        assert len(runners.tasks) == 2
        work.finish("queued")
        await _settle()
        runners.submit("later")  # the pool still has its one slot
        work.finish("later")
        await _settle()
        assert work.started == ["queued", "later"]
        assert len(runners.tasks) == 2
        runners.close()
