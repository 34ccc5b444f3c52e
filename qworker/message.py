"""The plain data a queue transport speaks: messages, attributes, sends, batch failures, queues.

These types carry no I/O; `qworker.transport` sends and receives them (and re-exports them), and
`Message.from_sqs` / `SendEntry.to_sqs` / `QueueAttributes.from_sqs` convert to and from SQS's wire
shapes. `Envelope` (with `SnsEnvelope` and `EventBridgeEnvelope`) is what `qworker.envelopes` read
from an SNS notification or an EventBridge event around the body: a message that came through one
carries it as `Message.envelope`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, final

__all__ = [
    "HOPS_ATTRIBUTE",
    "ORIGINAL_ID_ATTRIBUTE",
    "RECEIVES_ATTRIBUTE",
    "BatchFailure",
    "Envelope",
    "EventBridgeEnvelope",
    "Message",
    "MessageAttribute",
    "QueueAttributes",
    "RedrivePolicy",
    "SendEntry",
    "SnsEnvelope",
    "queue_name_from_arn",
    "queue_name_from_url",
]

HOPS_ATTRIBUTE: Final = "qworker.hops"
"""How many times a canary handed the message back as a fresh copy (absent: never)."""

ORIGINAL_ID_ATTRIBUTE: Final = "qworker.original_message_id"
"""The id of the message as first sent, on its hand-back copies and dead-letter copies."""

RECEIVES_ATTRIBUTE: Final = "qworker.receives"
"""Deliveries a hand-back copy's message already spent of its receive budget (absent: none)."""


@final
@dataclass(frozen=True, slots=True)
class MessageAttribute:
    """A message attribute: its data type (`String`, `Number`, `Binary`, ...) and value."""

    data_type: str
    value: str | bytes

    def to_sqs(self) -> dict[str, Any]:
        """Return the attribute in SQS's wire shape."""
        if isinstance(self.value, bytes):
            return {"DataType": self.data_type, "BinaryValue": self.value}
        return {"DataType": self.data_type, "StringValue": self.value}

    @classmethod
    def from_sqs(cls, raw: Mapping[str, Any]) -> MessageAttribute:
        """Build an attribute from SQS's wire shape."""
        data_type = str(raw.get("DataType", "String"))
        if "BinaryValue" in raw:
            return cls(data_type, bytes(raw["BinaryValue"]))
        return cls(data_type, str(raw.get("StringValue", "")))


@final
@dataclass(frozen=True, slots=True)
class SnsEnvelope:
    """What the SNS notification around a body said (a subscription without raw delivery).

    Attributes:
        topic_arn: The topic the message was published to.
        message_id: SNS's id of the publication (not the SQS message id).
        timestamp: When SNS accepted the publication.
        subject: The subject given to `Publish`, if any.
        message_attributes: The publisher's message attributes (`Binary` values decoded to bytes).
        sequence_number: The FIFO topic's sequence number, if any.
    """

    topic_arn: str
    message_id: str
    timestamp: datetime | None = None
    subject: str | None = None
    message_attributes: Mapping[str, MessageAttribute] = field(default_factory=dict)
    sequence_number: str | None = None

    def attribute(self, name: str) -> str | None:
        """Return a string-valued SNS message attribute, or None."""
        attr = self.message_attributes.get(name)
        return attr.value if attr is not None and isinstance(attr.value, str) else None


@final
@dataclass(frozen=True, slots=True)
class EventBridgeEnvelope:
    """The top-level fields of an EventBridge event around a body (its `detail`).

    Attributes:
        id: The event's id.
        source: Who put the event (`com.example.orders`, `aws.s3`, ...).
        detail_type: The event's `detail-type`.
        time: When the event happened.
        resources: The ARNs the event is about.
        account: The account the event was put in.
        region: The region the event was put in.
        version: The envelope's version (`"0"`).
    """

    id: str
    source: str
    detail_type: str
    time: datetime | None = None
    resources: tuple[str, ...] = ()
    account: str = ""
    region: str = ""
    version: str = "0"


