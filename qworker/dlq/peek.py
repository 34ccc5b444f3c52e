"""Peek at a dead-letter queue: show its messages without consuming them.

Messages are received with a short visibility timeout and made visible again at once
(ChangeMessageVisibilityBatch). Each peek is a receive, so it adds 1 to every shown message's
`ApproximateReceiveCount`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, final

from qworker.exceptions import TransportError
from qworker.message import Message, queue_name_from_arn
from qworker.transport import MAX_BATCH, QueueTransport

log = logging.getLogger("qworker.dlq")  # one logger for the whole DLQ tool, as before the split

PEEK_VISIBILITY_S: Final = 15
"""How long peeked messages stay hidden if resetting them fails: long enough to collect a peek."""
RECEIVE_WAIT_S: Final = 1.0
"""Long-poll wait per receive: a short poll (0 s) asks only some SQS hosts and can miss messages."""
EXCEEDED_REASON: Final = "exceeded maxReceiveCount"
"""The reason shown for messages SQS moved by the redrive policy (they carry no reject reason)."""
PREVIEW_CHARS: Final = 80


@final
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message, as `peek()` shows it.

    Attributes:
        message_id: The id in the dead-letter queue.
        body: The body.
        reason: `qworker.reject_reason`, or `EXCEEDED_REASON` when the redrive policy moved it.
        rejected: Whether qworker rejected it (False: it failed `maxReceiveCount` times).
        source_queue: The queue it came from, when known.
        receive_count: `ApproximateReceiveCount` in the DLQ, this peek included (servers carry the
            source's deliveries over when the redrive policy moves a message).
        source_receive_count: Deliveries on the source when qworker rejected it.
        sent_at: When it was sent.
        original_message_id: Its id on the source queue (rejected messages get a new id).
    """

    message_id: str
    body: str
    reason: str
    rejected: bool
    source_queue: str | None
    receive_count: int
    source_receive_count: int | None
    sent_at: datetime | None
    original_message_id: str | None

    @classmethod
    def from_message(cls, message: Message, *, source_queue: str | None = None) -> DeadLetter:
        """Describe a received DLQ message; `source_queue` is the default source."""
        reason = message.attribute("qworker.reject_reason")
        source_arn = message.attributes.get("DeadLetterQueueSourceArn")
        count = message.attribute("qworker.receive_count")
        sent_s = message.sent_timestamp_s
        return cls(
            message_id=message.message_id,
            body=message.body,
            reason=reason or EXCEEDED_REASON,
            rejected=reason is not None,
            source_queue=message.attribute("qworker.source_queue")
            or (queue_name_from_arn(source_arn) if source_arn else source_queue),
            receive_count=message.receive_count,
            source_receive_count=int(count) if count and count.isdigit() else None,
            sent_at=datetime.fromtimestamp(sent_s, UTC) if sent_s is not None else None,
            original_message_id=message.attribute("qworker.original_message_id"),
        )

    @property
    def preview(self) -> str:
        """The body's start, on one line."""
        flat = self.body.replace("\r", "\\r").replace("\n", "\\n")
        return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"

    def to_json(self) -> dict[str, object]:
        """The message as a JSON object (times in ISO 8601)."""
        data = dataclasses.asdict(self)
        data["sent_at"] = self.sent_at.isoformat() if self.sent_at else None
        return data


async def peek(
    dlq: QueueTransport,
    *,
    max_messages: int = 10,
    source_queue: str | None = None,
    wait_time_s: float = RECEIVE_WAIT_S,
    visibility_timeout_s: int = PEEK_VISIBILITY_S,
) -> list[DeadLetter]:
    """Show up to `max_messages` of a queue's messages and leave them there, visible.

    Messages are held (hidden for `visibility_timeout_s`) until the peek has collected them, so a
    receive does not return one twice, and then made visible again at once.

    Args:
        dlq: The dead-letter queue (any queue works).
        max_messages: The most messages to show.
        source_queue: The source queue, for messages that do not name theirs.
        wait_time_s: Long-poll wait of each receive.
        visibility_timeout_s: How long the messages stay hidden if resetting them fails.

    Raises:
        TransportError: A receive failed (messages already held are still made visible).
    """
    held: list[Message] = []
    shown: dict[str, DeadLetter] = {}
    try:
        while len(shown) < max_messages:
            batch = await dlq.receive(
                min(MAX_BATCH, max_messages - len(shown)),
                wait_time_s=wait_time_s,
                visibility_timeout_s=visibility_timeout_s,
            )
            held.extend(batch)
            fresh = [m for m in batch if m.message_id not in shown]
            if not fresh:
                break
            for message in fresh:
                shown[message.message_id] = DeadLetter.from_message(
                    message, source_queue=source_queue
                )
    finally:
        await release(dlq, held)
    return list(shown.values())


async def release(queue: QueueTransport, messages: Sequence[Message]) -> None:
    """Make held messages visible again at once; on failure, they return after their timeout."""
    for start in range(0, len(messages), MAX_BATCH):
        chunk = messages[start : start + MAX_BATCH]
        try:
            failures = await queue.change_visibility_batch([(m.receipt_handle, 0) for m in chunk])
            error = f"{len(failures)} failed: {failures[0].code}" if failures else None
        except TransportError as exc:
            error = str(exc)
        if error is not None:
            # Not fatal: the messages become visible when their short visibility timeout ends.
            log.warning(
                "could not make held messages visible at once; they return after their timeout",
                extra={"action": "dlq_release_failed", "queue": queue.queue_name, "error": error},
            )
