"""Small asyncio building blocks the consumer and the worker share.

- `Capacity`: free handler slots; pollers take up to a batch before they receive, settlement gives
  them back (capacity before receive, docs/architecture.md).
- `first()`: wait until the first of several awaitables is done (a receive or `stop()`, a pause or
  `stop()`), cancelling the others and waiting for them to end (`cancel_and_wait()`), so no task
  outlives the call.
- `leaves()`: the exceptions inside (nested) exception groups, so one failure inside task groups
  can be reported as itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import Any, final

__all__ = ["Capacity", "cancel_and_wait", "first", "leaves"]


@final
class Capacity:
    """Free handler slots."""

    def __init__(self, total: int) -> None:
        """Start with `total` free slots."""
        self.total = total
        self.free = total
        self._changed = asyncio.Event()

    async def take(self, most: int, stopping: asyncio.Event) -> int:
        """Wait for a free slot, then take up to `most`; 0 once `stopping` is set."""
        while self.free == 0 and not stopping.is_set():
            self._changed.clear()
            await first(stopping.wait(), self._changed.wait())
        if stopping.is_set():
            return 0
        taken = min(most, self.free)
        self.free -= taken
        return taken

    def give(self, count: int) -> None:
        """Give slots back."""
        self.free += count
        self._changed.set()


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
