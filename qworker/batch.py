"""Batching: gather single requests (deletes, visibility changes) into SQS batch calls.

Callers `await batcher.submit(item)` and get back the entry's `BatchFailure`, or None when it
succeeded; or `batcher.enqueue(item)` for the future, or `batcher.send_soon(item, done, token)`
for `done(token, answer)` to be called synchronously (no future, no waiting task, and one `done`
for every item: the consumer's success path uses it). The batcher collects up to 10 items, or what
arrives within a few milliseconds, sends them in one call, and resolves every caller. Entry ids
are the entries' indexes in the batch (see `SqsTransport`), and every failed entry is handed back
to its caller, never dropped. Transient errors (of the whole call, or of entries the server did
not blame on us) are retried with a short backoff. One try that gets no answer within
`attempt_timeout_s` is cut short and retried like a transient error: a pooled connection that
silently died must not use up the whole batch's time (cancelling the call closes that connection,
so the retry goes out on another). `flush()` waits until every item queued so far has its answer
(a consumer's last step before it stops).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Generic, TypeAlias, TypeVar, final

from qworker.exceptions import QueueUnavailable, TransientTransportError, TransportError
from qworker.message import BatchFailure
from qworker.transport import MAX_BATCH

__all__ = ["Batcher", "Done", "describe_failure"]

log = logging.getLogger(__name__)

T = TypeVar("T")

Done: TypeAlias = Callable[[Any, BatchFailure | None, TransportError | None], None]
"""Called once with the entry's token and its answer: its failure (None: it succeeded), or the
call's error."""

_Target: TypeAlias = "asyncio.Future[BatchFailure | None] | Done"
_Entry: TypeAlias = "tuple[T, _Target, object]"
"""An item, who gets its answer, and the token a `Done` gets back."""

DEFAULT_MAX_WAIT_S: Final = 0.002
"""How long a partial batch waits for more entries: short, as a held message burns visibility."""

DEFAULT_ATTEMPTS: Final = 4
"""Tries of one batch call against transient errors before its callers get the error."""

RETRY_BASE_S: Final = 0.05
"""First backoff between tries; doubles each time, with full jitter."""

DEFAULT_TIMEOUT_S: Final = 10.0
"""The longest one batch may take, tries included, before its callers are told it failed."""

DEFAULT_ATTEMPT_TIMEOUT_S: Final = 4.0
"""The longest one try may wait for its answer before it is cut short and tried again."""


