"""The heartbeat: keep every held message invisible while the worker holds it.

A message the worker holds (running, or waiting behind its FIFO group) must not become visible
again, or another worker would run it a second time. The heartbeat extends the visibility of every
held message once a third of its visibility has passed (two thirds still left), in
ChangeMessageVisibilityBatch calls, up to `max_hold_s` after it was received; after that it lets
the message go, so a stuck handler cannot hold a message for ever.

Silent network loss must not cost a lapse: every extension call has its own short timeout
(`call_timeout_s`, far below the visibility), the transport sends visibility calls over fresh
connections (see `qworker.worker.open_sqs_client`), and a failed or hung call is tried again after
`RETRY_DELAY_S`, not at the next tick, so there are several tries before the visibility lapses. A
lapse the worker could not prevent is logged as a warning naming the message (`heartbeat_lapsed`).

A message is claimed (`claim()`) before its outcome is recorded on the queue; claimed messages are
never extended again. A claim waits for an extension call that includes the message and is already
on its way (so it cannot reach the server after the delete or backoff), but never longer than that
call's own timeout: a hung call cannot block settlement or shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, final

from qworker.exceptions import TransportError
from qworker.message import Message
from qworker.outcome import OutcomeRecord
from qworker.transport import MAX_BATCH, QueueTransport

__all__ = ["Heartbeat", "Held"]

log = logging.getLogger(__name__)

MIN_INTERVAL_S: Final = 0.2
"""The heartbeat never ticks faster than this, whatever the visibility timeout."""

EXTEND_AFTER_THIRDS: Final = 1
"""A message is extended once this many thirds of its visibility have passed."""

TICKS_PER_VISIBILITY: Final = 6
"""Ticks per visibility timeout: a due message waits at most a sixth of it for its tick."""

CALL_TIMEOUT_S: Final = 5.0
"""The longest one extension call may take (less for short visibility timeouts)."""

MIN_CALL_TIMEOUT_S: Final = 1.0
"""The shortest call timeout, whatever the visibility timeout."""

RETRY_DELAY_S: Final = 0.5
"""Pause before a failed or timed-out extension is tried again (on a fresh connection)."""


@dataclass(slots=True, eq=False)
class Held:
    """A message the worker holds, and the state the heartbeat keeps for it."""

    message: Message
    received_at: float
    visible_until: float
    started: bool = False
    claimed: bool = False
    let_go: bool = False
    lost: bool = False
    lapsed: bool = False
    extensions: int = field(default=0)
    retry_at: float | None = None
    in_call: asyncio.Future[None] | None = None
    outcome: OutcomeRecord | None = None
    """A success waiting for its delete's answer: its record (the sinks get it then)."""


