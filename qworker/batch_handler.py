"""Batch handlers: one call with up to N messages, each message settled on its own.

```python
@app.handler("orders", batch_size=10, batch_wait_s=1.0)
async def handle(orders: list[Order]) -> BatchResult:
    result = BatchResult()
    for index, order in enumerate(orders):
        try:
            await book(order)
        except PaymentDown as exc:
            result.fail(index, Retry(delay_s=30, reason=str(exc)))
    return result
```

Not to be confused with `qworker.batch`, which gathers the worker's own deletes and visibility
changes into SQS batch calls.

Each received message is decoded on its own (one whose body does not validate is rejected and never
joins a batch) and then waits, in its own task and holding its own handler slot (so the heartbeat
keeps it invisible), until `batch_size` messages wait or the first of them has waited
`batch_wait_s`. The handler is then called once with their bodies in arrival order (and, if it asks
for a `list[Message]` parameter, the messages, aligned). Its answer is each message's outcome:

- it returns (None, or a `BatchResult` without failures): every message succeeded and is deleted;
- it returns a `BatchResult`: the items it failed take the outcome of the exception given for them
  (`Retry`, `Reject`, anything else fails it: retried with backoff, dead-lettered at the receive
  budget), the others succeeded;
- it raises: every message of the batch takes that outcome.

The call runs in the task of the message that found the batch ready; at shutdown every held task is
cancelled after the grace, as for single messages, and every message of a batch cut short is
released or retried, never deleted. `timeout_s` covers a message's wait plus the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, final

from qworker.message import Message

if TYPE_CHECKING:
    from qworker.handler import HandlerSpec

__all__ = ["BatchCutShort", "BatchOptions", "BatchResult", "BatchRunner"]

log = logging.getLogger(__name__)


@final
@dataclass(frozen=True, slots=True)
class BatchOptions:
    """A batch handler's batch: at most `size` messages, gathered for at most `wait_s`."""

    size: int
    wait_s: float


@final
class BatchResult:
    """What a batch handler says about its items: the failed ones by index; the rest succeeded."""

    __slots__ = ("_failures",)

    def __init__(self) -> None:
        """No failures yet."""
        self._failures: dict[int, BaseException] = {}

    def __repr__(self) -> str:
        """Show the failed indexes."""
        return f"BatchResult(failed={sorted(self._failures)})"

    def fail(self, index: int, error: BaseException) -> None:
        """Give item `index` the outcome of `error` (`Retry`, `Reject`, or any other: failed)."""
        self._failures[index] = error

    @property
    def failures(self) -> Mapping[int, BaseException]:
        """The failed items' errors, by index."""
        return types.MappingProxyType(self._failures)


class BatchCutShort(Exception):
    """The batch call ended without an answer for this message (shutdown or a timeout)."""


@dataclass(slots=True)
class _Entry:
    argument: object
    message: Message
    result: asyncio.Future[None]


@dataclass(slots=True)
class _Pending:
    deadline: float
    entries: list[_Entry] = field(default_factory=list)
    full: asyncio.Event = field(default_factory=asyncio.Event)
    taken: bool = False


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark an unawaited future's exception as seen (its waiter was cancelled)."""
    if not future.cancelled():
        future.exception()


@final
class BatchRunner:
    """Gathers one queue's messages for a batch handler; `submit` is a message's handler call."""

    def __init__(self, spec: HandlerSpec, options: BatchOptions) -> None:
        """Gather for `spec` in batches of `options`."""
        self.spec = spec
        self.options = options
        self._pending: _Pending | None = None

    async def submit(self, argument: object, message: Message) -> None:
        """Wait for this message's batch, run it if ready first, raise this message's outcome."""
        loop = asyncio.get_running_loop()
        pending = self._pending
        if pending is None or pending.taken or pending.full.is_set():
            pending = self._pending = _Pending(deadline=loop.time() + self.options.wait_s)
        entry = _Entry(argument, message, loop.create_future())
        entry.result.add_done_callback(_retrieve)
        pending.entries.append(entry)
        if len(pending.entries) >= self.options.size:
            pending.full.set()
        try:
            if not pending.taken:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout_at(pending.deadline):
                        await pending.full.wait()
            if not pending.taken:
                pending.taken = True
                if self._pending is pending:
                    self._pending = None
                await self._run(pending.entries)
        except asyncio.CancelledError:
            if not pending.taken:
                pending.entries.remove(entry)  # not handled: released by the consumer
                if not pending.entries and self._pending is pending:
                    self._pending = None  # the next message starts a fresh wait
            raise
        await entry.result

    async def _run(self, entries: Sequence[_Entry]) -> None:
        """Call the handler once; resolve every entry's result from its answer."""
        try:
            answer = await self._call([e.argument for e in entries], [e.message for e in entries])
        except (asyncio.CancelledError, GeneratorExit):
            cut = BatchCutShort("the batch call was cut short (shutdown or a timeout)")
            for e in entries:
                if not e.result.done():
                    e.result.set_exception(cut)
            raise
        except BaseException as exc:  # noqa: BLE001 (the whole batch takes the handler's outcome)
            # A future cannot hold StopIteration; it fails the batch all the same.
            error = RuntimeError(repr(exc)) if isinstance(exc, StopIteration) else exc
            for e in entries:
                if not e.result.done():
                    e.result.set_exception(error)
            return
        failures = self._failures(answer, len(entries))
        for index, e in enumerate(entries):
            if e.result.done():
                continue  # its waiter is gone (its own timeout): the consumer settled it already
            failed = failures.get(index)
            if failed is None:
                e.result.set_result(None)
            else:
                e.result.set_exception(failed)

    def _failures(self, answer: object, size: int) -> Mapping[int, BaseException]:
        """The failed items of a batch of `size` by index, from what the handler returned."""
        if answer is None:
            return {}
        if not isinstance(answer, BatchResult):
            wrong = TypeError(f"batch handler returned {type(answer).__name__}, not a BatchResult")
            return dict.fromkeys(range(size), wrong)
        failures = answer.failures
        unknown = sorted(i for i in failures if not 0 <= i < size)
        if unknown:
            log.warning(
                "batch handler failed items that are not in its batch of %d: %s",
                size,
                unknown,
                extra={"action": "batch_result_unknown_items", "handler": self.spec.name},
            )
        return failures

    async def _call(self, items: list[object], messages: list[Message]) -> object:
        spec = self.spec
        args: tuple[object, ...] = (items,)
        kwargs: dict[str, object] = {}
        if spec.message_param == "/":
            args = (items, messages)
        elif spec.message_param:
            kwargs[spec.message_param] = messages
        if spec.inject is not None:
            kwargs.update(await spec.inject(messages[0]))
        if spec.is_async:
            return await spec.func(*args, **kwargs)  # type: ignore[misc]  # checked by is_async
        returned, raised = await asyncio.to_thread(_capture, spec.func, args, kwargs)
        if raised is not None:
            raise raised
        return returned


def _capture(
    func: object, args: tuple[object, ...], kwargs: dict[str, object]
) -> tuple[object, BaseException | None]:
    """Run a sync batch handler in its thread; return its answer or what it raised."""
    try:
        return func(*args, **kwargs), None  # type: ignore[operator]  # a checked handler
    except BaseException as exc:  # noqa: BLE001 (handed back to the event loop, raised there)
        return None, exc
