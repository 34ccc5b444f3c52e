"""The consumer: receive messages of one queue, run them with bounded concurrency, settle each.

It owns the task groups and the shutdown order, and wires the parts of the message path:

    transport → Poller (qworker.poller: capacity, receive, backoff) → Consumer (hold, start)
      → Dispatcher (qworker.dispatch: the handler) → OutcomeRecord (qworker.outcome)
      → Finisher (qworker.finish: settle on the queue, free the slot) → sinks (qworker.statistics)

Pollers take capacity before they receive (a batch of up to 10 slots, or what a short linger
gathered), so the worker never holds a message it cannot start soon: beside the running handlers
it holds about two receive round trips' worth of what they finish, being received or queued for
a handler slot (sized from the running averages of handler runs and receive round trips,
`qworker.concurrency.ahead`: at least one receive's worth, at most two per poller). The handler
slots of a standard queue are runner tasks (`qworker.concurrency.Runners`, started as work comes,
at most the concurrency), each running one message after another: no task per message. A
message's slot goes back when its handler returns, so the next receive overlaps the settlement
and the tail of the running handlers, as a plain receive loop's would. Several pollers (by
default one per 10 slots, at least 8, `default_pollers`) keep the handlers fed while one waits on
a long poll. FIFO queues hold only their concurrency, and a slot goes back when its message is
settled (a chain's messages wait their turn while held).
Every message is held by the heartbeat from receive to settlement. All tasks are owned by task
groups inside `run()`; none outlives it. FIFO queues run each message group's messages in order
(qworker.groups). Build one with `qworker.wiring.build_consumer`.

Shutdown (`stop()`, from a signal or the embedding app) has a fixed order:
1. `stop()` only sets an event; pollers stop at once, cancelling a pending long poll;
2. messages received but not started are released (visible again at once);
3. running handlers get `shutdown_grace_s`, then are cancelled; a cancelled handler's message is
   never deleted, only released;
4. pending deletes and visibility changes are flushed, then `run()` returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Final, final

from qworker.concurrency import Capacity, Runners, ahead, first, leaves
from qworker.config import RECEIVE_BATCH, default_pollers
from qworker.dispatch import Dispatcher
from qworker.finish import Finisher
from qworker.groups import GroupChains, GroupRetry
from qworker.heartbeat import Heartbeat, Held
from qworker.message import Message
from qworker.outcome import Outcome, OutcomeRecord
from qworker.poller import Poller
from qworker.settle import Settler
from qworker.statistics import ConsumerStatistics, OutcomeCounts, OutcomeLog, OutcomeSink
from qworker.transport import QueueTransport

__all__ = ["Consumer", "ConsumerStatistics", "OutcomeSink"]

log = logging.getLogger(__name__)

_SMOOTHING: Final = 0.1
"""Weight of a new sample in the running averages of handler runs and receive round trips."""


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
        pollers: int = 0,
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
            concurrency: Handlers running at once.
            pollers: Concurrent receive loops (0: `default_pollers(concurrency)`).
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
        self._dispatch = dispatcher.process
        self.concurrency = concurrency
        self.pollers = pollers or default_pollers(concurrency)
        self.wait_time_s = wait_time_s
        self.fifo = fifo
        self.shutdown_grace_s = shutdown_grace_s
        self.settler = settler or Settler(transport)
        self.heartbeat = Heartbeat(
            transport,
            visibility_timeout_s=visibility_timeout_s,
            max_hold_s=max_hold_s,
            clock=clock,
            sleep=sleep,
        )
        self._clock = clock
        self._sleep = sleep
        self._stopping = asyncio.Event()
        # Standard queues hold messages ahead of the handler slots (the runners, made by `run()`),
        # sized as they go; FIFO chains hold their waiting messages themselves, within the
        # concurrency.
        self._runners: Runners[Held] | None = None
        self._work: asyncio.TaskGroup | None = None
        self.ahead = 0 if fifo else ahead(concurrency, self.pollers, RECEIVE_BATCH, 0.0, 0.0)
        """Messages held beyond the running handlers (resized as handlers and receives go)."""
        self._capacity = Capacity(concurrency + self.ahead)
        self._handler_s = 0.0
        self._round_trip_s = 0.0
        self._running: set[asyncio.Task[object]] = set()
        self.poller = Poller(
            transport,
            self._capacity,
            self._stopping,
            held=self.heartbeat.__len__,
            wait_time_s=wait_time_s,
            visibility_timeout_s=visibility_timeout_s if request_visibility else None,
            clock=clock,
            sleep=sleep,
            round_trip=None if fifo else self._resize,
        )
        self._changed = self.poller.changed
        self._counts = OutcomeCounts()
        self.finisher = Finisher(
            dispatcher=dispatcher,
            settler=self.settler,
            heartbeat=self.heartbeat,
            capacity=self._capacity,
            poller=self.poller,
            counts=self._counts,
            sinks=[self._counts, OutcomeLog(), *sinks],
            stopping=lambda: self.stopping,
            fifo=fifo,
            clock=clock,
        )
        self._groups = GroupChains(
            process=self._process,
            release=self.finisher.release,
            stopping=lambda: self.stopping,
            retry=None
            if self.settler.release_failed
            else GroupRetry.in_place(
                attempt=self._attempt,
                finisher=self.finisher,
                heartbeat=self.heartbeat,
                policy=self.settler.retry_policy,
                wait=lambda delay: first(self._stopping.wait(), self._sleep(delay)),
                clock=clock,
                max_receive_count=max_receive_count,
                can_dead_letter=self.settler.can_dead_letter,
            ),
        )
        self.cut_short: list[str] = []
        """Ids of messages whose handlers the shutdown grace cut short (released, not deleted)."""

    def __repr__(self) -> str:
        """Show the queue and counters."""
        return f"Consumer({self.transport.queue_name!r}, {self.statistics()})"

    @property
    def unreleased(self) -> list[str]:
        """Ids of messages that could not be released while stopping (left to lapse)."""
        return self.finisher.unreleased

    # -- control ---------------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the consumer to shut down; idempotent, synchronous, safe from a signal handler."""
        self.poller.stop()
        self._stopping.set()
        if self._runners is not None:
            self._runners.close()  # held messages not started yet are released

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
        self.poller.drain = True
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
        poller = self.poller
        return self._counts.snapshot(
            received=poller.received,
            in_flight=len(self.heartbeat),
            handed_back=self.settler.handed_back,
            receive_errors=poller.receive_errors,
            receives=poller.receives,
            last_receive_s=poller.last_receive_s,
            stopping=self.stopping,
        )

    def _resize(self, round_trip_s: float) -> None:
        """A receive took `round_trip_s`: hold as many ahead as the handlers need meanwhile."""
        average = self._round_trip_s
        self._round_trip_s = (
            average + (round_trip_s - average) * _SMOOTHING if average else round_trip_s
        )
        held_ahead = ahead(
            self.concurrency, self.pollers, RECEIVE_BATCH, self._handler_s, self._round_trip_s
        )
        if held_ahead != self.ahead:
            self.ahead = held_ahead
            self._capacity.resize(self.concurrency + held_ahead)

    # -- the task groups, in shutdown order ------------------------------------------------------

    async def _run(self) -> None:
        queue = self.transport.queue_name
        log.info("consumer started", extra={"action": "consumer_started", "queue": queue})
        async with asyncio.TaskGroup() as infra:
            settler = infra.create_task(self.settler.run(), name=f"settle {queue}")
            heartbeat = infra.create_task(self.heartbeat.run(), name=f"heartbeat {queue}")
            async with asyncio.TaskGroup() as work:
                self._work = work
                if not self.fifo:
                    self._runners = Runners(
                        self.concurrency,
                        self._handle,
                        lambda coro, name: work.create_task(coro, name=name),
                        f"handle {queue}",
                    )
                    if self.stopping:
                        self._runners.close()
                async with asyncio.TaskGroup() as polls:
                    for index in range(self.pollers):
                        polls.create_task(
                            self.poller.loop(self._start, self.stop), name=f"poll {queue}[{index}]"
                        )
                await self._grace()
            # Successes settle without a waiting task: their deletes are answered before the
            # batchers stop (each batch's timeout bounds this).
            await self.settler.flush()
            heartbeat.cancel()
            settler.cancel()
        log.info(
            "consumer stopped",
            extra={"action": "consumer_stopped", "queue": queue, "stats": repr(self.statistics())},
        )

    async def _grace(self) -> None:
        """Give running handlers the grace period, then cancel the rest."""
        runners = self._runners.tasks if self._runners is not None else ()
        running = {task for task in (*self._running, *runners) if not task.done()}
        if not running:
            return
        _, pending = await asyncio.wait(running, timeout=self.shutdown_grace_s)
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

    def _start(self, messages: list[Message]) -> None:
        work = self._work
        assert work is not None  # noqa: S101 (pollers deliver inside run())
        held: list[Held] = []
        queue = self.transport.queue_name
        finisher = self.finisher
        for message in messages:
            h = self.heartbeat.hold(message)
            if message.message_id in finisher.deleting:
                work.create_task(
                    finisher.drop_duplicate(h), name=f"drop {queue}[{message.message_id}]"
                )
            else:
                held.append(h)
        self._changed.set()
        if self.stopping:
            for h in held:
                work.create_task(
                    finisher.release(h), name=f"release {queue}[{h.message.message_id}]"
                )
            return
        if self._runners is not None:
            submit = self._runners.submit
            for h in held:
                submit(h)
            return
        for h in held:
            runner = self._groups.add(h)
            if runner is not None:
                self._spawn(runner, f"handle {queue}[group {h.message.group_id}]")

    def _spawn(self, coro: Coroutine[object, object, object], name: str) -> None:
        # The running set is only for the grace; a done callback, not a wrapping coroutine.
        assert self._work is not None  # noqa: S101 (spawned inside run())
        task = self._work.create_task(coro, name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    # -- one message -----------------------------------------------------------------------------

    async def _process(self, held: Held) -> Outcome:
        """FIFO: run one message of a chain; its slot goes back once it is settled."""
        record = await self._attempt(held)
        await self.finisher.finish(held, record)
        return record.outcome

    def handling(self, runner: int) -> Held | None:
        """The message handler runner `runner` (`handle <queue>[runner <n>]`) runs, if any."""
        return self._runners.current(runner) if self._runners is not None else None

    async def _handle(self, held: Held) -> None:
        """Standard queue: run a held message's handler in a handler slot (a runner), settle it."""
        if self.stopping:  # its turn came after the stop: never started
            await self.finisher.release(held)
            return
        try:
            held.started = True
            record = await self._dispatch(held.message)
        except asyncio.CancelledError:
            await self.finisher.release(held, error="cancelled at shutdown")
            raise
        average = self._handler_s
        self._handler_s = (
            average + (record.duration_s - average) * _SMOOTHING if average else record.duration_s
        )
        self._capacity.give(1)  # the handler is done: the next receive overlaps the settlement
        if record.outcome is Outcome.SUCCEEDED:
            self.finisher.finish_success(held, record)  # the delete's answer frees it
            return
        # Settled in a task of its own: the runner is free for the next message meanwhile.
        self._spawn(
            self.finisher.finish(held, record, slot_freed=True),
            f"settle {self.transport.queue_name}[{held.message.message_id}]",
        )

    async def _attempt(self, held: Held) -> OutcomeRecord:
        """Run the handler; on a cancel, release the message and re-raise."""
        try:
            held.started = True
            return await self._dispatch(held.message)
        except asyncio.CancelledError:
            await self.finisher.release(held, error="cancelled at shutdown")
            raise