@final
@dataclass(frozen=True, slots=True)
class Envelope:
    """The envelopes a body came in, outermost first: SNS, EventBridge, or both (EventBridge → SNS).

    Attributes:
        sns: The SNS notification's metadata, when the body came through an SNS topic.
        eventbridge: The EventBridge event's metadata, when the body is an event's `detail`.
        raw_body: The body as it was received, envelopes included.
    """

    sns: SnsEnvelope | None = None
    eventbridge: EventBridgeEnvelope | None = None
    raw_body: str = ""


@final
@dataclass(frozen=True, slots=True)
class Message:
    """One received message.

    Attributes:
        message_id: The id SQS gave the message when it was sent (the same on every delivery).
        receipt_handle: The handle of this delivery; deletes and visibility changes need it.
        body: The body as sent (a handler whose message came in an envelope sees its payload).
        attributes: System attributes (`ApproximateReceiveCount`, `SentTimestamp`, `MessageGroupId`,
            `AWSTraceHeader`, ...).
        message_attributes: The sender's message attributes (SQS's; an SNS publisher's are on
            `envelope.sns`).
        envelope: The SNS / EventBridge envelope the body was taken out of (`None`: none).
    """

    message_id: str
    receipt_handle: str
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    message_attributes: Mapping[str, MessageAttribute] = field(default_factory=dict)
    envelope: Envelope | None = None

    @property
    def receive_count(self) -> int:
        """How many times the message has been received, this delivery included."""
        return int(self.attributes.get("ApproximateReceiveCount", "1"))

    @property
    def hops(self) -> int:
        """How many times a canary handed this message back (0: the message as first sent)."""
        return self._count(HOPS_ATTRIBUTE)

    @property
    def prior_receives(self) -> int:
        """Deliveries spent of the receive budget before this copy was made (0: an original).

        A canary that hands a later delivery back counts the deliveries before its own in
        `qworker.receives` (its own is never counted), so the copy keeps the budget it had left.
        """
        return self._count(RECEIVES_ATTRIBUTE)

    @property
    def effective_receive_count(self) -> int:
        """Deliveries that count against the receive budget, this one included.

        `ApproximateReceiveCount` plus `prior_receives`: what retry backoff, first-attempt detection
        and the worker's own dead-lettering of a hand-back copy use.
        """
        return self.prior_receives + self.receive_count

    def budget_counts(self) -> tuple[int, int]:
        """`(effective_receive_count, hops)` in one call (every outcome record asks for both).

        A message without message attributes (most) is no hand-back copy: nothing to look up.
        """
        if not self.message_attributes:
            return self.receive_count, 0
        return self.effective_receive_count, self.hops

    def _count(self, name: str) -> int:
        """A non-negative integer attribute (absent or malformed: 0)."""
        if not self.message_attributes:
            return 0  # (most messages: no lookup per message)
        raw = self.attribute(name)
        if raw is None:
            return 0
        try:
            return max(0, int(raw))
        except ValueError:
            return 0

    @property
    def sent_timestamp_s(self) -> float | None:
        """When the message was sent, in seconds since the epoch, if the server said."""
        raw = self.attributes.get("SentTimestamp")
        return int(raw) / 1000 if raw else None

    @property
    def group_id(self) -> str | None:
        """The FIFO message group, if any."""
        return self.attributes.get("MessageGroupId")

    def attribute(self, name: str) -> str | None:
        """Return a string-valued message attribute, or None."""
        attr = self.message_attributes.get(name)
        return attr.value if attr is not None and isinstance(attr.value, str) else None

    @classmethod
    def from_sqs(cls, raw: Mapping[str, Any]) -> Message:
        """Build a message from one entry of a ReceiveMessage response."""
        # (botocore gives strings already, in a dict of the response nobody else keeps: the
        # system attributes are taken as they are, not copied)
        attributes = raw.get("Attributes")
        message_attributes = raw.get("MessageAttributes")
        return cls(
            str(raw["MessageId"]),
            str(raw["ReceiptHandle"]),
            str(raw.get("Body", "")),
            attributes or {},
            {str(k): MessageAttribute.from_sqs(v) for k, v in message_attributes.items()}
            if message_attributes
            else {},
        )


