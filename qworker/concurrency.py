"""Small asyncio building blocks the consumer and the worker share.

- `Capacity`: messages the consumer may hold that have not finished running; pollers take up to a
  batch before they receive (capacity before receive, docs/architecture.md), waiting for a batch's
  worth of free slots or a short linger, so freed slots do not each turn into a small receive.
- `Runners`: handler slots (the concurrency) as a pool of runner tasks, started as work comes; a
  held message waits in its queue for a free runner, and is run at once when the pool is closed
  at shutdown (the consumer then lets it go unstarted). `ahead()`: how many messages may wait.
- `first()`: wait until the first of several awaitables is done (a receive or `stop()`, a pause or
  `stop()`), cancelling the others and waiting for them to end (`cancel_and_wait()`), so no task
  outlives the call.
- `leaves()`: the exceptions inside (nested) exception groups, so one failure inside task groups
  can be reported as itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, Final, Generic, TypeVar, final

__all__ = [
    "AHEAD_ROUND_TRIPS",
    "TAKE_LINGER_S",
    "Capacity",
    "Runners",
    "ahead",
    "cancel_and_wait",
    "first",
    "leaves",
]

T = TypeVar("T")

TAKE_LINGER_S: Final = 0.005
"""How long a take waits for more slots once at least one is free (then it takes what is free)."""

AHEAD_ROUND_TRIPS: Final = 2.0
"""Messages held beyond the running handlers: this many receive round trips' worth of them."""


def ahead(
    concurrency: int, receives: int, batch: int, handler_s: float, round_trip_s: float
) -> int:
    """How many messages to hold beyond the running handlers (being received, or queued for a slot).

    Enough that the handlers never wait for a receive: the handlers finish `concurrency /
    handler_s` messages a second, so `AHEAD_ROUND_TRIPS` receive round trips' worth of them (one
    spent in the receive, so a message waits about one round trip for a slot). At least
    `min(batch, concurrency)` (one receive's worth, so the next receive overlaps the running
    handlers; with slow handlers a message waits at most one handler run), at most two receives
    per poller (a bound on a bad estimate).

    Args:
        concurrency: Handler slots.
        receives: Receive loops (pollers).
        batch: The most messages one receive returns.
        handler_s: A handler's typical run (0: not known yet, then `min(concurrency, most)`).
        round_trip_s: A receive's typical round trip.
    """
    most = 2 * batch * receives
    if handler_s <= 0:
        return min(concurrency, most)
    wanted = math.ceil(AHEAD_ROUND_TRIPS * concurrency * round_trip_s / handler_s)
    return min(most, max(min(batch, concurrency), wanted))


