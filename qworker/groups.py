"""FIFO groups: each message group's messages run in order, through one chain per group.

SQS hands out a FIFO group's messages in order and none while another of the group is in flight,
so a worker sees a group's messages together, in order. `GroupChains` keeps one chain (a queue and
the task running it) per group: messages run one after another. Messages of the group that arrive
while the chain runs (a lax server may hand them out) join its end.

**A failing message never spends its followers' receive budget.** SQS counts every receive of a
message against its `maxReceiveCount`, including receives of messages that never ran, and it hands
out a group's followers in the same receive as its head. Releasing the followers each time the
head fails (the simple way to keep the order) makes them come back with the head, one receive
older each time: after `maxReceiveCount` failures of the head they reach the dead-letter queue
without ever running. So a chain retries a failed (or `Retry`-ing) head *in place*: it keeps the
head and its followers held (the heartbeat keeps them invisible, and the group stays blocked on
the server, so nothing can overtake), waits the head's backoff (or its asked delay), and runs it
again. The handler sees `ApproximateReceiveCount` go up with each attempt, as if it had been
received again, and records and metrics count each attempt the same way. When the head has failed
`maxReceiveCount` times it is dead-lettered by the worker itself (`qworker.reject_reason` says
"failed N times (maxReceiveCount M)"), exactly where the redrive policy would have put it, and the
chain goes on with the followers, whose receive count is still the one they were received with.

What SQS makes impossible, and where the old release is kept:
- a receive cannot be undone: every message of a group that a worker received and releases (at
  shutdown, when its handler is cancelled, or when the worker dies) comes back one receive older.
  A follower released at `maxReceiveCount` shutdowns in a row before it ran reaches the DLQ; no
  client can prevent that (there is no per-group receive limit, and a copy sent instead would lose
  its place in the group). What the worker can prevent, it does: a long poll cancelled at shutdown
  may still be answered by the server, so messages released then stay hidden until such polls have
  ended (the consumer's `_release`), and no orphaned receive adds one more.
- the in-place attempts are not counted by SQS: a worker that stops while retrying a head in place
  releases it, and the next worker starts counting from the head's new receive count.
- a head whose wait would outlast the heartbeat's `max_hold_s`, a canary (`release_failed`: it lets
  failures go at once, for the primary), and a head that used up its budget where no dead-letter
  queue is writable fall back to the release: the head is settled as usual and the rest of its
  chain released, as SQS's redrive policy then decides.

A chain that stops (a failure that falls back, shutdown) is detached before it releases the rest,
so whatever arrives after that, the failed message's redelivery included, starts a new chain
instead of joining one that is being released.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, final

from qworker.heartbeat import Heartbeat, Held
from qworker.message import Message
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy

if TYPE_CHECKING:
    from qworker.finish import Finisher

__all__ = ["GroupChains", "GroupRetry", "with_receive_count"]

log = logging.getLogger(__name__)

_STOPS_GROUP: Final = frozenset({Outcome.FAILED, Outcome.RETRIED})
"""Outcomes that leave the message on the queue: the rest of its group must wait for it."""

RECEIVE_COUNT: Final = "ApproximateReceiveCount"


@final
@dataclass(frozen=True, slots=True)
class GroupRetry:
    """What a chain needs to retry a failed head in place (the consumer provides it).

    Attributes:
        attempt: Runs the handler on a held message, without settling it (on a cancel it
            releases the message itself and re-raises).
        finish: Settles a held message's outcome and lets it go: `finish(held, record, settle_as)`
            counts `record` and records `settle_as` (or `record`) on the queue.
        note: Counts and logs the outcome of an attempt that is retried in place (not settled).
        wait: Sleeps for a delay, returning early when the consumer stops.
        delay_s: The backoff before the next attempt of a failed or retried record.
        can_hold: Whether a held message may be held for a further delay (the heartbeat's limit).
        max_receive_count: The queue's redrive budget (None: no redrive policy).
        can_dead_letter: Whether the worker can write to the dead-letter queue.
    """

    attempt: Callable[[Held], Awaitable[OutcomeRecord]]
    finish: Callable[[Held, OutcomeRecord, OutcomeRecord | None], Awaitable[None]]
    note: Callable[[OutcomeRecord], None]
    wait: Callable[[float], Awaitable[None]]
    delay_s: Callable[[OutcomeRecord], float]
    can_hold: Callable[[Held, float], bool]
    max_receive_count: int | None
    can_dead_letter: bool

    @classmethod
    def in_place(
        cls,
        *,
        attempt: Callable[[Held], Awaitable[OutcomeRecord]],
        finisher: Finisher,
        heartbeat: Heartbeat,
        policy: RetryPolicy,
        wait: Callable[[float], Awaitable[object]],
        clock: Callable[[], float],
        max_receive_count: int | None,
        can_dead_letter: bool,
    ) -> GroupRetry:
        """A consumer's in-place retry: its retry policy's backoff, within the heartbeat's limit."""

        def delay_s(record: OutcomeRecord) -> float:
            if record.outcome is Outcome.RETRIED:
                return record.delay_s or 0.0
            return policy.delay_s(record.receive_count)

        def can_hold(held: Held, delay: float) -> bool:
            held_s = clock() - held.received_at
            return held_s + delay + heartbeat.visibility_timeout_s < heartbeat.max_hold_s

        async def wait_for(delay: float) -> None:
            await wait(delay)

        return cls(
            attempt=attempt,
            finish=finisher.finish,
            note=finisher.note,
            wait=wait_for,
            delay_s=delay_s,
            can_hold=can_hold,
            max_receive_count=max_receive_count,
            can_dead_letter=can_dead_letter,
        )


@final
class GroupChains:
    """The running chains of one consumer's FIFO groups."""

    def __init__(
        self,
        *,
        process: Callable[[Held], Awaitable[Outcome]],
        release: Callable[[Held, str | None], Awaitable[None]],
        stopping: Callable[[], bool],
        retry: GroupRetry | None = None,
    ) -> None:
        """Run messages with `process`, let them go with `release`.

        Args:
            process: Runs one message to its settled outcome (on a cancel it releases the
                message itself and re-raises); used when `retry` is None.
            release: Makes one held message visible again, with a reason.
            stopping: Whether the consumer is shutting down (the rest is released).
            retry: Retry failed heads in place (None: settle them and release the rest).
        """
        self._process = process
        self._release = release
        self._stopping = stopping
        self._retry = retry
        self._chains: dict[str | None, deque[Held]] = {}

    def __len__(self) -> int:
        """Return how many groups have a running chain."""
        return len(self._chains)

    def add(self, held: Held) -> Coroutine[Any, Any, None] | None:
        """Queue a message on its group's chain; return a new chain's runner to spawn, if any."""
        group_id = held.message.group_id
        chain = self._chains.get(group_id)
        if chain is not None:
            chain.append(held)
            return None
        chain = self._chains[group_id] = deque([held])
        return self._run(group_id, chain)

    async def _run(self, group_id: str | None, chain: deque[Held]) -> None:
        try:
            while chain:
                held = chain.popleft()
                if self._stopping():
                    await self._release_rest(group_id, chain, held, None)
                    return
                try:
                    if self._retry is None:
                        outcome = await self._process(held)
                    else:
                        outcome = await self._run_in_place(held, self._retry, len(chain))
                except asyncio.CancelledError:
                    await self._release_rest(group_id, chain, None, "cancelled at shutdown")
                    raise
                if outcome in _STOPS_GROUP:
                    await self._release_rest(group_id, chain, None, "earlier message failed")
                    return
        finally:
            # The chain is empty here, with no await since the last look: nothing is left behind.
            self._detach(group_id, chain)

    async def _run_in_place(self, held: Held, retry: GroupRetry, waiting: int) -> Outcome:
        """Run a message until it is settled, retrying it in place while its group waits.

        Returns the outcome that decides the chain's fate: a failure only when it fell back to the
        release (the rest is then released too); `rejected` when it was dead-lettered here.
        """
        while True:
            record = await retry.attempt(held)
            if record.outcome not in _STOPS_GROUP:
                await retry.finish(held, record, None)
                return record.outcome
            attempts = held.message.receive_count
            budget = retry.max_receive_count
            if budget is not None and attempts >= budget:
                if not retry.can_dead_letter:
                    await retry.finish(held, record, None)  # SQS's redrive policy decides
                    return record.outcome
                reason = f"failed {attempts} times (maxReceiveCount {budget}): {record.error}"
                self._log_dead_letter(held, record, attempts, budget)
                dead = replace(record, outcome=Outcome.REJECTED, error=reason)
                await retry.finish(held, record, dead)
                return Outcome.REJECTED
            delay = max(0.0, retry.delay_s(record))
            if self._stopping() or not retry.can_hold(held, delay):
                await retry.finish(held, record, None)
                return record.outcome
            retry.note(record)
            self._log_retry(held, record, delay, waiting)
            try:
                await retry.wait(delay)
            except asyncio.CancelledError:
                await self._release(held, "cancelled at shutdown")
                raise
            if self._stopping():
                await self._release(held, "stopped while retrying in place")
                return Outcome.RELEASED
            held.message = with_receive_count(held.message, attempts + 1)

    @staticmethod
    def _log_retry(held: Held, record: OutcomeRecord, delay: float, waiting: int) -> None:
        log.info(
            "FIFO message %s; retried in place after %.3g s, its group waiting (followers keep "
            "their receive budget)",
            record.outcome.value,
            delay,
            extra={
                "action": "group_retry_in_place",
                "queue": record.queue,
                "message_id": held.message.message_id,
                "group_id": held.message.group_id,
                "attempt": held.message.receive_count,
                "delay_s": round(delay, 3),
                "followers_held": waiting,
                "error": record.error,
            },
        )

    @staticmethod
    def _log_dead_letter(held: Held, record: OutcomeRecord, attempts: int, budget: int) -> None:
        log.warning(
            "FIFO message failed %d times (maxReceiveCount %d); dead-lettered so its group can go "
            "on",
            attempts,
            budget,
            extra={
                "action": "group_dead_lettered",
                "queue": record.queue,
                "message_id": held.message.message_id,
                "group_id": held.message.group_id,
                "attempts": attempts,
                "error": record.error,
            },
        )

    def _detach(self, group_id: str | None, chain: deque[Held]) -> None:
        if self._chains.get(group_id) is chain:
            del self._chains[group_id]

    async def _release_rest(
        self, group_id: str | None, chain: deque[Held], head: Held | None, error: str | None
    ) -> None:
        self._detach(group_id, chain)
        if head is not None:
            await self._release(head, error)
        while chain:
            await self._release(chain.popleft(), error)


def with_receive_count(message: Message, count: int) -> Message:
    """The message as its `count`-th attempt sees it (an attempt in place counts as a receive)."""
    return replace(message, attributes={**message.attributes, RECEIVE_COUNT: str(count)})
