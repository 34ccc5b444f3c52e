"""The queue transport: a narrow protocol over SQS, and its aiobotocore implementation.

The consumer speaks only `QueueTransport`, a handful of coroutines shaped after what a worker needs
(receive, delete, change visibility, send), not after botocore's API. `SqsTransport` implements it
over one long-lived aiobotocore client; `qworker.testing.FakeQueueTransport` implements it in
memory.

botocore errors never leave this module: `map_errors()` turns them into the `TransportError` family
in one place, so the consumer can tell a transient outage (back off, try again) from a lasting
error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)

from qworker.exceptions import (
    AccessDenied,
    BadRequest,
    InvalidReceiptHandle,
    QueueDoesNotExist,
    QueueUnavailable,
    ServerError,
    Throttled,
    TransportError,
)

__all__ = [
    "ERROR_CODES",
    "MAX_BATCH",
    "BatchFailure",
    "Message",
    "MessageAttribute",
    "QueueAttributes",
    "QueueTransport",
    "RedrivePolicy",
    "SendEntry",
    "SqsTransport",
    "map_errors",
    "queue_name_from_arn",
    "queue_name_from_url",
]

MAX_BATCH: Final = 10
"""SQS takes at most 10 entries per batch call and returns at most 10 messages per receive."""

SYSTEM_ATTRIBUTES: Final = ("All",)
MESSAGE_ATTRIBUTES: Final = ("All",)


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
class Message:
    """One received message.

    Attributes:
        message_id: The id SQS gave the message when it was sent (the same on every delivery).
        receipt_handle: The handle of this delivery; deletes and visibility changes need it.
        body: The body as sent.
        attributes: System attributes (`ApproximateReceiveCount`, `SentTimestamp`, `MessageGroupId`,
            `AWSTraceHeader`, ...).
        message_attributes: The sender's message attributes.
    """

    message_id: str
    receipt_handle: str
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    message_attributes: Mapping[str, MessageAttribute] = field(default_factory=dict)

    @property
    def receive_count(self) -> int:
        """How many times the message has been received, this delivery included."""
        return int(self.attributes.get("ApproximateReceiveCount", "1"))

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
        return cls(
            message_id=str(raw["MessageId"]),
            receipt_handle=str(raw["ReceiptHandle"]),
            body=str(raw.get("Body", "")),
            attributes={str(k): str(v) for k, v in raw.get("Attributes", {}).items()},
            message_attributes={
                str(k): MessageAttribute.from_sqs(v)
                for k, v in raw.get("MessageAttributes", {}).items()
            },
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


class QueueTransport(Protocol):
    """The queue operations a consumer needs, for one queue.

    Batch methods take at most `MAX_BATCH` entries and return the entries that failed, by index.
    """

    @property
    def queue_name(self) -> str:
        """The queue's name."""
        ...

    async def receive(
        self, max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        """Receive up to `max_messages` (1-10), waiting up to `wait_time_s` for the first."""
        ...

    async def delete_batch(self, receipt_handles: Sequence[str]) -> list[BatchFailure]:
        """Delete messages by receipt handle."""
        ...

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """Hide one received message for `timeout_s` seconds from now (0 makes it visible)."""
        ...

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        """Change the visibility of several received messages: `(receipt_handle, timeout_s)`."""
        ...

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        """Send messages."""
        ...

    async def get_attributes(self) -> QueueAttributes:
        """Read the queue's attributes."""
        ...


def queue_name_from_arn(arn: str) -> str:
    """Return the queue name of an SQS ARN (`arn:aws:sqs:region:account:name`)."""
    return arn.rsplit(":", 1)[-1]


def queue_name_from_url(url: str) -> str:
    """Return the queue name of a queue URL (its last path segment)."""
    return url.rstrip("/").rsplit("/", 1)[-1]


# Error codes we claim to handle, and the qworker class each maps to. Both the query-protocol codes
# and the JSON-protocol (`AWS.SimpleQueueService.*`) spellings appear, as servers use either.
ERROR_CODES: Final[dict[str, type[TransportError]]] = {
    "AWS.SimpleQueueService.NonExistentQueue": QueueDoesNotExist,
    "QueueDoesNotExist": QueueDoesNotExist,
    "AccessDenied": AccessDenied,
    "AccessDeniedException": AccessDenied,
    "InvalidClientTokenId": AccessDenied,
    "UnrecognizedClientException": AccessDenied,
    "ReceiptHandleIsInvalid": InvalidReceiptHandle,
    "InvalidParameterValue": BadRequest,
    "InvalidParameterCombination": BadRequest,
    "MissingParameter": BadRequest,
    "InvalidAttributeName": BadRequest,
    "InvalidMessageContents": BadRequest,
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct": BadRequest,
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest": BadRequest,
    "AWS.SimpleQueueService.UnsupportedOperation": BadRequest,
    "UnsupportedOperation": BadRequest,
    "ThrottlingException": Throttled,
    "Throttling": Throttled,
    "RequestThrottled": Throttled,
    "OverLimit": Throttled,
    "KmsThrottled": Throttled,
    "InternalError": ServerError,
    "InternalFailure": ServerError,
    "ServiceUnavailable": ServerError,
}


def _error_class(code: str, http_status: int) -> type[TransportError]:
    known = ERROR_CODES.get(code)
    if known is not None:
        return known
    if http_status >= 500:  # noqa: PLR2004 (HTTP's server-error range)
        return ServerError
    if http_status == 429:  # noqa: PLR2004 (HTTP's Too Many Requests)
        return Throttled
    return TransportError


@contextlib.contextmanager
def map_errors(operation: str) -> Iterator[None]:
    """Translate botocore errors raised inside the block into qworker's `TransportError` family.

    Args:
        operation: The SQS operation, for the error's message.

    Raises:
        TransportError: A subclass naming what went wrong.
    """
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{operation}: {code}: {error.get('Message', '')}".rstrip(": ")
        raise _error_class(code, status)(text) from exc
    except (
        EndpointConnectionError,
        ConnectTimeoutError,
        ConnectionClosedError,
        ReadTimeoutError,
        HTTPClientError,  # aiobotocore's wrapper for any other aiohttp error
        ProxyConnectionError,
        ConnectionError,
    ) as exc:
        raise QueueUnavailable(f"{operation}: {exc}") from exc
    except NoCredentialsError as exc:
        raise AccessDenied(
            f"{operation}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, a profile, or a task role"
        ) from exc
    except BotoCoreError as exc:
        # Anything else botocore raises (SSL, parameter validation, ...) is not worth retrying.
        raise TransportError(f"{operation}: {exc}") from exc


def _failures(response: Mapping[str, Any]) -> list[BatchFailure]:
    return [
        BatchFailure(
            index=int(entry["Id"]),
            code=str(entry.get("Code", "")),
            message=str(entry.get("Message", "")),
            sender_fault=bool(entry.get("SenderFault", False)),
        )
        for entry in response.get("Failed", [])
    ]


@final
class SqsTransport:
    """`QueueTransport` over an aiobotocore SQS client, for one queue.

    The client is owned by the caller (one long-lived client serves every queue of a worker); batch
    entry ids are the entries' indexes, never message ids, which are not unique across deliveries.
    """

    def __init__(self, client: Any, queue_url: str) -> None:  # noqa: ANN401 (aiobotocore is untyped)
        """Bind a client to a queue.

        Args:
            client: An open aiobotocore SQS client.
            queue_url: The queue's URL.
        """
        self._client = client
        self.queue_url = queue_url
        self._name = queue_name_from_url(queue_url)

    def __repr__(self) -> str:
        """Show the queue."""
        return f"SqsTransport({self.queue_url!r})"

    @property
    def queue_name(self) -> str:
        """The queue's name."""
        return self._name

    @classmethod
    async def open(
        cls,
        client: Any,  # noqa: ANN401 (aiobotocore is untyped)
        *,
        name: str | None = None,
        url: str | None = None,
    ) -> SqsTransport:
        """Bind to a queue by URL, or look its URL up by name.

        Raises:
            QueueDoesNotExist: No queue has that name.
        """
        if url is None:
            if name is None:
                raise ValueError("a queue name or url is needed")
            with map_errors("GetQueueUrl"):
                response = await client.get_queue_url(QueueName=name)
            url = str(response["QueueUrl"])
        return cls(client, url)

    async def receive(
        self, max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        """Receive up to `max_messages` with long polling."""
        params: dict[str, Any] = {
            "QueueUrl": self.queue_url,
            "MaxNumberOfMessages": max(1, min(max_messages, MAX_BATCH)),
            "WaitTimeSeconds": int(wait_time_s),
            "MessageSystemAttributeNames": list(SYSTEM_ATTRIBUTES),
            "MessageAttributeNames": list(MESSAGE_ATTRIBUTES),
        }
        if visibility_timeout_s is not None:
            params["VisibilityTimeout"] = visibility_timeout_s
        with map_errors("ReceiveMessage"):
            response = await self._client.receive_message(**params)
        return [Message.from_sqs(raw) for raw in response.get("Messages", [])]

    async def delete_batch(self, receipt_handles: Sequence[str]) -> list[BatchFailure]:
        """Delete messages in one DeleteMessageBatch call."""
        if not receipt_handles:
            return []
        entries = [{"Id": str(i), "ReceiptHandle": h} for i, h in enumerate(receipt_handles)]
        with map_errors("DeleteMessageBatch"):
            response = await self._client.delete_message_batch(
                QueueUrl=self.queue_url, Entries=entries
            )
        return _failures(response)

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """Change one message's visibility timeout."""
        with map_errors("ChangeMessageVisibility"):
            await self._client.change_message_visibility(
                QueueUrl=self.queue_url, ReceiptHandle=receipt_handle, VisibilityTimeout=timeout_s
            )

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        """Change several messages' visibility timeouts in one call."""
        if not entries:
            return []
        request = [
            {"Id": str(i), "ReceiptHandle": handle, "VisibilityTimeout": timeout}
            for i, (handle, timeout) in enumerate(entries)
        ]
        with map_errors("ChangeMessageVisibilityBatch"):
            response = await self._client.change_message_visibility_batch(
                QueueUrl=self.queue_url, Entries=request
            )
        return _failures(response)

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        """Send messages in one SendMessageBatch call."""
        if not entries:
            return []
        request = [entry.to_sqs(str(i)) for i, entry in enumerate(entries)]
        with map_errors("SendMessageBatch"):
            response = await self._client.send_message_batch(
                QueueUrl=self.queue_url, Entries=request
            )
        return _failures(response)

    async def get_attributes(self) -> QueueAttributes:
        """Read the queue's attributes."""
        with map_errors("GetQueueAttributes"):
            response = await self._client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["All"]
            )
        return QueueAttributes.from_sqs(response.get("Attributes", {}))