@final
class Capacity:
    """Free slots for messages to hold: a take waits for a batch's worth, or a short linger.

    A waiting take is woken only when enough slots are free for it, or once when a first slot is
    free (its linger starts), not on every slot given back: with many pollers waiting while
    handlers finish one at a time, waking each of them per message would cost more than the
    messages.
    """

    def __init__(self, total: int, linger_s: float = TAKE_LINGER_S) -> None:
        """Start with `total` free slots.

        Args:
            total: Slots in all.
            linger_s: Once a slot is free, how long a take may wait for up to the batch it asks.
        """
        self.total = total
        self.free = total
        self.linger_s = linger_s
        self._waiters: dict[asyncio.Future[None], tuple[int, bool]] = {}
        """Waiting takes: how many slots each wants, and whether its linger has started."""

    async def take(self, most: int, stopping: asyncio.Event) -> int:
        """Take up to `most` slots; 0 once `stopping` is set.

        Waits until `min(most, total)` slots are free, or until `linger_s` has passed since a
        first slot was free (then takes those), so slots freed one at a time are gathered into
        one receive instead of each making its own.
        """
        want = min(most, self.total)
        while self.free < want and not stopping.is_set():
            if await self._wait(want, stopping) and self.free > 0:
                break  # lingered long enough, and slots are still free after the clean-up
        if stopping.is_set():
            return 0
        taken = min(most, self.free)
        self.free -= taken
        return taken

    async def _wait(self, want: int, stopping: asyncio.Event) -> bool:
        """Wait for `want` free slots, a stop, or the end of a linger (then True)."""
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        stop: asyncio.Task[object] | None = None
        try:
            while self.free < want and not stopping.is_set():
                if self.free <= 0:
                    deadline = None  # the free slots went to another take: linger anew
                elif deadline is None:
                    deadline = loop.time() + self.linger_s
                elif loop.time() >= deadline:
                    return True
                if stop is None:
                    stop = loop.create_task(stopping.wait())
                    stop.add_done_callback(self._wake_all)
                waiter: asyncio.Future[None] = loop.create_future()
                self._waiters[waiter] = (want, deadline is not None)
                timer = None if deadline is None else loop.call_at(deadline, _wake, waiter)
                try:
                    await waiter
                finally:
                    self._waiters.pop(waiter, None)
                    if timer is not None:
                        timer.cancel()
        finally:
            if stop is not None:
                stop.remove_done_callback(self._wake_all)
                await cancel_and_wait([stop])  # (others may take slots meanwhile)
        return False

    def give(self, count: int) -> None:
        """Give slots back."""
        self.free += count
        if self._waiters:
            self._wake()

    def resize(self, total: int) -> None:
        """Change the number of slots (free may go below 0: takes wait until it is positive)."""
        grown = total - self.total
        if grown:
            self.total = total
            self.free += grown
            if grown > 0 and self._waiters:
                self._wake()

    def _wake(self) -> None:
        """Wake the waiting takes the free slots can serve, oldest first; start lingers."""
        budget = self.free
        for waiter, (want, lingering) in list(self._waiters.items()):
            if budget <= 0:
                return
            if budget >= want:
                budget -= want
                _wake(waiter)
            elif not lingering:
                _wake(waiter)  # a first slot is free: it starts its linger

    def _wake_all(self, _: object = None) -> None:
        for waiter in list(self._waiters):
            _wake(waiter)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@final
