"""The queue transport: a narrow protocol over SQS, and its aiobotocore implementation.

The consumer speaks only `QueueTransport`, a handful of coroutines shaped after what a worker needs
(receive, delete, change visibility, send), not after botocore's API. `SqsTransport` implements it
over one long-lived aiobotocore client (and, for visibility changes, an optional second client
with short timeouts and no pooled connections: see `SqsTransport`);
`qworker.testing.FakeQueueTransport` implements it in memory.

botocore errors never leave this module: each call runs inside `qworker._aws.map_errors()`, the
package's one mapping of botocore errors to the `TransportError` family (re-exported here with its
`ERROR_CODES` table), so the consumer can tell a transient outage (back off, try again) from a
lasting error.

The message and queue types themselves live in `qworker.message` and are re-exported here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, final

from qworker._aws import ERROR_CODES, map_errors
from qworker.exceptions import QueueUnavailable
from qworker.message import (
    BatchFailure,
    Message,
    MessageAttribute,
    QueueAttributes,
    RedrivePolicy,
    SendEntry,
    queue_name_from_arn,
    queue_name_from_url,
)

__all__ = [
    "ERROR_CODES",
    "MAX_BATCH",
    "RECEIVE_MARGIN_S",
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

RECEIVE_MARGIN_S: Final = 10.0
"""A receive without an answer `wait_time_s` + this after it was sent is cut short (a transient
error): a long poll on a pooled connection that silently died would otherwise wait out botocore's
read timeout on every retry."""

SYSTEM_ATTRIBUTES: Final = ("All",)
MESSAGE_ATTRIBUTES: Final = ("All",)


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

    Visibility changes (the heartbeat's extensions, releases, backoffs) go through `control_client`
    when one is given: a client whose short connect and read timeouts are independent of the long
    poll's, and which opens a fresh connection per call, so a pooled connection that silently died
    cannot hang them.
    """

    def __init__(
        self,
        client: Any,  # noqa: ANN401 (aiobotocore is untyped)
        queue_url: str,
        *,
        control_client: Any = None,  # noqa: ANN401 (aiobotocore is untyped)
        receive_margin_s: float = RECEIVE_MARGIN_S,
    ) -> None:
        """Bind a client to a queue.

        Args:
            client: An open aiobotocore SQS client.
            queue_url: The queue's URL.
            control_client: The client for visibility changes (default: `client`).
            receive_margin_s: A receive is cut short `wait_time_s` + this after it was sent.
        """
        self._client = client
        self._control = control_client if control_client is not None else client
        self._receive_margin_s = receive_margin_s
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
        control_client: Any = None,  # noqa: ANN401 (aiobotocore is untyped)
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
        return cls(client, url, control_client=control_client)

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
        limit_s = int(wait_time_s) + self._receive_margin_s
        try:
            async with asyncio.timeout(limit_s):
                with map_errors("ReceiveMessage"):
                    response = await self._client.receive_message(**params)
        except TimeoutError:
            raise QueueUnavailable(f"ReceiveMessage: no answer within {limit_s:g} s") from None
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
            await self._control.change_message_visibility(
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
            response = await self._control.change_message_visibility_batch(
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
