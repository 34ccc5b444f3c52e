"""What the producer sends: bodies, options, SQS entries, batches, and what failed.

The producer (`qworker.producer`, the public home of these names) turns each message into an SQS
entry here (`build_entry`: the body encoded, attributes checked and the trace context added, FIFO
group and deduplication ids set), offloads large bodies to S3 (`offload`, and `forget` for the
objects of messages that were not sent), cuts the entries into batches within SQS's limits
(`batches`), and decides which failed entries are worth sending again (`retryable`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, final

import pydantic_core
from pydantic import BaseModel

from qworker.exceptions import TransportError
from qworker.message import BatchFailure, MessageAttribute, SendEntry
from qworker.payloads import (
    LEGACY_SIZE_ATTRIBUTE,
    SIZE_ATTRIBUTE,
    PayloadStore,
    S3Pointer,
    message_size,
)
from qworker.tracing import TRACEPARENT
from qworker.transport import MAX_BATCH

__all__ = [
    "DEFAULT_GROUP",
    "FIFO_SUFFIX",
    "MAX_BATCH_BYTES",
    "NOT_ATTEMPTED",
    "TYPE_ATTRIBUTE",
    "AttributeValue",
    "Body",
    "FailedEntry",
    "Outgoing",
    "Prepared",
    "SendError",
    "attribute",
    "batches",
    "build_entry",
    "deduplication_id",
    "encode_body",
    "forget",
    "offload",
    "retryable",
]

log = logging.getLogger("qworker.producer")  # the logger these lines always had

FIFO_SUFFIX: Final = ".fifo"
DEFAULT_GROUP: Final = "default"
SQS_MAX_MESSAGE_ATTRIBUTES: Final = 10
TRACE_ATTRIBUTES: Final = 2
"""`traceparent` and, when the context has one, `tracestate`."""
SQS_MAX_DELAY_S: Final = 900
MAX_BATCH_BYTES: Final = 262_144
"""A batch call's entries together stay within SQS's long-standing 256 KiB request limit."""
TYPE_ATTRIBUTE: Final = "type"
"""The message attribute `message_type` sets (what routes a message to its handler)."""
NOT_ATTEMPTED: Final = "NotAttempted"
"""The failure code of a FIFO entry left unsent because an earlier one failed (order first)."""

RETRYABLE_CODES: Final = frozenset(
    {
        "RequestThrottled",
        "ThrottlingException",
        "Throttling",
        "OverLimit",
        "KmsThrottled",
        "InternalError",
        "InternalFailure",
        "ServiceUnavailable",
    }
)

Body: TypeAlias = BaseModel | str | bytes | Mapping[str, Any] | Sequence[Any]
"""What can be sent: a pydantic model, text, UTF-8 bytes, or JSON-serializable data."""

AttributeValue: TypeAlias = str | int | float | bytes | MessageAttribute
"""A message attribute: `str` (String), `int`/`float` (Number), `bytes` (Binary), or explicit."""


@final
@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message of a batch with options of its own (they override the call's)."""

    body: Body
    attributes: Mapping[str, AttributeValue] = field(default_factory=dict)
    delay_s: int | None = None
    group_id: str | None = None
    deduplication_id: str | None = None
    message_type: str | None = None


@final
@dataclass(frozen=True, slots=True)
class FailedEntry:
    """A message that was not sent: its position in the call, the error code and message."""

    index: int
    code: str
    message: str = ""

    def __str__(self) -> str:
        """`#3 InvalidParameterValue: ...`."""
        return f"#{self.index} {self.code}: {self.message}".rstrip(": ")


class SendError(TransportError):
    """Some messages were not sent, after retries of what was worth retrying."""

    def __init__(self, queue: str, failed: Sequence[FailedEntry], *, sent: int, total: int) -> None:
        """Describe the entries that failed for good."""
        self.queue = queue
        self.failed = tuple(failed)
        self.sent = sent
        self.total = total
        shown = "; ".join(str(f) for f in self.failed[:10])
        more = f"; and {len(self.failed) - 10} more" if len(self.failed) > 10 else ""  # noqa: PLR2004
        super().__init__(
            f"{len(self.failed)} of {total} messages not sent to {queue} ({sent} sent): "
            f"{shown}{more}"
        )


def encode_body(body: Body) -> str:
    """The SQS body of `body`: models and data as JSON (by alias), text as is.

    Raises:
        ValueError: Bytes that are not UTF-8 text, or data pydantic cannot serialize.
    """
    if isinstance(body, str):
        return body
    if isinstance(body, bytes):
        try:
            return body.decode()
        except UnicodeDecodeError:
            raise ValueError(
                "a bytes body must be UTF-8 text (SQS bodies are text): base64-encode binary data"
            ) from None
    if isinstance(body, BaseModel):
        return body.model_dump_json(by_alias=True)
    try:
        return pydantic_core.to_json(body, by_alias=True).decode()
    except pydantic_core.PydanticSerializationError as exc:
        raise ValueError(f"cannot serialize a {type(body).__name__} body as JSON: {exc}") from None


def deduplication_id(body: str) -> str:
    """A FIFO deduplication id that is the same in every process: the SHA-256 of the body."""
    return hashlib.sha256(body.encode()).hexdigest()


