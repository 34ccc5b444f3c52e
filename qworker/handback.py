"""Hand-back: a canary replaces a message it did not succeed on by a fresh copy.

A canary on a standard queue (`max_hops` > 0) hands every `failed`, `retried` or `rejected`
delivery back instead, whatever its receive count: it sends a fresh copy of the message to the same
queue (same body, the message's attributes and trace header, `qworker.hops` one higher,
`qworker.original_message_id` kept), and deletes the original only once the copy is confirmed. The
copy carries the receive budget the message had left, never more and never less: `qworker.receives`
counts the deliveries spent before the canary's (the earlier copies' and this one's
`ApproximateReceiveCount - 1`; the canary's own delivery is not counted). So a failing canary costs
a message latency, never a receive of its `maxReceiveCount`, whether it takes the message's first
delivery or one the primary failed before (an idle canary takes most receives: releasing a later
delivery would let it spend the budget again and again). Only the primary ever dead-letters. A copy
the canary gets again is handed back again. A failed delete after the send leaves a duplicate,
which at-least-once delivery allows; nothing is ever lost. A canary's `Retry` is handed back at
once like a failure: its delay is the canary's verdict, like its `Reject`, and the primary asks for
its own if it needs one (a delayed copy would also come back to whichever receiver asks first when
it matures, which favours an idle canary).

It is bounded: a message that already made `max_hops` hops, or one that cannot be copied (no room
for the hop attribute, or for `qworker.receives` when deliveries were spent, among SQS's 10 message
attributes; a copy over the size limit; a refused or failed send), falls back to the release (a
canary's `Reject` included: it is released for the primary, not dead-lettered; the release spends
a receive, as before hand-back existed). FIFO queues never hand back: a copy would get a new place
at the end of its group and a new deduplication id, breaking the order and exactly-once processing
that FIFO promises, so a FIFO canary releases as before.

The primary keeps the exact budget (`max_receive_count`, from the queue's redrive policy): the
effective receive count of a delivery is `qworker.receives` plus `ApproximateReceiveCount`, used
for the backoff and for first-attempt detection (`OutcomeRecord.receive_count`). SQS's redrive
policy only sees the copy's own count, so a copy that carries spent deliveries and fails (or is
retried) at an effective count of `max_receive_count` or more is dead-lettered by the worker
itself, with the reason "failed N times (maxReceiveCount M): <error>", then deleted: the same
verdict SQS gives an original, which is left to the redrive policy as before. Without a writable
dead-letter queue, or on a FIFO queue, the normal path runs. The dead-letter copy does not carry
`qworker.receives`: a message redriven from there starts a fresh budget.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final, final

from qworker.exceptions import TransportError
from qworker.message import (
    HOPS_ATTRIBUTE,
    ORIGINAL_ID_ATTRIBUTE,
    RECEIVES_ATTRIBUTE,
    Message,
    MessageAttribute,
    SendEntry,
)
from qworker.outcome import OutcomeRecord
from qworker.transport import QueueTransport

__all__ = ["SQS_MAX_MESSAGE_ATTRIBUTES", "TRACE_HEADER", "HandBack", "hand_back_entry"]

log = logging.getLogger("qworker.settle")  # the logger these lines always had

SQS_MAX_MESSAGE_ATTRIBUTES: Final = 10

TRACE_HEADER: Final = "AWSTraceHeader"


@final
class HandBack:
    """Hands a canary's non-successes back to the primary as fresh copies (a `Settler` part)."""

    def __init__(
        self,
        transport: QueueTransport,
        *,
        max_hops: int,
        delete: Callable[[Message], Awaitable[str | None]],
    ) -> None:
        """Hand back on `transport`, up to `max_hops` times per message.

        Args:
            transport: The queue the copy goes to (the same one).
            max_hops: The limit per message (its `qworker.hops`).
            delete: Deletes the original once the copy is confirmed; returns why it did not.
        """
        self._transport = transport
        self.max_hops = max_hops
        self._delete = delete
        self.handed_back = 0
        """Messages handed back (their originals deleted)."""

    async def __call__(self, message: Message, record: OutcomeRecord) -> bool | None:
        """Replace the message by a fresh copy; None when it cannot be (the caller releases it)."""
        hops = message.hops + 1
        why: str | None = None
        entry: SendEntry | None = None
        if message.group_id is not None:
            why = "FIFO messages are never copied"
        elif hops > self.max_hops:
            why = f"already handed back {message.hops} times (the limit)"
        else:
            entry = hand_back_entry(message, hops)
            if entry is None:
                needed = HOPS_ATTRIBUTE
                if _spent_before_copy(message):
                    needed += f" and {RECEIVES_ATTRIBUTE}"
                why = (
                    f"no room for {needed}: the message has "
                    f"{len(message.message_attributes)} attributes (SQS allows "
                    f"{SQS_MAX_MESSAGE_ATTRIBUTES})"
                )
            else:
                why = await self._send_copy(entry)
        if why is not None or entry is None:
            self._skip(message, record, why or "no copy")
            return None
        error = await self._delete(message)
        if error is not None:
            log.warning(
                "handed back to the primary, but the original could not be deleted; it will be "
                "delivered again (a duplicate)",
                extra={
                    "action": "hand_back_duplicate",
                    "queue": record.queue,
                    "message_id": message.message_id,
                    "hops": hops,
                    "error": error,
                },
            )
            return False
        self.handed_back += 1
        log.info(
            "handed back to the primary",
            extra={
                "action": "handed_back",
                "queue": record.queue,
                "message_id": message.message_id,
                "original_message_id": message.attribute(ORIGINAL_ID_ATTRIBUTE)
                or message.message_id,
                "outcome": record.outcome.value,
                "reason": record.error,
                "hops": hops,
                "receive_count": message.effective_receive_count,
                "receives": _spent_before_copy(message),
            },
        )
        return True

    async def _send_copy(self, entry: SendEntry) -> str | None:
        """Send the copy; return None once it is confirmed, or why it was not sent."""
        try:
            failures = await self._transport.send_batch([entry])
        except TransportError as exc:  # transient or not, the release is the safe way out
            return f"copy not sent: {exc}"
        if failures:
            failure = failures[0]
            return f"copy refused: {failure.code}: {failure.message}".rstrip(": ")
        return None

    def _skip(self, message: Message, record: OutcomeRecord, why: str) -> None:
        log.warning(
            "not handed back to the primary: %s",
            why,
            extra={
                "action": "hand_back_skipped",
                "queue": record.queue,
                "message_id": message.message_id,
                "outcome": record.outcome.value,
                "hops": message.hops,
                "why": why,
            },
        )


