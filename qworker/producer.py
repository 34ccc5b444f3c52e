"""Producing messages: a typed producer for apps, and the send helper behind `qworker send`.

```python
async with app.producer() as producer:          # reads QWORKER_* settings
    await producer.send("orders", OrderPlaced(order_id="o-1"))
    await producer.send_batch("orders", orders, message_type="OrderPlaced")
```

Inside `async with app.producer()`, and inside a running worker (a handler sending on), `app.send`
and `app.send_batch` use that producer.

Bodies are pydantic models (serialized by alias, as handlers validate them), `str`, UTF-8 `bytes`,
or anything else pydantic can serialize to JSON (dicts, lists, dataclasses). Messages go out in
`SendMessageBatch` calls of at most 10 entries and 256 KiB, in order, one call at a time (a FIFO
group keeps its order). An entry that fails for a reason worth retrying (throttling, a server
error, an outage) is sent again, up to `max_attempts` tries in all; whatever still failed raises
`SendError`, which lists each entry that was not sent and why: a caller never believes a message
was sent when it was not. On a FIFO queue a failure for good stops the later batches; an entry
retried after a transient failure lands after the entries of its batch that went through.

When the caller runs inside a span, every message carries its `traceparent` (W3C Trace Context),
so the consumer's span links to it. On a FIFO queue every message has a group (`default` unless
given) and a deduplication id: the given one, or the SHA-256 of the body, the same in every
process, so a send retried (by the producer, or by a program run again) within SQS's 5-minute
window is delivered once, exactly as SQS's content-based deduplication would do.

With a `PayloadStore` that has a bucket, a message larger than its threshold (or every message)
goes through S3 in the AWS SQS Extended Client's pointer format (see `qworker.payloads`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Generic, TypeAlias, TypeVar, final

import pydantic_core
from pydantic import BaseModel

from qworker.exceptions import TransientTransportError, TransportError
from qworker.payloads import (
    LEGACY_SIZE_ATTRIBUTE,
    SIZE_ATTRIBUTE,
    PayloadStore,
    S3Pointer,
    message_size,
    open_s3_client,
)
from qworker.settings import QWorkerSettings
from qworker.tracing import TRACEPARENT, inject_trace_context
from qworker.transport import (
    MAX_BATCH,
    BatchFailure,
    MessageAttribute,
    QueueTransport,
    SendEntry,
    SqsTransport,
)

__all__ = [
    "TYPE_ATTRIBUTE",
    "AttributeValue",
    "Body",
    "FailedEntry",
    "Outgoing",
    "Producer",
    "Publisher",
    "SendError",
    "deduplication_id",
    "encode_body",
    "open_producer",
    "send_bodies",
]

log = logging.getLogger(__name__)

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

_RETRYABLE_CODES: Final = frozenset(
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


def _attribute(name: str, value: AttributeValue) -> MessageAttribute:
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


def _retryable(failure: BatchFailure) -> bool:
    return failure.code in _RETRYABLE_CODES or not failure.sender_fault


@dataclass(slots=True)
class _Prepared:
    index: int
    entry: SendEntry
    pointer: S3Pointer | None = None


QueueLookup = Callable[[str], Awaitable[QueueTransport]]
"""Finds a queue's transport by name (or URL)."""