def attribute(name: str, value: AttributeValue) -> MessageAttribute:
    """The SQS attribute of a given value (`str`, a number, `bytes`, or explicit).

    Raises:
        TypeError: A bool, or a value of another type.
    """
    if isinstance(value, MessageAttribute):
        return value
    if isinstance(value, bytes):
        return MessageAttribute("Binary", value)
    if isinstance(value, bool):
        raise TypeError(f"message attribute {name!r}: give a bool as a string ('true'/'false')")
    if isinstance(value, int | float):
        return MessageAttribute("Number", repr(value))
    if isinstance(value, str):
        return MessageAttribute("String", value)
    raise TypeError(f"message attribute {name!r}: {type(value).__name__} is not str/number/bytes")


def retryable(failure: BatchFailure) -> bool:
    """Whether a failed entry is worth sending again (throttling, a server error, an outage)."""
    return failure.code in RETRYABLE_CODES or not failure.sender_fault


@dataclass(slots=True)
class Prepared:
    """One message on its way: its position in the call, its entry, its S3 object if any."""

    index: int
    entry: SendEntry
    pointer: S3Pointer | None = None


def build_entry(
    item: Body | Outgoing, defaults: Outgoing, *, fifo: bool, trace: Mapping[str, str]
) -> SendEntry:
    """The SQS entry of one message: its body encoded, attributes checked, FIFO fields set.

    Raises:
        ValueError: A body or option SQS cannot take.
        TypeError: An attribute value of a type SQS cannot carry.
    """
    one = item if isinstance(item, Outgoing) else dataclasses.replace(defaults, body=item)
    body = encode_body(one.body)
    given: dict[str, AttributeValue] = {**defaults.attributes, **one.attributes}
    reserved = sorted({SIZE_ATTRIBUTE, LEGACY_SIZE_ATTRIBUTE} & given.keys())
    if reserved:
        raise ValueError(
            f"message attribute {reserved[0]} is reserved: it marks a large payload's S3 "
            "pointer (the producer sets it itself)"
        )
    message_type = one.message_type or defaults.message_type
    if message_type is not None:
        given[TYPE_ATTRIBUTE] = message_type
    attrs = {name: attribute(name, value) for name, value in given.items()}
    if TRACEPARENT not in attrs and len(attrs) <= SQS_MAX_MESSAGE_ATTRIBUTES - TRACE_ATTRIBUTES:
        attrs.update({k: MessageAttribute("String", v) for k, v in trace.items()})
    if len(attrs) > SQS_MAX_MESSAGE_ATTRIBUTES:
        raise ValueError(f"{len(attrs)} message attributes: SQS takes at most 10")
    delay = one.delay_s if one.delay_s is not None else defaults.delay_s or 0
    if not 0 <= delay <= SQS_MAX_DELAY_S:
        raise ValueError(f"delay_s={delay}: SQS delays 0 to 900 s")
    group = one.group_id or defaults.group_id
    dedup = one.deduplication_id
    if fifo:
        if delay:
            raise ValueError("FIFO queues take no per-message delay: set the queue's delay")
        group = group or DEFAULT_GROUP
        dedup = dedup or deduplication_id(body)
    elif dedup is not None:
        raise ValueError("a deduplication id needs a FIFO queue")
    return SendEntry(body, attrs, delay, group, dedup)


async def offload(store: PayloadStore | None, prepared: list[Prepared]) -> None:
    """Put the bodies the store offloads in S3 and send pointers instead.

    A failure deletes the objects put so far (nothing is sent, nothing is left behind).
    """
    if store is None or store.bucket is None:
        return
    try:
        await _put_all(store, prepared)
    except BaseException:
        await forget(store, prepared)
        raise


async def _put_all(store: PayloadStore, prepared: list[Prepared]) -> None:
    for item in prepared:
        entry = item.entry
        if not store.offloads(message_size(entry.body, entry.attributes)):
            continue
        if len(entry.attributes) >= SQS_MAX_MESSAGE_ATTRIBUTES:
            raise ValueError(
                f"message #{item.index} goes through S3 and needs a free attribute for "
                f"{SIZE_ATTRIBUTE}: give it at most 9"
            )
        size = len(entry.body.encode())
        item.pointer = await store.put(entry.body)
        attrs = {**entry.attributes, SIZE_ATTRIBUTE: MessageAttribute("Number", str(size))}
        item.entry = dataclasses.replace(entry, body=item.pointer.to_body(), attributes=attrs)


async def forget(store: PayloadStore | None, unsent: list[Prepared]) -> None:
    """Delete the S3 objects of messages that were not sent (best effort)."""
    if store is None:
        return
    for item in unsent:
        if item.pointer is None:
            continue
        try:
            await store.delete(item.pointer)
        except TransportError as exc:
            log.warning(
                "the S3 object of a message that was not sent could not be deleted",
                extra={
                    "action": "payload_orphaned",
                    "object": str(item.pointer),
                    "error": str(exc),
                },
            )


def batches(prepared: list[Prepared]) -> Iterable[list[Prepared]]:
    """At most 10 entries and `MAX_BATCH_BYTES` per batch (a larger entry goes alone)."""
    batch: list[Prepared] = []
    size = 0
    for item in prepared:
        item_size = message_size(item.entry.body, item.entry.attributes)
        if batch and (len(batch) == MAX_BATCH or size + item_size > MAX_BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item_size
    if batch:
        yield batch
