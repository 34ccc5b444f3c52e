"""The receive side of a consumer: poll loops that take capacity first, then receive.

Each loop takes free slots before it receives, so the worker never holds a message it cannot start
soon, and gives back what the receive did not fill. A take waits until a batch's worth of slots
(`min(10, free-able)`) is free, or a short linger after the first one is (`Capacity`), so slots
freed one at a time do not each make a small receive. A transient receive
error is retried after a pause with full jitter (0.5 s doubling up to a long poll's 20 s); any
other error ends the loop and so the consumer's `run()`. `stop()` ends every loop at once: a
pending long poll is cancelled, and awaited, so no receive outlives its loop.

A drain (`run_until_empty`) uses short polls and lets them finish (a receive cancelled in flight
would strand its messages until their visibility lapses); it ends when a receive finds nothing
while nothing is held or being received, and no message was put back (released, failed, retried)
since that receive was sent: the server may have answered it before the put-back landed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Final, final

from qworker.concurrency import Capacity, first
from qworker.exceptions import TransientTransportError
from qworker.message import Message
from qworker.transport import MAX_BATCH, QueueTransport

__all__ = ["RECEIVE_BACKOFF_BASE_S", "RECEIVE_BACKOFF_MAX_S", "Poller"]

log = logging.getLogger("qworker.consumer")  # the logger these lines always had

RECEIVE_BACKOFF_BASE_S: Final = 0.5
"""First pause after a failed receive; doubles per consecutive failure, with full jitter."""

RECEIVE_BACKOFF_MAX_S: Final = 20.0
"""Longest pause between receive attempts during an outage (a long poll's length)."""


@final
class Poller:
    """The receive loops of one queue, and their counters."""

    def __init__(
        self,
        transport: QueueTransport,
        capacity: Capacity,
        stopping: asyncio.Event,
        *,
        held: Callable[[], int],
        wait_time_s: int,
        visibility_timeout_s: int | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        round_trip: Callable[[float], None] | None = None,
    ) -> None:
        """Create the poller; run `loop()` once per concurrent receive loop.

        Args:
            transport: The queue.
            capacity: Free handler slots, taken before each receive.
            stopping: Set by the consumer's `stop()`.
            held: How many messages the consumer holds (a drain ends only at none).
            wait_time_s: Long-poll wait.
            visibility_timeout_s: Asked on each receive (None: the queue's).
            clock: Monotonic seconds.
            sleep: Injectable sleep (the backoff).
            round_trip: Told the round trip of each receive that found messages (seconds).
        """
        self._transport = transport
        self._capacity = capacity
        self._stopping = stopping
        self._held = held
        self.wait_time_s = wait_time_s
        self._visibility_timeout_s = visibility_timeout_s
        self._clock = clock
        self._sleep = sleep
        self._round_trip = round_trip
        self.drain = False
        """Short polls until a receive finds nothing and nothing is held (`run_until_empty`)."""
        self.receiving = 0
        """Receives in flight now."""
        self.receives = 0
        self.received = 0
        self.receive_errors = 0
        self.last_receive_s: float | None = None
        self.cancelled_at: float | None = None
        """When `stop()` cancelled long polls in flight (None: it cancelled none)."""
        self.put_back = 0
        """Settlements that left a message on the queue (a drain's empty receive is only final
        when none happened while it was in flight)."""
        self.changed = asyncio.Event()
        """Set whenever a receive ends (the consumer's waits look again)."""
        self._may_return = asyncio.Event()
        self._long_polls: set[asyncio.Future[list[Message]]] = set()

    def stop(self) -> None:
        """Note a stop (before the consumer sets its event): long polls in flight are cancelled."""
        if self.receiving and not self.drain and not self._stopping.is_set():
            # The server may still answer the long polls cancelled now, taking messages nobody
            # will see (the consumer's release keeps FIFO messages hidden past them).
            self.cancelled_at = self._clock()
        for receive in self._long_polls:
            receive.cancel()

    def may_return(self) -> None:
        """A message may be visible again (or nothing is held): wake a waiting drain."""
        self._may_return.set()

    async def loop(
        self, deliver: Callable[[list[Message]], None], stop: Callable[[], None]
    ) -> None:
        """Receive until the consumer stops; hand each batch to `deliver` (slots taken for it).

        Args:
            deliver: Takes a received batch (possibly empty), synchronously.
            stop: Stops the consumer (a drain found the queue done).
        """
        failures = 0
        while not self._stopping.is_set():
            slots = await self._capacity.take(MAX_BATCH, self._stopping)
            if slots == 0:
                return
            put_back = self.put_back
            try:
                messages = await self._receive(slots)
            except TransientTransportError as exc:
                self._capacity.give(slots)
                failures += 1
                self.receive_errors += 1
                await self._backoff(failures, exc)
                continue
            except BaseException:
                self._capacity.give(slots)
                raise
            failures = 0
            self._capacity.give(slots - len(messages))
            if not messages and self.drain and self.put_back == put_back:
                # (A message put back while this receive was in flight may have been visible
                # again only after the server answered it: then look again at once.)
                if self._held() == 0 and self.receiving == 0:
                    stop()
                    return
                # Other loops hold or are receiving messages that may come back: wait until one
                # may have (an outcome that makes it visible again, or a receive ending), then
                # look again. Successes do not wake the drain: they bring nothing back.
                self._may_return.clear()
                await first(self._may_return.wait(), self._stopping.wait())
            deliver(messages)

    async def _receive(self, slots: int) -> list[Message]:
        """Receive, or return nothing as soon as `stop()` is called."""
        self.receiving += 1
        try:
            return await self._receive_once(slots)
        finally:
            self.receiving -= 1
            self.changed.set()
            if self.receiving == 0 and self._held() == 0:
                # Only now may a waiting drain loop find the queue done; waking it after every
                # receive would have idle loops wake each other in turn while a handler works.
                self._may_return.set()

    async def _receive_once(self, slots: int) -> list[Message]:
        if not self.drain and self._stopping.is_set():
            return []  # stopped between the capacity's take and now
        sent = self._clock()
        call = self._transport.receive(
            slots,
            wait_time_s=0 if self.drain else self.wait_time_s,
            visibility_timeout_s=self._visibility_timeout_s,
        )
        if self.drain:
            messages = await call  # a drain lets its short polls finish
        else:
            # The long poll runs as a task of its own so that `stop()` can cancel it alone; the
            # loop awaits it directly (no task or waiter per receive besides it).
            receive = asyncio.ensure_future(call)
            self._long_polls.add(receive)
            try:
                messages = await receive
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not receive.cancelled() or (task is not None and task.cancelling()):
                    raise  # this loop was cancelled (a sibling failed, or run() was)
                return []  # stop() gave up the long poll
            finally:
                self._long_polls.discard(receive)
        self.receives += 1
        self.last_receive_s = now = self._clock()
        self.received += len(messages)
        if messages and self._round_trip is not None:
            self._round_trip(now - sent)
        return messages

    async def _backoff(self, failures: int, exc: TransientTransportError) -> None:
        delay = random.uniform(  # noqa: S311 (jitter, not cryptography)
            0, min(RECEIVE_BACKOFF_MAX_S, RECEIVE_BACKOFF_BASE_S * 2 ** min(failures - 1, 16))
        )
        log.warning(
            "receive failed; backing off",
            extra={
                "action": "receive_failed",
                "queue": self._transport.queue_name,
                "error": str(exc),
                "error_type": type(exc).__name__,
                "attempt": failures,
                "delay_s": round(delay, 3),
            },
        )
        await first(self._stopping.wait(), self._sleep(delay))