@final
@dataclass(frozen=True, slots=True)
class SendEntry:
    """A message to send."""

    body: str
    attributes: Mapping[str, MessageAttribute] = field(default_factory=dict)
    delay_s: int = 0
    group_id: str | None = None
    deduplication_id: str | None = None
    trace_header: str | None = None

    def to_sqs(self, entry_id: str | None = None) -> dict[str, Any]:
        """Return the SendMessage (or batch entry, with `entry_id`) parameters."""
        params: dict[str, Any] = {"MessageBody": self.body}
        if entry_id is not None:
            params["Id"] = entry_id
        if self.attributes:
            params["MessageAttributes"] = {k: v.to_sqs() for k, v in self.attributes.items()}
        if self.delay_s:
            params["DelaySeconds"] = self.delay_s
        if self.group_id is not None:
            params["MessageGroupId"] = self.group_id
        if self.deduplication_id is not None:
            params["MessageDeduplicationId"] = self.deduplication_id
        if self.trace_header is not None:
            params["MessageSystemAttributes"] = {
                "AWSTraceHeader": {"DataType": "String", "StringValue": self.trace_header}
            }
        return params


@final
@dataclass(frozen=True, slots=True)
class BatchFailure:
    """One failed entry of a batch call; `index` is the entry's position in the request."""

    index: int
    code: str
    message: str = ""
    sender_fault: bool = False


@final
@dataclass(frozen=True, slots=True)
class RedrivePolicy:
    """Where SQS moves a message after `max_receive_count` failed deliveries."""

    dead_letter_arn: str
    max_receive_count: int

    @property
    def dead_letter_name(self) -> str:
        """The dead-letter queue's name."""
        return queue_name_from_arn(self.dead_letter_arn)


@final
@dataclass(frozen=True, slots=True)
class QueueAttributes:
    """What the worker needs to know about a queue, read once at start-up."""

    arn: str
    visibility_timeout_s: int
    fifo: bool
    redrive_policy: RedrivePolicy | None
    approximate_visible: int = 0
    approximate_in_flight: int = 0

    @classmethod
    def from_sqs(cls, raw: Mapping[str, str]) -> QueueAttributes:
        """Build from a GetQueueAttributes response's `Attributes`."""
        redrive: RedrivePolicy | None = None
        if raw.get("RedrivePolicy"):
            policy = json.loads(raw["RedrivePolicy"])
            redrive = RedrivePolicy(
                dead_letter_arn=str(policy["deadLetterTargetArn"]),
                max_receive_count=int(policy["maxReceiveCount"]),
            )
        return cls(
            arn=raw.get("QueueArn", ""),
            visibility_timeout_s=int(raw.get("VisibilityTimeout", "30")),
            fifo=raw.get("FifoQueue", "false").lower() == "true",
            redrive_policy=redrive,
            approximate_visible=int(raw.get("ApproximateNumberOfMessages", "0")),
            approximate_in_flight=int(raw.get("ApproximateNumberOfMessagesNotVisible", "0")),
        )


def queue_name_from_arn(arn: str) -> str:
    """Return the queue name of an SQS ARN (`arn:aws:sqs:region:account:name`)."""
    return arn.rsplit(":", 1)[-1]


def queue_name_from_url(url: str) -> str:
    """Return the queue name of a queue URL (its last path segment)."""
    return url.rstrip("/").rsplit("/", 1)[-1]
