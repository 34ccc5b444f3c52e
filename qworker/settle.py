"""Settlement: record a message's outcome on the queue.

| outcome     | action                                                                          |
| ----------- | ------------------------------------------------------------------------------- |
| `succeeded` | DeleteMessageBatch (through the delete batcher)                                 |
| `failed`    | ChangeMessageVisibility to the retry backoff (0 when failures are released)     |
| `retried`   | ChangeMessageVisibility to the delay the handler asked for                      |
| `rejected`  | SendMessage to the dead-letter queue with the reason, then delete; without a    |
|             | dead-letter queue the message is hidden for the longest backoff, for redrive     |
| `released`  | ChangeMessageVisibility to 0 (or the record's `delay_s`: a FIFO shutdown)        |

A canary on a standard queue (`max_hops` > 0) hands every `failed`, `retried` or `rejected`
delivery back as a fresh copy instead (`qworker.handback`); the primary keeps the exact receive
budget across such copies, dead-lettering a copy that spent it (`max_receive_count`).

Every action runs shielded from cancellation with its own timeout (a late cancel during shutdown
must not lose a finished message's delete), and a failed action is logged and reported, never
raised: the message then simply comes back, which at-least-once delivery allows.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Final, final

from qworker.batch import Batcher, Done, describe_failure
from qworker.concurrency import cancel_and_wait
from qworker.dead_letter import REJECT_ATTRIBUTES, dead_letter_attributes
from qworker.exceptions import QueueDoesNotExist, TransientTransportError, TransportError
from qworker.handback import HandBack, hand_back_entry
from qworker.message import (
    ORIGINAL_ID_ATTRIBUTE,
    RECEIVES_ATTRIBUTE,
    Message,
    MessageAttribute,
    SendEntry,
)
from qworker.outcome import SQS_MAX_VISIBILITY_S, Outcome, OutcomeRecord, RetryPolicy
from qworker.transport import QueueTransport

__all__ = ["REJECT_ATTRIBUTES", "Settler", "dead_letter_attributes", "hand_back_entry"]

log = logging.getLogger(__name__)

SETTLE_TIMEOUT_S: Final = 10.0
"""The longest one settlement may take, shielded, before it is given up (the message comes back)."""

_HANDED_BACK: Final = frozenset({Outcome.FAILED, Outcome.RETRIED, Outcome.REJECTED})
"""The outcomes a canary hands back (anything but success; a release never started)."""

_SPENDS_BUDGET: Final = frozenset({Outcome.FAILED, Outcome.RETRIED})
"""The outcomes that leave a message on the queue for another delivery (a receive spent)."""


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
        max_hops: int = 0,
        max_receive_count: int | None = None,
        batch_wait_s: float = 0.002,
    ) -> None:
        """Create a settler; run `run()` in a task group for its batchers.

        Args:
            transport: The queue.
            dead_letter: Where rejected messages go (None: leave them for the redrive policy).
            retry_policy: Backoff of failed messages.
            release_failed: Make failed messages visible at once (a canary's choice).
            max_hops: Hand non-successes back as fresh copies, up to this many times per message
                (0: never; a canary's choice on a standard queue).
            max_receive_count: The queue's redrive budget, kept across hand-back copies: a copy
                that carries spent deliveries and fails at this effective receive count is
                dead-lettered here (None: left to SQS; a canary's choice, or no redrive policy).
            batch_wait_s: How long a partial delete batch waits for more.
        """
        self._transport = transport
        self._dead_letter = dead_letter
        self.retry_policy = retry_policy or RetryPolicy()
        self.release_failed = release_failed
        if max_hops < 0:
            raise ValueError("max_hops must not be negative")
        self.max_hops = max_hops
        if max_receive_count is not None and max_receive_count < 1:
            raise ValueError("max_receive_count must be at least 1")
        self.max_receive_count = max_receive_count
        self._hand_back = HandBack(transport, max_hops=max_hops, delete=self.delete)
        self.deletes: Batcher[str] = Batcher(
            transport.delete_batch, name="delete", max_wait_s=batch_wait_s
        )
        self.releases: Batcher[tuple[str, int]] = Batcher(
            transport.change_visibility_batch, name="release", max_wait_s=batch_wait_s
        )

    @property
    def can_dead_letter(self) -> bool:
        """Whether rejected messages can be sent to a dead-letter queue."""
        return self._dead_letter is not None

    @property
    def handed_back(self) -> int:
        """Messages handed back to the primary (their originals deleted)."""
        return self._hand_back.handed_back

    async def flush(self) -> None:
        """Wait until every delete and release queued so far has its answer."""
        await self.deletes.flush()
        await self.releases.flush()

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
            try:
                async with asyncio.timeout(SETTLE_TIMEOUT_S):
                    await asyncio.shield(action)
            finally:
                await cancel_and_wait([action])  # given up: it must not outlive the settle
            raise
        except TimeoutError:
            await cancel_and_wait([action])
            self.warn_unsettled(message, record, "timed out")
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
        return describe_failure(failure, None)

    def delete_soon(self, message: Message, done: Done, token: object) -> None:
        """Delete a message through the batcher; `done(token, failure, error)` gets the answer.

        The success path's delete: no future and no waiting task (`done` runs in the batcher's
        task when the batch's answer arrives; `describe_failure` words a failure). `flush()` waits
        for it at shutdown.
        """
        self.deletes.send_soon(message.receipt_handle, done, token)

    async def _acknowledge(self, message: Message, record: OutcomeRecord) -> bool:
        error = await self.delete(message)
        if error is not None:
            self.warn_unsettled(message, record, error)
            return False
        return True

    async def _act(self, message: Message, record: OutcomeRecord) -> bool:
        try:
            settled = await self._budgeted(message, record)
            if settled is not None:
                return settled
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
            self.warn_unsettled(message, record, str(exc))
            return False
        return True

    async def _budgeted(self, message: Message, record: OutcomeRecord) -> bool | None:
        """Keep the receive budget: a canary's hand-back, or the end of a copy's budget.

        Returns whether the settlement worked, or None for the outcome's plain action.
        """
        if self.max_hops and record.outcome in _HANDED_BACK:
            handed = await self._hand_back(message, record)
            if handed is not None:
                return handed
            if record.outcome is Outcome.REJECTED:
                # The canary's verdict may be wrong: the primary gives its own.
                await self._transport.change_visibility(message.receipt_handle, 0)
                return True
            return None
        if self._budget_spent(message, record):
            return await self._dead_letter_spent(message, record)
        return None

    def _budget_spent(self, message: Message, record: OutcomeRecord) -> bool:
        """Whether a copy carrying spent deliveries used up the budget SQS cannot see whole."""
        return (
            self.max_receive_count is not None
            and self._dead_letter is not None
            and record.outcome in _SPENDS_BUDGET
            and message.group_id is None
            and message.prior_receives > 0
            and message.effective_receive_count >= self.max_receive_count
        )

    async def _dead_letter_spent(self, message: Message, record: OutcomeRecord) -> bool:
        """Dead-letter a copy at the end of its budget, as SQS would the original."""
        budget = self.max_receive_count
        attempts = message.effective_receive_count
        reason = f"failed {attempts} times (maxReceiveCount {budget}): {record.error}"
        log.warning(
            "message failed %d times (maxReceiveCount %d, %d of them before a canary handed it "
            "back); dead-lettered",
            attempts,
            budget,
            message.prior_receives,
            extra={
                "action": "budget_dead_lettered",
                "queue": record.queue,
                "message_type": record.message_type,
                "message_id": message.message_id,
                "original_message_id": message.attribute(ORIGINAL_ID_ATTRIBUTE)
                or message.message_id,
                "outcome": record.outcome.value,
                "receive_count": attempts,
                "prior_receives": message.prior_receives,
                "hops": message.hops,
                "max_receive_count": budget,
                "error": record.error,
            },
        )
        return await self._reject(message, replace(record, outcome=Outcome.REJECTED, error=reason))

    async def _release(self, message: Message, record: OutcomeRecord) -> bool:
        delay = round(min(record.delay_s or 0, SQS_MAX_VISIBILITY_S))
        failure = await self.releases.submit((message.receipt_handle, delay))
        if failure is not None:
            self.warn_unsettled(message, record, f"{failure.code}: {failure.message}")
            return False
        return True

    async def _reject(self, message: Message, record: OutcomeRecord) -> bool:
        if self._dead_letter is None:
            # No dead-letter queue we may write to.
            await self._leave_for_redrive(message)
            return True
        try:
            sent = await self._send_dead_letter(message, dead_letter_attributes(message, record))
        except QueueDoesNotExist as exc:
            # Deleted while the worker ran: say so, not "refused", and leave it to the policy.
            self._dead_letter_missing(message, record, str(exc))
            await self._leave_for_redrive(message)
            return True
        if sent:
            return await self._acknowledge(message, record)
        # Refused with our attributes (a body near the size limit leaves no room for them): the
        # message as it was sent always fits, so it goes without them, its reason in the log.
        log.warning(
            "dead-letter copy refused with the reject attributes; sending it without them",
            extra={
                "action": "dead_letter_bare",
                "queue": record.queue,
                "message_type": record.message_type,
                "message_id": message.message_id,
                "error": record.error,
            },
        )
        bare = {k: v for k, v in message.message_attributes.items() if k != RECEIVES_ATTRIBUTE}
        if await self._send_dead_letter(message, bare):
            return await self._acknowledge(message, record)
        # Refused for good even as sent.
        log.error(
            "dead-letter queue refused the message; leaving it for the redrive policy",
            extra={
                "action": "dead_letter_refused",
                "queue": record.queue,
                "message_type": record.message_type,
                "message_id": message.message_id,
            },
        )
        await self._leave_for_redrive(message)
        return True

    def _dead_letter_missing(self, message: Message, record: OutcomeRecord, error: str) -> None:
        assert self._dead_letter is not None  # noqa: S101 (checked by the caller)
        log.error(
            "dead-letter queue does not exist; leaving the rejected message for the redrive policy",
            extra={
                "action": "dead_letter_missing",
                "queue": record.queue,
                "message_type": record.message_type,
                "dead_letter_queue": self._dead_letter.queue_name,
                "message_id": message.message_id,
                "error": error,
            },
        )

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
        except (TransientTransportError, QueueDoesNotExist):
            raise
        except TransportError:
            return False  # e.g. the batch request too long: the request's fault
        if not failures:
            return True
        if failures[0].sender_fault:
            return False
        raise TransientTransportError(f"dead-letter send failed: {failures[0].code}")

    def warn_unsettled(self, message: Message, record: OutcomeRecord, error: str) -> None:
        """Log that an outcome could not be recorded on the queue (the message comes back)."""
        log.warning(
            "could not record outcome on the queue; the message will be delivered again",
            extra={
                "action": "settle_failed",
                "queue": record.queue,
                "message_type": record.message_type,
                "message_id": message.message_id,
                "outcome": record.outcome.value,
                "error": error,
            },
        )
