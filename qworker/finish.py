"""The end of one delivery: settle its outcome on the queue, free its slot, tell the sinks.

`Finisher.finish()` is the one way a held message leaves the consumer: the heartbeat stops
extending it (a success keeps being extended until its delete is confirmed, so a delete retried
through an outage cannot outlive the visibility timeout), the `Settler` records the outcome on the
queue, the slot goes back to the pollers, and the record goes to every sink. `release()` lets a
message go unstarted; `drop_duplicate()` deletes a redelivery of a message whose success is still
being deleted, without running it again.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Final, final

from qworker.batch import describe_failure
from qworker.concurrency import Capacity
from qworker.dispatch import Dispatcher
from qworker.exceptions import TransportError
from qworker.heartbeat import Heartbeat, Held
from qworker.message import BatchFailure
from qworker.outcome import Outcome, OutcomeRecord
from qworker.poller import Poller
from qworker.settle import Settler
from qworker.statistics import OutcomeCounts, OutcomeSink

__all__ = ["Finisher"]

log = logging.getLogger("qworker.consumer")  # the logger these lines always had

_COMES_BACK: Final = frozenset({Outcome.FAILED, Outcome.RETRIED, Outcome.RELEASED})
"""Outcomes that leave the message on the queue (a drain must look again)."""


@final
class Finisher:
    """Settles, frees and reports the deliveries of one consumer."""

    def __init__(
        self,
        *,
        dispatcher: Dispatcher,
        settler: Settler,
        heartbeat: Heartbeat,
        capacity: Capacity,
        poller: Poller,
        counts: OutcomeCounts,
        sinks: Sequence[OutcomeSink],
        stopping: Callable[[], bool],
        fifo: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Create the finisher of one consumer.

        Args:
            dispatcher: Builds the records of releases.
            settler: Records outcomes on the queue.
            heartbeat: Holds the messages.
            capacity: Gets a slot back per message finished.
            poller: Woken when a message may come back; knows when long polls were cancelled.
            counts: The consumer's counters (unsettled, duplicates).
            sinks: Receive every record, in order (the counters and the log first).
            stopping: Whether the consumer is stopping.
            fifo: The queue is FIFO (a release at shutdown waits for cancelled polls).
            clock: Monotonic seconds.
        """
        self._dispatcher = dispatcher
        self._settler = settler
        self._heartbeat = heartbeat
        self._on_deleted = self._deleted  # (one bound method for every delete's answer)
        self._capacity = capacity
        self._poller = poller
        self._counts = counts
        self._sinks = tuple(sinks)
        self._stopping = stopping
        self._fifo = fifo
        self._clock = clock
        self.deleting: dict[str, int] = {}
        """Ids whose success is being deleted, with how many deletes of each are in flight (a
        redelivery of one is a duplicate)."""
        self.unreleased: list[str] = []
        """Ids of messages that could not be released while stopping (left to lapse)."""

    async def finish(
        self,
        held: Held,
        record: OutcomeRecord,
        settle_as: OutcomeRecord | None = None,
        *,
        slot_freed: bool = False,
    ) -> None:
        """Settle the outcome (or `settle_as`) on the queue, free the slot, tell the sinks.

        With `slot_freed`, the caller already gave the message's capacity back (its handler is
        done, so a receive may overlap the settlement); the message is still held until settled.
        """
        message_id = held.message.message_id
        succeeded = record.outcome is Outcome.SUCCEEDED
        settled = False
        try:
            if succeeded:
                # Keep extending it until the delete is confirmed: a delete retried through an
                # outage must not outlive the visibility timeout. Only outcomes that set the
                # visibility themselves stop the heartbeat first.
                self._deleting(message_id)
            else:
                await self._heartbeat.claim(held)
            settled = await self._settler.settle(held.message, settle_as or record)
        finally:
            if succeeded:
                self._deleted_one(message_id)
            if not settled or (settle_as or record).outcome in _COMES_BACK:
                self._poller.put_back += 1  # before the drop: a drain must look again
            self.free(held, give=not slot_freed)
        if not settled:
            self._counts.unsettled += 1
            record = replace(record, settled=False)
            if self._stopping() and record.outcome is Outcome.RELEASED:
                self.unreleased.append(message_id)
        if not settled or record.outcome in _COMES_BACK or len(self._heartbeat) == 0:
            self._poller.may_return()
        self.note(record)

    def finish_success(self, held: Held, record: OutcomeRecord) -> None:
        """Settle a success without waiting: its delete is queued, the rest runs on its answer.

        The caller gave the message's slot back already (its handler is done). The message stays
        held, the heartbeat extending it, until the delete is confirmed; then it is freed and the
        record goes to the sinks, as `finish()` would. No future and no task waits for the delete.
        """
        message = held.message
        self._deleting(message.message_id)
        # (The record waits on the message, which is the delete's token: no callback object per
        # message, and fewer objects per message mean fewer garbage collections.)
        held.outcome = record
        self._settler.delete_soon(message, self._on_deleted, held)

    def _deleted(
        self, held: Held, failure: BatchFailure | None, call_error: TransportError | None
    ) -> None:
        """A success's delete has its answer: free the message and tell the sinks."""
        record = held.outcome
        assert record is not None  # noqa: S101 (set by finish_success)
        held.outcome = None
        message = held.message
        self._deleted_one(message.message_id)
        error = describe_failure(failure, call_error) if failure or call_error else None
        if error is None:
            self.free(held, give=False)
            if len(self._heartbeat) == 0:
                self._poller.may_return()
            self.note(record)
            return
        self._settler.warn_unsettled(message, record, error)
        self._poller.put_back += 1  # before the drop: a drain must look again
        self.free(held, give=False)
        self._counts.unsettled += 1
        self._poller.may_return()
        self.note(replace(record, settled=False))

    def _deleting(self, message_id: str) -> None:
        deleting = self.deleting
        deleting[message_id] = deleting.get(message_id, 0) + 1

    def _deleted_one(self, message_id: str) -> None:
        deleting = self.deleting
        left = deleting[message_id] - 1
        if left:
            deleting[message_id] = left
        else:
            del deleting[message_id]

    async def release(self, held: Held, error: str | None = None) -> None:
        """Let a message go (visible again), unstarted or cancelled at shutdown."""
        # A FIFO message let go at shutdown stays hidden until the long polls cancelled by the
        # stop have surely ended on the server: one of them could take it, and that receive would
        # count against its budget (qworker.groups).
        delay = None
        cancelled_at = self._poller.cancelled_at
        if self._fifo and cancelled_at is not None:
            polls_end = cancelled_at + self._poller.wait_time_s + 1
            delay = max(0, math.ceil(polls_end - self._clock())) or None
        record = self._dispatcher.record(held.message, Outcome.RELEASED, error=error, delay_s=delay)
        await self.finish(held, record)

    def note(self, record: OutcomeRecord) -> None:
        """Tell every sink (the counters and the log first)."""
        for sink in self._sinks:
            sink.record(record)

    def free(self, held: Held, *, give: bool = True) -> None:
        """Stop holding a message and give its slot back (unless already given)."""
        self._heartbeat.drop(held)
        if give:
            self._capacity.give(1)
        self._poller.changed.set()

    async def drop_duplicate(self, held: Held) -> None:
        """Delete a redelivered message whose success is still being deleted, without running it.

        Its first run already counts; only this copy's receipt is deleted too.
        """
        try:
            error = await self._settler.delete(held.message)
        finally:
            self.free(held)
            if len(self._heartbeat) == 0:
                self._poller.may_return()
        self._counts.duplicates += 1
        log.info(
            "duplicate delivery of a message already handled; deleted without running it",
            extra={
                "action": "duplicate_dropped",
                "queue": self._dispatcher.queue,
                "message_id": held.message.message_id,
                "receive_count": held.message.effective_receive_count,
                "error": error,
            },
        )