class Runners(Generic[T]):
    """Handler slots as a pool of runner tasks: at most `size` run at once, each one item at a time.

    `submit()` queues an item and wakes an idle runner, or starts a new one while fewer than
    `size` run (so a worker that never needs its whole concurrency never starts it); a runner
    that finishes an item takes the next queued one without waiting. Items submitted together
    (a received batch) wake one runner; what is still queued after its turn (its item's handler
    waits) wakes one more runner per item. An item waits in the queue while every runner is busy
    (a message held ahead, at its handler slot). Cheaper per item than a task per item: no task,
    context copy or done callback, and at most one wake-up.

    `close()` (shutdown) wakes every idle runner and starts one more for each queued item nobody
    idle takes: queued items are run at once (the consumer lets them go unstarted, as it is
    stopping), busy runners finish their item, and every runner ends once the queue is empty.

    Each item starts as it would in a task of its own: a cancel request an earlier item left
    pending on the runner (one it swallowed) is dropped, so `Task.cancelling()` means this item's
    cancellation; and a runner that ends by a cancel while the pool runs (an item that cancelled
    its own task) is replaced, so the pool keeps its size.
    """

    __slots__ = (
        "_current",
        "_event_loop",
        "_idle",
        "_live",
        "_name",
        "_pending",
        "_run",
        "_spawn",
        "_topping",
        "closed",
        "size",
        "tasks",
    )

    def __init__(
        self,
        size: int,
        run: Callable[[T], Coroutine[Any, Any, None]],
        spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task[None]],
        name: str,
    ) -> None:
        """A pool of at most `size` runners calling `run(item)`; `spawn(coro, name)` starts one.

        `spawn` creates the runner's task (in the caller's task group: a runner's error is the
        group's); runners are named `{name}[runner {index}]`.
        """
        self.size = size
        self._run = run
        self._spawn = spawn
        self._name = name
        self._pending: deque[T] = deque()
        self._idle: deque[asyncio.Future[None]] = deque()
        self._current: list[T | None] = []
        self.tasks: list[asyncio.Task[None]] = []
        """Every runner started (the shutdown grace waits for them)."""
        self._live = 0
        self._event_loop: asyncio.AbstractEventLoop | None = None
        self._topping = False
        self.closed = False

    def __len__(self) -> int:
        """Queued items, not yet taken by a runner."""
        return len(self._pending)

    def current(self, index: int) -> T | None:
        """The item runner `index` is running (None: idle, or no such runner)."""
        return self._current[index] if 0 <= index < len(self._current) else None

    def submit(self, item: T) -> None:
        """Queue `item` for the next free runner."""
        self._pending.append(item)
        if self._topping:
            return  # a runner is on its way, and the top-up comes after it
        self._topping = True
        self._wake_one()
        # The runner woken (or started) now runs first and takes queued items one after another
        # while their handlers finish without waiting; only what is still queued after it had
        # its turn wakes more runners. A batch of quick handlers then costs one wake-up, not one
        # per message; a handler that waits has the rest started one loop iteration later.
        if self._event_loop is None:
            self._event_loop = asyncio.get_running_loop()
        self._event_loop.call_soon(self._top_up)

    def _top_up(self) -> None:
        """Wake a runner for each item still queued (as far as the pool has runners to give)."""
        self._topping = False
        if self.closed:
            return  # close() gave every queued item a runner
        with contextlib.suppress(RuntimeError):  # its task group is shutting down
            for _ in range(len(self._pending)):
                if not self._wake_one():
                    return

    def _wake_one(self) -> bool:
        """Wake an idle runner, or start one while fewer than `size` run (False: all are busy)."""
        idle = self._idle
        while idle:
            # The runner idle the shortest time: a few runners stay warm (in the CPU's caches)
            # while the rest sleep, instead of every runner taking its turn.
            waiter = idle.pop()
            if not waiter.done():  # (a cancelled runner's is)
                waiter.set_result(None)
                return True
        if self._live < self.size or self.closed:
            self._start()
            return True
        return False

    def close(self) -> None:
        """Run what is queued at once, then let every runner end (idempotent)."""
        if self.closed:
            return
        self.closed = True
        woken = 0
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                woken += 1
        for _ in range(len(self._pending) - woken):
            self._start()

    def _start(self) -> None:
        index = len(self.tasks)
        self._current.append(None)
        self._live += 1
        self.tasks.append(self._spawn(self._loop(index), f"{self._name}[runner {index}]"))

    async def _loop(self, index: int) -> None:
        pending = self._pending
        current = self._current
        run = self._run
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 (a runner is a task)
        try:
            while True:
                if pending:
                    while task.cancelling():  # left by an earlier item: not this one's
                        task.uncancel()
                    item = pending.popleft()
                    current[index] = item
                    try:
                        await run(item)
                    finally:
                        current[index] = None
                elif self.closed:
                    return
                else:
                    waiter = loop.create_future()
                    self._idle.append(waiter)
                    await waiter
        finally:
            # Ended by a cancel (or an error) while the pool runs: another takes what is queued
            # (if none is, the next submit starts one).
            self._live -= 1
            if pending and not self.closed and self._live < self.size:
                with contextlib.suppress(RuntimeError):  # its task group is shutting down
                    self._start()


async def first(*awaitables: Awaitable[object], cancel: bool = True) -> None:
    """Wait until the first of `awaitables` is done; cancel the others and wait for them to end.

    No task this creates outlives the call, also when the call itself is cancelled (a sibling
    poller failed): the ones it cancels are awaited.

    Args:
        *awaitables: What to wait for.
        cancel: With False, the first awaitable is left running (the caller decides its fate,
            also when the wait is interrupted: the caller must then cancel it itself).
    """
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    others = tasks if cancel else tasks[1:]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(others)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel the tasks not done yet and wait until they have ended (their errors are dropped)."""
    pending = [task for task in tasks if not task.done()]
    if not pending:
        return
    for task in pending:
        task.cancel()
    await asyncio.wait(pending)


def leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    """The exceptions inside `group` and the groups nested in it, in order."""
    found: list[BaseException] = []
    for exc in group.exceptions:
        found.extend(leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return found
