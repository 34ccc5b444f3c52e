"""Settlement: record a message's outcome on the queue.

| outcome     | action                                                                          |
| ----------- | ------------------------------------------------------------------------------- |
| `succeeded` | DeleteMessageBatch (through the delete batcher)                                 |
| `failed`    | ChangeMessageVisibility to the retry backoff (0 when failures are released)     |
| `retried`   | ChangeMessageVisibility to the delay the handler asked for                      |
| `rejected`  | SendMessage to the dead-letter queue with the reason, then delete; without a    |
|             | dead-letter queue the message is hidden for the longest backoff, for redrive     |
| `released`  | ChangeMessageVisibility to 0                                                    |

Every action runs shielded from cancellation with its own timeout (a late cancel during shutdown
must not lose a finished message's delete), and a failed action is logged and reported, never
raised: the message then simply comes back, which at-least-once delivery allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Final, final

from qworker.batch import Batcher
from qworker.exceptions import TransientTransportError, TransportError
from qworker.outcome import SQS_MAX_VISIBILITY_S, Outcome, OutcomeRecord, RetryPolicy
from qworker.transport import Message, MessageAttribute, QueueTransport, SendEntry

__all__ = ["REJECT_ATTRIBUTES", "Settler"]

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S: Final = 10.0
"""The longest one settlement may take, shielded, before it is given up (the message comes back)."""

SQS_MAX_MESSAGE_ATTRIBUTES: Final = 10

REJECT_ATTRIBUTES: Final = (
    "qworker.reject_reason",
    "qworker.source_queue",
    "qworker.original_message_id",
    "qworker.receive_count",
)
"""Attributes a rejected message carries into the dead-letter queue, most important first."""


@final
class Settler:
    """Records outcomes of one queue's messages on the queue."""

    def __init__(
        self,
        transport: QueueTransport,
        *,
        dead_letter: QueueTransport | None = None,
        retry_policy: RetryPolicy | None = None,
        release_failed: bool = False,
        batch_wait_s: float = 0.002,
    ) -> None:
        """Create a settler; run `run()` in a task group for its batchers.

        Args:
            transport: The queue.
            dead_letter: Where rejected messages go (None: leave them for the redrive policy).
            retry_policy: Backoff of failed messages.
            release_failed: Make failed messages visible at once (a canary's choice).
            batch_wait_s: How long a partial delete batch waits for more.
        """
        self._transport = transport
        self._dead_letter = dead_letter
        self.retry_policy = retry_policy or RetryPolicy()
        self.release_failed = release_failed
        self.deletes: Batcher[str] = Batcher(
            transport.delete_batch, name="delete", max_wait_s=batch_wait_s
        )
        self.releases: Batcher[tuple[str, int]] = Batcher(
            transport.change_visibility_batch, name="release", max_wait_s=batch_wait_s
        )

    async def run(self) -> None:
        """Run the batchers until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.deletes.run(), name="delete batcher")
            group.create_task(self.releases.run(), name="release batcher")

    async def settle(self, message: Message, record: OutcomeRecord) -> bool:
        """Record `record` on the queue; return whether that worked. Never raises TransportError."""
        if record.outcome is Outcome.SUCCEEDED:
            return await self._acknowledge(message, record)
        action = asyncio.ensure_future(self._act(message, record))
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT_S):
                return await asyncio.shield(action)
        except asyncio.CancelledError:
            # Finish the action anyway, then let the cancellation go on.
            async with asyncio.timeout(SETTLE_TIMEOUT_S):
                await asyncio.shield(action)
            raise
        except TimeoutError:
            action.cancel()
            self._warn(message, record, "timed out")
            return False

    async def delete(self, message: Message) -> str | None:
        """Delete a message through the batcher; return None, or why it was not deleted.

        The common case, so kept lean (no task, no timer: the batch has its own timeout). A
        cancel while waiting cannot unsend the delete, and is let through once it is done.
        """
        future = self.deletes.enqueue(message.receipt_handle)
        try:
            failure = await asyncio.shield(future)
        except asyncio.CancelledError:
            with contextlib.suppress(TransportError):
                await asyncio.shield(future)
            raise
        except TransportError as exc:
            return str(exc)
        return None if failure is None else f"{failure.code}: {failure.message}"

    async def _acknowledge(self, message: Message, record: OutcomeRecord) -> bool:
        error = await self.delete(message)
        if error is not None:
            self._warn(message, record, error)
            return False
        return True

    async def _act(self, message: Message, record: OutcomeRecord) -> bool:
        try:
            match record.outcome:
                case Outcome.FAILED:
                    delay = (
                        0
                        if self.release_failed
                        else self.retry_policy.delay_s(record.receive_count)
                    )
                    await self._transport.change_visibility(message.receipt_handle, round(delay))
                case Outcome.RETRIED:
                    delay = min(record.delay_s or 0.0, SQS_MAX_VISIBILITY_S)
                    await self._transport.change_visibility(message.receipt_handle, round(delay))
                case Outcome.REJECTED:
                    return await self._reject(message, record)
                case Outcome.RELEASED:
                    return await self._release(message, record)
        except TransportError as exc:
            self._warn(message, record, str(exc))
            return False
        return True

    async def _release(self, message: Message, record: OutcomeRecord) -> bool:
        failure = await self.releases.submit((message.receipt_handle, 0))
        if failure is not None:
            self._warn(message, record, f"{failure.code}: {failure.message}")
            return False
        return True

    async def _reject(self, message: Message, record: OutcomeRecord) -> bool:
        if self._dead_letter is None:
            # No dead-letter queue we may write to.
            await self._leave_for_redrive(message)
            return True
        if await self._send_dead_letter(message, dead_letter_attributes(message, record)):
            return await self._acknowledge(message, record)
        # Refused with our attributes (a body near the size limit leaves no room for them): the
        # message as it was sent always fits, so it goes without them, its reason in the log.
        log.warning(
            "dead-letter copy refused with the reject attributes; sending it without them",
            extra={
                "action": "dead_letter_bare",
                "queue": record.queue,
                "message_id": message.message_id,
                "error": record.error,
            },
        )
        if await self._send_dead_letter(message, message.message_attributes):
            return await self._acknowledge(message, record)
        # Refused for good even as sent.
        log.error(
            "dead-letter queue refused the message; leaving it for the redrive policy",
            extra={
                "action": "dead_letter_refused",
                "queue": record.queue,
                "message_id": message.message_id,
            },
        )
        await self._leave_for_redrive(message)
        return True

    async def _leave_for_redrive(self, message: Message) -> None:
        """Hide a rejected message for the longest backoff, never to be retried blindly.

        The queue's redrive policy (if any) moves it after maxReceiveCount.
        """
        await self._transport.change_visibility(
            message.receipt_handle, round(min(self.retry_policy.max_s, SQS_MAX_VISIBILITY_S))
        )

    async def _send_dead_letter(
        self, message: Message, attributes: Mapping[str, MessageAttribute]
    ) -> bool:
        """Copy the message to the DLQ; False when refused for good (transient errors raise)."""
        assert self._dead_letter is not None  # noqa: S101 (checked by the caller)
        entry = SendEntry(
            body=message.body,
            attributes=attributes,
            group_id=message.group_id,
            deduplication_id=message.message_id if message.group_id is not None else None,
        )
        try:
            failures = await self._dead_letter.send_batch([entry])
        except TransientTransportError:
            raise
        except TransportError:
            return False  # e.g. the batch request too long: the request's fault
        if not failures:
            return True
        if failures[0].sender_fault:
            return False
        raise TransientTransportError(f"dead-letter send failed: {failures[0].code}")

    def _warn(self, message: Message, record: OutcomeRecord, error: str) -> None:
        log.warning(
            "could not record outcome on the queue; the message will be delivered again",
            extra={
                "action": "settle_failed",
                "queue": record.queue,
                "message_id": message.message_id,
                "outcome": record.outcome.value,
                "error": error,
            },
        )


def dead_letter_attributes(
    message: Message, record: OutcomeRecord
) -> Mapping[str, MessageAttribute]:
    """The attributes a rejected message carries: its own, then the reason, within SQS's 10."""
    # A message rejected before (redriven, then rejected again) carries our old attributes: the
    # new ones replace them.
    attributes = {k: v for k, v in message.message_attributes.items() if k not in REJECT_ATTRIBUTES}
    ours = {
        "qworker.reject_reason": record.error or "rejected",
        "qworker.source_queue": record.queue,
        "qworker.original_message_id": message.message_id,
        "qworker.receive_count": str(message.receive_count),
    }
    for name, value in ours.items():
        if len(attributes) >= SQS_MAX_MESSAGE_ATTRIBUTES:
            break
        attributes[name] = MessageAttribute("String", value)
    return attributes
