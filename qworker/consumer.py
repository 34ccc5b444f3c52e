"""The consumer: receive messages of one queue, run them with bounded concurrency, settle each.

Pollers take capacity before they receive (`min(10, free slots)`), so the worker never holds a
message it cannot start soon; several pollers keep the handlers fed while one waits on a long poll.
Every message is held by the heartbeat from receive to settlement. All tasks are owned by task
groups inside `run()`.

Shutdown (`stop()`, from a signal or the embedding app) has a fixed order:
1. `stop()` only sets an event; pollers stop at once, cancelling a pending long poll;
2. messages received but not started are released (visible again at once);
3. running handlers get `shutdown_grace_s`, then are cancelled; a cancelled handler's message is
   never deleted, only released;
4. pending deletes and visibility changes are flushed, then `run()` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Protocol, final

from qworker.concurrency import Capacity, first, leaves
from qworker.dispatch import Dispatcher
from qworker.exceptions import TransientTransportError
from qworker.groups import GroupChains, GroupRetry
from qworker.heartbeat import Heartbeat, Held
from qworker.outcome import Outcome, OutcomeRecord
from qworker.settle import Settler
from qworker.transport import MAX_BATCH, Message, QueueTransport

__all__ = ["Consumer", "ConsumerStatistics", "OutcomeSink"]

log = logging.getLogger(__name__)

RECEIVE_BACKOFF_BASE_S: Final = 0.5
"""First pause after a failed receive; doubles per consecutive failure, with full jitter."""

RECEIVE_BACKOFF_MAX_S: Final = 20.0
"""Longest pause between receive attempts during an outage (a long poll's length)."""

_LOG_LEVELS: Final = {
    Outcome.SUCCEEDED: logging.DEBUG,
    Outcome.RELEASED: logging.DEBUG,
    Outcome.RETRIED: logging.INFO,
    Outcome.FAILED: logging.WARNING,
    Outcome.REJECTED: logging.WARNING,
}


_COMES_BACK: Final = frozenset({Outcome.FAILED, Outcome.RETRIED, Outcome.RELEASED})
"""Outcomes that leave the message on the queue (a drain must look again)."""


class OutcomeSink(Protocol):
    """Receives every outcome record once its action on the queue is done (metrics, health)."""

    def record(self, record: OutcomeRecord) -> None:
        """Take one outcome; must be quick and must not raise."""
        ...


@final
@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """A consumer's counters."""

    received: int = 0
    in_flight: int = 0
    acked: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    released: int = 0
    handed_back: int = 0
    unsettled: int = 0
    duplicates: int = 0
    receive_errors: int = 0
    receives: int = 0
    last_receive_s: float | None = None
    stopping: bool = False


@final
class Consumer:
    """Consumes one queue with one dispatcher."""

    def __init__(
        self,
        transport: QueueTransport,
        dispatcher: Dispatcher,
        *,
        visibility_timeout_s: int,
        concurrency: int = 16,
        pollers: int = 2,
        wait_time_s: int = 20,
        request_visibility: bool = False,
        fifo: bool = False,
        shutdown_grace_s: float = 25.0,
        max_hold_s: float = 3600.0,
        max_receive_count: int | None = None,
        settler: Settler | None = None,
        sinks: Sequence[OutcomeSink] = (),
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Create a consumer; `run()` it.

        Args:
            transport: The queue.
            dispatcher: Runs one message through the handler.
            visibility_timeout_s: The visibility receives give (the queue's, or the one asked).
            concurrency: Messages held (running or waiting) at once.
            pollers: Concurrent receive loops.
            wait_time_s: Long-poll wait.
            request_visibility: Ask for `visibility_timeout_s` on each receive (else the queue's).
            fifo: Run each message group's messages in order.
            shutdown_grace_s: Time running handlers get after `stop()`.
            max_hold_s: The heartbeat's limit.
            max_receive_count: The queue's redrive budget: a FIFO head that fails this often is
                dead-lettered in place (None: no redrive policy).
            settler: Records outcomes on the queue (default: one over `transport`).
            sinks: Receive every outcome record.
            clock: Monotonic seconds.
            sleep: Injectable sleep (receive backoff, heartbeat).
        """
        self.transport = transport
        self.dispatcher = dispatcher
        self.concurrency = concurrency
        self.pollers = pollers
        self.wait_time_s = wait_time_s
        self.fifo = fifo
        self.shutdown_grace_s = shutdown_grace_s
        self._request_visibility = visibility_timeout_s if request_visibility else None
        self.settler = settler or Settler(transport)
        self.heartbeat = Heartbeat(
            transport,
            visibility_timeout_s=visibility_timeout_s,
            max_hold_s=max_hold_s,
            clock=clock,
            sleep=sleep,
        )
        self._sinks = list(sinks)
        self._clock = clock
        self._sleep = sleep
        self._stopping = asyncio.Event()
        self._drain = False
        self._capacity = Capacity(concurrency)
        self._running: set[asyncio.Task[None]] = set()
        self._groups = GroupChains(
            process=self._process,
            release=self._release,
            stopping=lambda: self.stopping,
            retry=None if self.settler.release_failed else self._group_retry(max_receive_count),
        )
        self._deleting: Counter[str] = Counter()  # ids whose success is being deleted
        self._duplicates = 0
        self._changed = asyncio.Event()
        self._may_return = asyncio.Event()
        self._counts = dict.fromkeys(Outcome, 0)
        self._received = 0
        self._unsettled = 0
        self._receive_errors = 0
        self._receiving = 0
        self._receives = 0
        self._last_receive_s: float | None = None
        self._poll_cancelled_at: float | None = None
        self.cut_short: list[str] = []
        """Ids of messages whose handlers the shutdown grace cut short (released, not deleted)."""
        self.unreleased: list[str] = []
        """Ids of messages that could not be released while stopping (left to lapse)."""

    def __repr__(self) -> str:
        """Show the queue and counters."""
        return f"Consumer({self.transport.queue_name!r}, {self.statistics()})"

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the consumer to shut down; idempotent, synchronous, safe from a signal handler."""
        if self._receiving and not self._drain and not self.stopping:
            # The server may still answer the long polls cancelled now, taking messages nobody
            # will see (see _release).
            self._poll_cancelled_at = self._clock()
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopping.is_set()

    async def run(self) -> None:
        """Consume until `stop()`; if cancelled, shut down in order and re-raise."""
        inner = asyncio.ensure_future(self._run())
        try:
            await asyncio.shield(inner)
        except asyncio.CancelledError:
            self.stop()
            await inner
            raise
        except BaseExceptionGroup as group:
            # Task groups wrap a failure in (nested) groups; one failure is raised as itself.
            found = leaves(group)
            if len(found) == 1:
                raise found[0] from None
            raise

    async def run_until_empty(self) -> None:
        """Consume until a receive finds nothing and nothing is held (for tests and batch jobs)."""
        self._drain = True
        await self.run()

    async def wait_in_flight(self, count: int) -> None:
        """Wait until at least `count` messages are held."""
        await self._wait_for(lambda: len(self.heartbeat) >= count)

    async def wait_idle(self) -> None:
        """Wait until no message is held."""
        await self._wait_for(lambda: len(self.heartbeat) == 0)

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            self._changed.clear()
            await self._changed.wait()

    def statistics(self) -> ConsumerStatistics:
        """Return the counters."""
        return ConsumerStatistics(
            received=self._received,
            in_flight=len(self.heartbeat),
            acked=self._counts[Outcome.SUCCEEDED],
            failed=self._counts[Outcome.FAILED],
            retried=self._counts[Outcome.RETRIED],
            rejected=self._counts[Outcome.REJECTED],
            released=self._counts[Outcome.RELEASED],
            handed_back=self.settler.handed_back,
            unsettled=self._unsettled,
            duplicates=self._duplicates,
            receive_errors=self._receive_errors,
            receives=self._receives,
            last_receive_s=self._last_receive_s,
            stopping=self.stopping,
        )

    # -- the loops -------------------------------------------------------------------------------

    async def _run(self) -> None:
        queue = self.transport.queue_name
        log.info("consumer started", extra={"action": "consumer_started", "queue": queue})
        async with asyncio.TaskGroup() as infra:
            settler = infra.create_task(self.settler.run(), name=f"settle {queue}")
            heartbeat = infra.create_task(self.heartbeat.run(), name=f"heartbeat {queue}")
            async with asyncio.TaskGroup() as work:
                async with asyncio.TaskGroup() as polls:
                    for index in range(self.pollers):
                        polls.create_task(self._poll(work), name=f"poll {queue}[{index}]")
                await self._grace()
            heartbeat.cancel()
            settler.cancel()
        log.info(
            "consumer stopped",
            extra={"action": "consumer_stopped", "queue": queue, "stats": repr(self.statistics())},
        )

    async def _grace(self) -> None:
        """Give running handlers the grace period, then cancel the rest."""
        if not self._running:
            return
        _, pending = await asyncio.wait(self._running, timeout=self.shutdown_grace_s)
        for task in pending:
            task.cancel()
        if pending:
            self.cut_short = [h.message.message_id for h in self.heartbeat if h.started]
            log.warning(
                "shutdown grace period over; cancelling running handlers",
                extra={
                    "action": "grace_expired",
                    "queue": self.transport.queue_name,
                    "count": len(pending),
                    "message_ids": self.cut_short,
                },
            )

    async def _poll(self, work: asyncio.TaskGroup) -> None:
        failures = 0
        while not self.stopping:
            slots = await self._capacity.take(MAX_BATCH, self._stopping)
            if slots == 0:
                return
            try:
                messages = await self._receive(slots)
            except TransientTransportError as exc:
                self._capacity.give(slots)
                failures += 1
                self._receive_errors += 1
                await self._backoff(failures, exc)
                continue
            except BaseException:
                self._capacity.give(slots)
                raise
            failures = 0
            self._capacity.give(slots - len(messages))
            if not messages and self._drain:
                if len(self.heartbeat) == 0 and self._receiving == 0:
                    self.stop()
                    return
                # Other pollers hold or are receiving messages that may come back: wait until one
                # may have (an outcome that makes it visible again, or a receive ending), then
                # look again. Successes do not wake the drain: they bring nothing back.
                self._may_return.clear()
                await first(self._may_return.wait(), self._stopping.wait())
            self._start(messages, work)

    async def _receive(self, slots: int) -> list[Message]:
        """Receive, or return nothing as soon as `stop()` is called.

        A drain (`run_until_empty`) uses short polls and lets them finish: they are quick, and a
        receive cancelled in flight would strand its messages until their visibility lapses.
        """
        self._receiving += 1
        try:
            return await self._receive_once(slots)
        finally:
            self._receiving -= 1
            self._changed.set()
            if self._receiving == 0 and len(self.heartbeat) == 0:
                # Only now may a waiting drain poller find the queue done; waking it after every
                # receive would have idle pollers wake each other in turn while a handler works.
                self._may_return.set()

    async def _receive_once(self, slots: int) -> list[Message]:
        receive = asyncio.ensure_future(
            self.transport.receive(
                slots,
                wait_time_s=0 if self._drain else self.wait_time_s,
                visibility_timeout_s=self._request_visibility,
            )
        )
        if not self._drain:
            await first(receive, self._stopping.wait(), cancel=False)
            if not receive.done():
                receive.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            messages = await receive
            self._receives += 1
            self._last_receive_s = self._clock()
            self._received += len(messages)
            return messages
        return []

    async def _backoff(self, failures: int, exc: TransientTransportError) -> None:
        delay = random.uniform(  # noqa: S311 (jitter, not cryptography)
            0, min(RECEIVE_BACKOFF_MAX_S, RECEIVE_BACKOFF_BASE_S * 2 ** min(failures - 1, 16))
        )
        log.warning(
            "receive failed; backing off",
            extra={
                "action": "receive_failed",
                "queue": self.transport.queue_name,
                "error": str(exc),
                "error_type": type(exc).__name__,
                "attempt": failures,
                "delay_s": round(delay, 3),
            },
        )
        await first(self._stopping.wait(), self._sleep(delay))

    def _start(self, messages: list[Message], work: asyncio.TaskGroup) -> None:
        held: list[Held] = []
        queue = self.transport.queue_name
        for message in messages:
            h = self.heartbeat.hold(message)
            if message.message_id in self._deleting:
                work.create_task(
                    self._drop_duplicate(h), name=f"drop {queue}[{message.message_id}]"
                )
            else:
                held.append(h)
        self._changed.set()
        if self.stopping:
            for h in held:
                work.create_task(self._release(h), name=f"release {queue}[{h.message.message_id}]")
            return
        if not self.fifo:
            for h in held:
                self._spawn(work, self._process(h), f"handle {queue}[{h.message.message_id}]")
            return
        for h in held:
            runner = self._groups.add(h)
            if runner is not None:
                self._spawn(work, runner, f"handle {queue}[group {h.message.group_id}]")

    def _spawn(self, work: asyncio.TaskGroup, coro: Awaitable[object], name: str) -> None:
        task = work.create_task(_run_tracked(coro, self._running), name=name)
        self._running.add(task)

    # -- one message -----------------------------------------------------------------------------

    async def _process(self, held: Held) -> Outcome:
        record = await self._attempt(held)
        await self._finish(held, record)
        return record.outcome

    async def _attempt(self, held: Held) -> OutcomeRecord:
        """Run the handler; on a cancel, release the message and re-raise."""
        try:
            held.started = True
            return await self.dispatcher(held.message)
        except asyncio.CancelledError:
            await self._release(held, error="cancelled at shutdown")
            raise

    def _group_retry(self, max_receive_count: int | None) -> GroupRetry:
        """How FIFO chains retry a failed head in place (qworker.groups)."""
        policy = self.settler.retry_policy
        heartbeat = self.heartbeat

        def delay_s(record: OutcomeRecord) -> float:
            if record.outcome is Outcome.RETRIED:
                return record.delay_s or 0.0
            return policy.delay_s(record.receive_count)

        def can_hold(held: Held, delay: float) -> bool:
            held_s = self._clock() - held.received_at
            return held_s + delay + heartbeat.visibility_timeout_s < heartbeat.max_hold_s

        async def wait(delay: float) -> None:
            await first(self._stopping.wait(), self._sleep(delay))

        return GroupRetry(
            attempt=self._attempt,
            finish=self._finish,
            note=self._note,
            wait=wait,
            delay_s=delay_s,
            can_hold=can_hold,
            max_receive_count=max_receive_count,
            can_dead_letter=self.settler.can_dead_letter,
        )

    async def _release(self, held: Held, error: str | None = None) -> None:
        # A FIFO message let go at shutdown stays hidden until the long polls cancelled by the
        # stop have surely ended on the server: one of them could take it, and that receive would
        # count against its budget (qworker.groups).
        delay = None
        if self.fifo and self._poll_cancelled_at is not None:
            polls_end = self._poll_cancelled_at + self.wait_time_s + 1
            delay = max(0, math.ceil(polls_end - self._clock())) or None
        record = self.dispatcher.record(held.message, Outcome.RELEASED, error=error, delay_s=delay)
        await self._finish(held, record)

    async def _finish(
        self, held: Held, record: OutcomeRecord, settle_as: OutcomeRecord | None = None
    ) -> None:
        """Settle the outcome (or `settle_as`) on the queue, count it, log it, free the slot."""
        message_id = held.message.message_id
        succeeded = record.outcome is Outcome.SUCCEEDED
        try:
            if succeeded:
                # Keep extending it until the delete is confirmed: a delete retried through an
                # outage must not outlive the visibility timeout. Only outcomes that set the
                # visibility themselves stop the heartbeat first.
                self._deleting[message_id] += 1
            else:
                await self.heartbeat.claim(held)
            settled = await self.settler.settle(held.message, settle_as or record)
        finally:
            if succeeded:
                self._deleting[message_id] -= 1
                if not self._deleting[message_id]:
                    del self._deleting[message_id]
            self._free(held)
        if not settled:
            self._unsettled += 1
            record = _unsettled(record)
            if self.stopping and record.outcome is Outcome.RELEASED:
                self.unreleased.append(message_id)
        if not settled or record.outcome in _COMES_BACK or len(self.heartbeat) == 0:
            self._may_return.set()
        self._note(record)

    def _note(self, record: OutcomeRecord) -> None:
        """Count an outcome, log it, tell the sinks."""
        self._counts[record.outcome] += 1
        self._log(record)
        for sink in self._sinks:
            sink.record(record)

    def _free(self, held: Held) -> None:
        self.heartbeat.drop(held)
        self._capacity.give(1)
        self._changed.set()

    async def _drop_duplicate(self, held: Held) -> None:
        """Delete a redelivered message whose success is still being deleted, without running it.

        Its first run already counts; only this copy's receipt is deleted too.
        """
        try:
            error = await self.settler.delete(held.message)
        finally:
            self._free(held)
            if len(self.heartbeat) == 0:
                self._may_return.set()
        self._duplicates += 1
        log.info(
            "duplicate delivery of a message already handled; deleted without running it",
            extra={
                "action": "duplicate_dropped",
                "queue": self.transport.queue_name,
                "message_id": held.message.message_id,
                "receive_count": held.message.effective_receive_count,
                "error": error,
            },
        )

    def _log(self, record: OutcomeRecord) -> None:
        level = _LOG_LEVELS[record.outcome]
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "message %s",
            record.outcome.value,
            extra={
                "action": f"message_{record.outcome.value}",
                "queue": record.queue,
                "message_id": record.message_id,
                "outcome": record.outcome.value,
                "receive_count": record.receive_count,
                "duration_ms": round(record.duration_s * 1000, 3),
                "error": record.error,
                "settled": record.settled,
            },
        )


def _unsettled(record: OutcomeRecord) -> OutcomeRecord:
    return replace(record, settled=False)


async def _run_tracked(coro: Awaitable[object], running: set[asyncio.Task[None]]) -> None:
    """Run a handler task and leave the running set when done (the set is only for the grace)."""
    try:
        await coro
    finally:
        task = asyncio.current_task()
        if task is not None:
            running.discard(task)