@final
class Producer:
    """Sends messages to queues by name; see the module's documentation."""

    def __init__(
        self,
        queues: QueueLookup,
        *,
        payloads: PayloadStore | None = None,
        max_attempts: int = 3,
        retry_delay_s: float = 0.2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Create a producer.

        Args:
            queues: Finds a queue's transport by name or URL (cached by the producer).
            payloads: Offloads large bodies to S3 (None: never).
            max_attempts: Tries per entry, the first included, for retryable failures.
            retry_delay_s: Pause before the second try; doubled before each further one.
            sleep: Injectable sleep.
        """
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._lookup = queues
        self._queues: dict[str, QueueTransport] = {}
        self.payloads = payloads
        self.max_attempts = max_attempts
        self.retry_delay_s = retry_delay_s
        self._sleep = sleep

    @classmethod
    def for_client(
        cls,
        client: Any,  # noqa: ANN401 (aiobotocore is untyped)
        *,
        payloads: PayloadStore | None = None,
        max_attempts: int = 3,
    ) -> Producer:
        """A producer over an open aiobotocore SQS client (queues by name or URL)."""

        async def lookup(queue: str) -> QueueTransport:
            if queue.startswith(("https://", "http://")):
                return SqsTransport(client, queue)
            return await SqsTransport.open(client, name=queue)

        return cls(lookup, payloads=payloads, max_attempts=max_attempts)

    def __repr__(self) -> str:
        """Show the queues used so far."""
        return f"Producer(queues={sorted(self._queues)}, payloads={self.payloads!r})"

    async def queue(self, queue: str) -> QueueTransport:
        """The transport of a queue (looked up once).

        Raises:
            QueueDoesNotExist: No queue has that name.
        """
        transport = self._queues.get(queue)
        if transport is None:
            transport = await self._lookup(queue)
            self._queues[queue] = transport
        return transport

    async def send(
        self,
        queue: str,
        body: Body,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
        deduplication_id: str | None = None,
        message_type: str | None = None,
    ) -> None:
        """Send one message.

        Args:
            queue: The queue's name (or URL).
            body: The body: a pydantic model, str, UTF-8 bytes, or JSON-serializable data.
            attributes: Message attributes (with the trace context, at most 10).
            delay_s: Seconds (0-900) before the message becomes visible (not on FIFO queues).
            group_id: The FIFO message group (default `default`).
            deduplication_id: The FIFO deduplication id (default: the SHA-256 of the body).
            message_type: Sets the `type` attribute, which routes the message to its handler.

        Raises:
            SendError: The message was not sent (after retries of a retryable failure).
            ValueError: A body or option SQS cannot take.
            TransportError: The queue cannot be found or used.
        """
        outgoing = Outgoing(
            body,
            attributes or {},
            delay_s,
            group_id,
            deduplication_id,
            message_type,
        )
        await self.send_batch(queue, [outgoing])

    async def send_batch(
        self,
        queue: str,
        bodies: Iterable[Body | Outgoing],
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
        message_type: str | None = None,
    ) -> int:
        """Send many messages in batches of 10 (in order); return how many were sent.

        The options apply to every message; an `Outgoing` item overrides them for itself (its
        attributes are added to the call's).

        Raises:
            SendError: Some messages were not sent; it lists them (by position) and why.
            ValueError: A body or option SQS cannot take (nothing was sent).
            TransportError: The queue cannot be found or used.
        """
        if isinstance(bodies, BaseModel | str | bytes | Mapping):
            raise TypeError(
                f"send_batch takes an iterable of bodies, not a {type(bodies).__name__}: "
                "use send for one message"
            )
        transport = await self.queue(queue)
        fifo = transport.queue_name.endswith(FIFO_SUFFIX)
        trace: dict[str, str] = {}
        inject_trace_context(trace)
        defaults = Outgoing("", attributes or {}, delay_s, group_id, None, message_type)
        entries = [self._entry(item, defaults, fifo=fifo, trace=trace) for item in bodies]
        prepared = [_Prepared(i, entry) for i, entry in enumerate(entries)]
        await self._offload(prepared)
        failed: list[FailedEntry] = []
        sent = 0
        for batch in _batches(prepared):
            if failed and fifo:
                failed += [
                    FailedEntry(p.index, NOT_ATTEMPTED, "an earlier message failed") for p in batch
                ]
                continue
            lost = await self._send(transport, batch)
            failed += lost
            sent += len(batch) - len(lost)
        if failed:
            unsent = {f.index for f in failed}
            await self._forget([p for p in prepared if p.index in unsent])
            raise SendError(transport.queue_name, failed, sent=sent, total=len(prepared))
        return sent

    def _entry(
        self, item: Body | Outgoing, defaults: Outgoing, *, fifo: bool, trace: Mapping[str, str]
    ) -> SendEntry:
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
        attrs = {name: _attribute(name, value) for name, value in given.items()}
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

    async def _offload(self, prepared: list[_Prepared]) -> None:
        """Put the bodies the store offloads in S3 and send pointers instead.

        A failure deletes the objects put so far (nothing is sent, nothing is left behind).
        """
        store = self.payloads
        if store is None or store.bucket is None:
            return
        try:
            await self._put_all(store, prepared)
        except BaseException:
            await self._forget(prepared)
            raise

    async def _put_all(self, store: PayloadStore, prepared: list[_Prepared]) -> None:
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

    async def _send(self, transport: QueueTransport, batch: list[_Prepared]) -> list[FailedEntry]:
        """Send one batch, retrying what is worth it; return the entries that failed for good."""
        pending = batch
        failed: list[FailedEntry] = []
        for attempt in range(1, self.max_attempts + 1):
            try:
                failures = await transport.send_batch([p.entry for p in pending])
            except TransientTransportError as exc:
                failures = [
                    BatchFailure(i, type(exc).__name__, str(exc)) for i in range(len(pending))
                ]
            except TransportError as exc:
                failed += [FailedEntry(p.index, type(exc).__name__, str(exc)) for p in pending]
                return failed
            retry = [f for f in failures if _retryable(f)]
            failed += [
                FailedEntry(pending[f.index].index, f.code, f.message)
                for f in failures
                if not _retryable(f)
            ]
            if not retry:
                return failed
            if attempt == self.max_attempts:
                failed += [FailedEntry(pending[f.index].index, f.code, f.message) for f in retry]
                return sorted(failed, key=lambda f: f.index)
            log.info(
                "send: %d of %d messages failed for a reason worth retrying; trying again",
                len(retry),
                len(pending),
                extra={
                    "action": "send_retry",
                    "queue": transport.queue_name,
                    "attempt": attempt,
                    "error": f"{retry[0].code}: {retry[0].message}",
                },
            )
            await self._sleep(self.retry_delay_s * 2 ** (attempt - 1))
            pending = [pending[f.index] for f in sorted(retry, key=lambda f: f.index)]
        return failed  # pragma: no cover (the loop returns)

    async def _forget(self, unsent: list[_Prepared]) -> None:
        """Delete the S3 objects of messages that were not sent (best effort)."""
        if self.payloads is None:
            return
        for item in unsent:
            if item.pointer is None:
                continue
            try:
                await self.payloads.delete(item.pointer)
            except TransportError as exc:
                log.warning(
                    "the S3 object of a message that was not sent could not be deleted",
                    extra={
                        "action": "payload_orphaned",
                        "object": str(item.pointer),
                        "error": str(exc),
                    },
                )


B = TypeVar("B", bound=Body)


@final
class Publisher(Generic[B]):
    """Sends one type of body to one queue: `send` takes only that type (checked by mypy).

    ```python
    orders = app.publisher("orders", OrderPlaced, message_type="OrderPlaced")
    await orders.send(OrderPlaced(order_id="o-1"))
    ```

    The producer is looked up at each send, so a publisher can be made at import time.
    """

    def __init__(
        self,
        producer: Callable[[], Producer],
        queue: str,
        body_type: type[B],
        *,
        message_type: str | None = None,
    ) -> None:
        """Bind a queue and a body type.

        Args:
            producer: Returns the producer to send with (e.g. the app's open one).
            queue: The queue's name (or URL).
            body_type: The type of every body (documents the publisher; mypy checks sends).
            message_type: The `type` attribute of every message (routes it to its handler).
        """
        self._producer = producer
        self.queue = queue
        self.body_type = body_type
        self.message_type = message_type

    def __repr__(self) -> str:
        """Show the queue and the body type."""
        return f"Publisher({self.queue!r}, {self.body_type.__name__})"

    async def send(
        self,
        body: B,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> None:
        """Send one message; see `Producer.send`."""
        await self._producer().send(
            self.queue,
            body,
            attributes=attributes,
            delay_s=delay_s,
            group_id=group_id,
            deduplication_id=deduplication_id,
            message_type=self.message_type,
        )

    async def send_batch(
        self,
        bodies: Iterable[B],
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
    ) -> int:
        """Send many messages in batches of 10; return how many; see `Producer.send_batch`."""
        return await self._producer().send_batch(
            self.queue,
            bodies,
            attributes=attributes,
            delay_s=delay_s,
            group_id=group_id,
            message_type=self.message_type,
        )


def _batches(prepared: list[_Prepared]) -> Iterable[list[_Prepared]]:
    """At most 10 entries and `MAX_BATCH_BYTES` per batch (a larger entry goes alone)."""
    batch: list[_Prepared] = []
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


@contextlib.asynccontextmanager
async def open_producer(
    settings: QWorkerSettings,
    *,
    endpoint_url: str | None = None,
    local: bool = False,
    max_attempts: int = 3,
) -> AsyncIterator[Producer]:
    """Open an SQS client (and, when needed, an S3 client) and yield a producer over them.

    Args:
        settings: Region, endpoint, and the payload settings (`payload_bucket`, ...).
        endpoint_url: Overrides the settings' endpoint.
        local: Use dummy credentials (a local server does not check them).
        max_attempts: Tries per message for retryable failures.
    """
    from qworker.worker import open_sqs_client  # noqa: PLC0415 (the worker imports the app)

    store = PayloadStore(
        functools.partial(open_s3_client, settings, endpoint_url=endpoint_url, local=local),
        bucket=settings.payload_bucket,
        threshold_bytes=settings.payload_threshold_bytes,
        always=settings.payload_always,
    )
    try:
        async with open_sqs_client(settings, endpoint_url=endpoint_url, local=local) as client:
            yield Producer.for_client(client, payloads=store, max_attempts=max_attempts)
    finally:
        await store.aclose()


async def send_bodies(
    transport: QueueTransport,
    bodies: Iterable[str],
    *,
    attributes: Mapping[str, str] | None = None,
    group_id: str | None = None,
    delay_s: int = 0,
    message_type: str | None = None,
    payloads: PayloadStore | None = None,
) -> int:
    """Send every body to one queue (in batches of 10) and return how many were sent.

    Args:
        transport: The queue.
        bodies: Message bodies.
        attributes: String message attributes added to every message (plus `traceparent` when
            there is a current span, one is not given, and SQS's 10 attributes leave room).
        group_id: The FIFO message group (FIFO queues need one; default `default`).
        delay_s: Delay before the messages become visible.
        message_type: Sets the `type` attribute.
        payloads: Offloads large bodies to S3.

    Raises:
        SendError: A message was not sent.
    """

    async def lookup(_: str) -> QueueTransport:
        return transport

    producer = Producer(lookup, payloads=payloads)
    return await producer.send_batch(
        transport.queue_name,
        bodies,
        attributes=attributes,
        group_id=group_id,
        delay_s=delay_s,
        message_type=message_type,
    )
