"""The heartbeat: keep every held message invisible while the worker holds it.

A message the worker holds (running, or waiting behind its FIFO group) must not become visible
again, or another worker would run it a second time. The heartbeat extends the visibility of every
held message before it expires, in ChangeMessageVisibilityBatch calls, up to `max_hold_s` after it
was received; after that it lets the message go, so a stuck handler cannot hold a message for ever.

A message is claimed (`claim()`) before its outcome is recorded on the queue; claimed messages are
never extended again. The claim takes the heartbeat's lock, so no extension that includes the
message can still be on its way to the server once the delete (or backoff) is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, final

from qworker.exceptions import TransportError
from qworker.transport import MAX_BATCH, Message, QueueTransport

__all__ = ["Heartbeat", "Held"]

log = logging.getLogger(__name__)

MIN_INTERVAL_S: Final = 0.2
"""The heartbeat never ticks faster than this, whatever the visibility timeout."""


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
    extensions: int = field(default=0)


@final
class Heartbeat:
    """Extends the visibility of held messages of one queue."""

    def __init__(
        self,
        transport: QueueTransport,
        *,
        visibility_timeout_s: int,
        max_hold_s: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Create a heartbeat; run it with `run()` in a task group.

        Args:
            transport: The queue.
            visibility_timeout_s: The visibility each extension asks for (and that receives gave).
            max_hold_s: Stop extending a message this long after it was received.
            clock: Monotonic seconds.
            sleep: Injectable sleep.
        """
        self._transport = transport
        self.visibility_timeout_s = visibility_timeout_s
        self.max_hold_s = max_hold_s
        self._clock = clock
        self._sleep = sleep
        # Tick three times per visibility timeout: a message due at one tick is extended with two
        # ticks of margin left, enough to ride out one failed call.
        self.interval_s = max(MIN_INTERVAL_S, visibility_timeout_s / 3)
        self._held: dict[int, Held] = {}
        self._lock = asyncio.Lock()
        self.calls = 0

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
        """Mark a message as settling: no extension of it is sent from now on."""
        if held.claimed:
            return
        async with self._lock:
            held.claimed = True

    async def run(self) -> None:
        """Extend due messages every `interval_s`, until cancelled."""
        while True:
            await self._sleep(self.interval_s)
            await self.beat()

    async def beat(self) -> None:
        """Extend every held message whose visibility would lapse before the next tick but one."""
        async with self._lock:
            now = self._clock()
            due: list[Held] = []
            for held in self._held.values():
                if held.claimed or held.let_go or held.lost:
                    continue
                if held.visible_until - now > 2 * self.interval_s:
                    continue
                if now - held.received_at >= self.max_hold_s:
                    held.let_go = True
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
            for start in range(0, len(due), MAX_BATCH):
                await self._extend(due[start : start + MAX_BATCH])

    async def _extend(self, batch: list[Held]) -> None:
        now = self._clock()
        entries = [(h.message.receipt_handle, self.visibility_timeout_s) for h in batch]
        self.calls += 1
        try:
            failures = await self._transport.change_visibility_batch(entries)
        except TransportError as exc:
            # The next tick tries again: messages were due two ticks before they lapse.
            log.warning(
                "visibility extension failed",
                extra={
                    "action": "heartbeat_failed",
                    "queue": self._transport.queue_name,
                    "error": str(exc),
                },
            )
            return
        failed = {f.index: f for f in failures}
        for index, held in enumerate(batch):
            failure = failed.get(index)
            if failure is None:
                held.visible_until = now + self.visibility_timeout_s
                held.extensions += 1
                continue
            if not failure.sender_fault:
                continue  # the server's fault: the next tick tries again, with margin to spare
            held.lost = True
            log.warning(
                "visibility extension refused; the message may be delivered again",
                extra={
                    "action": "heartbeat_refused",
                    "queue": self._transport.queue_name,
                    "message_id": held.message.message_id,
                    "error": failure.code,
                },
            )