def hand_back_entry(message: Message, hops: int) -> SendEntry | None:
    """The fresh copy a canary hands back, or None when the attributes it needs do not fit.

    The copy carries the message's own attributes, `qworker.hops` set to `hops`,
    `qworker.receives` (the deliveries spent before the canary's, when there are any: the copy
    must not get them back), the original message id (kept from an earlier copy; added only when
    there is room) and the trace header.
    """
    spent = _spent_before_copy(message)
    attributes = {
        k: v
        for k, v in message.message_attributes.items()
        if k not in {HOPS_ATTRIBUTE, RECEIVES_ATTRIBUTE}
    }
    needed = 1 + (spent > 0)
    if len(attributes) + needed > SQS_MAX_MESSAGE_ATTRIBUTES:
        return None
    attributes[HOPS_ATTRIBUTE] = MessageAttribute("Number", str(hops))
    if spent:
        attributes[RECEIVES_ATTRIBUTE] = MessageAttribute("Number", str(spent))
    if ORIGINAL_ID_ATTRIBUTE not in attributes and len(attributes) < SQS_MAX_MESSAGE_ATTRIBUTES:
        attributes[ORIGINAL_ID_ATTRIBUTE] = MessageAttribute("String", message.message_id)
    return SendEntry(
        body=message.body,
        attributes=attributes,
        trace_header=message.attributes.get(TRACE_HEADER),
    )


def _spent_before_copy(message: Message) -> int:
    """The budget a hand-back copy of this delivery starts with spent.

    Every delivery before this one counted (the primary's failures, a release, a lapsed
    visibility), plus what earlier copies spent; the canary's own delivery, this one, does not.
    """
    return message.prior_receives + message.receive_count - 1