@final
class Heartbeat:
    """Extends the visibility of held messages of one queue."""

    def __init__(
        self,
        transport: QueueTransport,
        *,
        visibility_timeout_s: int,
        max_hold_s: float,
        call_timeout_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Create a heartbeat; run it with `run()` in a task group.

        Args:
            transport: The queue.
            visibility_timeout_s: The visibility each extension asks for (and that receives gave).
            max_hold_s: Stop extending a message this long after it was received.
            call_timeout_s: The longest one extension call may take (default: a sixth of the
                visibility timeout, between `MIN_CALL_TIMEOUT_S` and `CALL_TIMEOUT_S`).
            clock: Monotonic seconds.
            sleep: Injectable sleep.
        """
        self._transport = transport
        self.visibility_timeout_s = visibility_timeout_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._sleep = sleep
        self.interval_s = max(MIN_INTERVAL_S, visibility_timeout_s / TICKS_PER_VISIBILITY)
        self.extend_below_s = visibility_timeout_s * (3 - EXTEND_AFTER_THIRDS) / 3
        """A message with less visibility left than this is due."""
        self.call_timeout_s = (
            call_timeout_s
            if call_timeout_s is not None
            else min(
                CALL_TIMEOUT_S,
                max(MIN_CALL_TIMEOUT_S, visibility_timeout_s / TICKS_PER_VISIBILITY),
            )
        )
        self._held: dict[int, Held] = {}
        self.calls = 0
        self.failures = 0
        self.lapses = 0

    def __iter__(self) -> Iterator[Held]:
        """Iterate over the held messages."""
        return iter(list(self._held.values()))

    def __len__(self) -> int:
        """Return how many messages are held."""
        return len(self._held)

    def hold(self, message: Message) -> Held:
        """Start holding a message just received."""
        now = self._clock()
        held = Held(message, received_at=now, visible_until=now + self.visibility_timeout_s)
        self._held[id(held)] = held
        return held

    def drop(self, held: Held) -> None:
        """Stop holding a message (its outcome is recorded on the queue)."""
        self._held.pop(id(held), None)

    async def claim(self, held: Held) -> None:
        """Mark a message as settling: no extension of it is sent from now on.

        Waits for an extension of it already in flight, at most that call's timeout.
        """
        held.claimed = True
        held.retry_at = None
        call = held.in_call
        if call is not None and not call.done():
            await asyncio.wait({call}, timeout=self.call_timeout_s)

    async def run(self) -> None:
        """Extend due messages every `interval_s` (sooner for a retry), until cancelled."""
        while True:
            await self._sleep(self._next_delay())
            await self.beat()

    def _next_delay(self) -> float:
        now = self._clock()
        retries = [
            h.retry_at
            for h in self._held.values()
            if h.retry_at is not None and not (h.claimed or h.let_go or h.lost)
        ]
        if not retries:
            return self.interval_s
        return max(0.0, min(self.interval_s, min(retries) - now))

    async def beat(self) -> None:
        """Extend every held message that is due (or due for a retry), in batches of ten."""
        now = self._clock()
        due: list[Held] = []
        for held in self._held.values():
            if held.claimed or held.let_go or held.lost or held.in_call is not None:
                continue
            self._note_lapse(held, now)
            retrying = held.retry_at is not None and held.retry_at <= now
            if not retrying and held.visible_until - now > self.extend_below_s:
                continue
            if now - held.received_at >= self.max_hold_s:
                held.let_go = True
                held.retry_at = None
                log.warning(
                    "message held past max_hold_s; letting its visibility lapse",
                    extra={
                        "action": "heartbeat_let_go",
                        "queue": self._transport.queue_name,
                        "message_id": held.message.message_id,
                    },
                )
                continue
            due.append(held)
        if not due:
            return
        batches = [due[start : start + MAX_BATCH] for start in range(0, len(due), MAX_BATCH)]
        await asyncio.gather(*(self._extend(batch) for batch in batches))

    def _note_lapse(self, held: Held, now: float) -> None:
        """Warn once when a message's visibility lapsed before an extension got through."""
        if held.lapsed or now < held.visible_until:
            return
        held.lapsed = True
        self.lapses += 1
        log.warning(
            "visibility lapsed before it could be extended; the message may be delivered again",
            extra={
                "action": "heartbeat_lapsed",
                "queue": self._transport.queue_name,
                "message_id": held.message.message_id,
                "lapsed_s_ago": round(now - held.visible_until, 3),
                "extensions": held.extensions,
            },
        )

    async def _extend(self, batch: list[Held]) -> None:
        batch = [h for h in batch if not (h.claimed or h.let_go or h.lost)]
        if not batch:
            return
        now = self._clock()
        call: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        for held in batch:
            held.in_call = call
        entries = [(h.message.receipt_handle, self.visibility_timeout_s) for h in batch]
        self.calls += 1
        try:
            async with asyncio.timeout(self.call_timeout_s):
                failures = await self._transport.change_visibility_batch(entries)
        except (TransportError, TimeoutError) as exc:
            self._failed(batch, exc)
            return
        finally:
            for held in batch:
                held.in_call = None
            call.set_result(None)
        failed = {f.index: f for f in failures}
        for index, held in enumerate(batch):
            failure = failed.get(index)
            if failure is None:
                held.visible_until = now + self.visibility_timeout_s
                held.extensions += 1
                held.retry_at = None
                continue
            if not failure.sender_fault:
                held.retry_at = self._clock() + RETRY_DELAY_S  # the server's fault: try again soon
                continue
            held.lost = True
            held.retry_at = None
            log.warning(
                "visibility extension refused; the message may be delivered again",
                extra={
                    "action": "heartbeat_refused",
                    "queue": self._transport.queue_name,
                    "message_id": held.message.message_id,
                    "error": failure.code,
                },
            )

    def _failed(self, batch: list[Held], exc: Exception) -> None:
        """Schedule a retry of a failed or timed-out call, well before the visibility lapses."""
        self.failures += 1
        now = self._clock()
        # The first failure of a message is a warning; its retries every RETRY_DELAY_S through an
        # outage are logged at DEBUG (a lapse, if it comes to that, is a warning of its own).
        first = any(h.retry_at is None for h in batch)
        for held in batch:
            held.retry_at = now + RETRY_DELAY_S
        error = (
            f"no answer within {self.call_timeout_s:g} s"
            if isinstance(exc, TimeoutError)
            else str(exc)
        )
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "visibility extension failed; retrying on a fresh connection",
            extra={
                "action": "heartbeat_failed",
                "queue": self._transport.queue_name,
                "error": error,
                "message_ids": [h.message.message_id for h in batch],
                "visible_for_s": round(min(h.visible_until for h in batch) - now, 3),
            },
        )