@final
class Batcher(Generic[T]):
    """Gathers items into batch calls of at most `MAX_BATCH` entries."""

    def __init__(
        self,
        send: Callable[[Sequence[T]], Awaitable[list[BatchFailure]]],
        *,
        name: str,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        max_concurrent: int = 16,
        attempts: int = DEFAULT_ATTEMPTS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        attempt_timeout_s: float = DEFAULT_ATTEMPT_TIMEOUT_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Create a batcher; run it with `run()` in a task group.

        Args:
            send: Sends one batch and returns its failed entries by index.
            name: For logs and task names.
            max_wait_s: How long a partial batch waits for more entries.
            max_concurrent: Batch calls in flight at once.
            attempts: Tries against transient errors.
            timeout_s: The longest one batch may take, tries included.
            attempt_timeout_s: The longest one try may wait for its answer.
            sleep: Injectable sleep for the backoff.
        """
        self._send = send
        self.name = name
        self._max_wait_s = max_wait_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._attempts = attempts
        self._timeout_s = timeout_s
        self._attempt_timeout_s = attempt_timeout_s
        self._sleep = sleep
        self._items: deque[_Entry[T]] = deque()
        self._arrived: asyncio.Future[None] | None = None  # the collector waits for a first item
        self._filled: asyncio.Future[None] | None = None  # ... then, lingering, for a full batch
        self.calls = 0
        self._unanswered = 0
        self._answered = asyncio.Event()

    def enqueue(self, item: T) -> asyncio.Future[BatchFailure | None]:
        """Queue one item; the future resolves to its entry's failure (None: it succeeded).

        The future fails with `TransportError` when the batch call failed for good or timed out.
        Cancelling a wait on it does not take the item back: shield it, and it is still sent.
        """
        future: asyncio.Future[BatchFailure | None] = asyncio.get_running_loop().create_future()
        self._put((item, future, None))
        return future

    def send_soon(self, item: T, done: Done, token: object = None) -> None:
        """Queue one item; `done` is called once, synchronously, with `token` and its answer.

        `done(token, failure, None)`: the entry's failure, None when it succeeded;
        `done(token, None, error)`: the batch call failed for good or timed out. An error `done`
        raises is logged, not raised. (The token saves a callback object per item: one `done`
        serves every item.)
        """
        self._put((item, done, token))

    def _put(self, entry: _Entry[T]) -> None:
        self._unanswered += 1
        items = self._items
        items.append(entry)
        if self._arrived is not None:
            _wake(self._arrived)
        if self._filled is not None and len(items) >= MAX_BATCH:
            _wake(self._filled)

    async def flush(self) -> None:
        """Wait until every item queued so far has its answer (the batches' timeouts bound it)."""
        while self._unanswered:
            self._answered.clear()
            await self._answered.wait()

    async def submit(self, item: T) -> BatchFailure | None:
        """Queue one item and wait for its batch's answer.

        Raises:
            TransportError: The batch call failed for good.
        """
        return await self.enqueue(item)

    async def run(self) -> None:
        """Send batches until cancelled."""
        async with asyncio.TaskGroup() as group:
            while True:
                batch = await self._collect()
                await self._slots.acquire()
                group.create_task(self._flush(batch), name=f"{self.name} batch")

    async def _collect(self) -> list[_Entry[T]]:
        """The next batch: up to 10 queued items, after up to `max_wait_s` for a full batch."""
        items = self._items
        loop = asyncio.get_running_loop()
        while not items:
            self._arrived = loop.create_future()
            try:
                await self._arrived
            finally:
                self._arrived = None
        if len(items) < MAX_BATCH and self._max_wait_s > 0:
            self._filled = loop.create_future()
            timer = loop.call_later(self._max_wait_s, _wake, self._filled)
            try:
                await self._filled
            finally:
                timer.cancel()
                self._filled = None
        return [items.popleft() for _ in range(min(MAX_BATCH, len(items)))]

    async def _flush(self, batch: list[_Entry[T]]) -> None:
        pending = batch  # (an entry is answered once: only the unanswered fail at the timeout)
        try:
            async with asyncio.timeout(self._timeout_s):
                for attempt in range(1, self._attempts + 1):
                    pending = await self._try(pending, final=attempt == self._attempts)
                    if not pending:
                        return
                    await self._sleep(random.uniform(0, RETRY_BASE_S * 2 ** (attempt - 1)))  # noqa: S311 (jitter, not crypto)
        except TimeoutError:
            self._fail_all(
                pending, TransportError(f"{self.name} batch timed out after {self._timeout_s:g} s")
            )
        finally:
            self._slots.release()

    async def _try(self, batch: list[_Entry[T]], *, final: bool) -> list[_Entry[T]]:
        """Send once; resolve what is settled and return what should be tried again."""
        self.calls += 1
        try:
            try:
                async with asyncio.timeout(self._attempt_timeout_s):
                    failures = await self._send([entry[0] for entry in batch])
            except TimeoutError:
                raise QueueUnavailable(
                    f"{self.name} batch call: no answer within {self._attempt_timeout_s:g} s"
                ) from None
        except TransientTransportError as exc:
            if not final:
                log.warning(
                    "batch call failed, retrying",
                    extra={"action": f"{self.name}_retry", "error": str(exc)},
                )
                return batch
            self._fail_all(batch, exc)
            return []
        except TransportError as exc:
            self._fail_all(batch, exc)
            return []
        by_index = {f.index: f for f in failures} if failures else {}
        retry: list[_Entry[T]] = []
        for index, entry in enumerate(batch):
            failure = by_index.get(index)
            if failure is not None and not failure.sender_fault and not final:
                retry.append(entry)
            else:
                self._answer(entry, failure, None)
        return retry

    def _fail_all(self, batch: list[_Entry[T]], exc: TransportError) -> None:
        for entry in batch:
            self._answer(entry, None, exc)

    def _answer(
        self, entry: _Entry[T], failure: BatchFailure | None, error: TransportError | None
    ) -> None:
        """Give one entry its answer (exactly once per entry)."""
        _, target, token = entry
        self._unanswered -= 1
        if not self._unanswered:
            self._answered.set()
        if isinstance(target, asyncio.Future):
            if target.done():
                return
            if error is not None:
                target.set_exception(error)
            else:
                target.set_result(failure)
            return
        try:
            target(token, failure, error)
        except Exception:
            log.exception(
                "batch answer callback failed", extra={"action": f"{self.name}_callback_failed"}
            )


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def describe_failure(failure: BatchFailure | None, error: TransportError | None) -> str | None:
    """Why a batched action failed (None: it worked), from its batch answer."""
    if error is not None:
        return str(error)
    return None if failure is None else f"{failure.code}: {failure.message}"
