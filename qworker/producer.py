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
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol, final

from pydantic import BaseModel

from qworker._aws import AwsTarget, open_client, sqs_profile
from qworker._outgoing import (
    FIFO_SUFFIX,
    NOT_ATTEMPTED,
    TYPE_ATTRIBUTE,
    AttributeValue,
    Body,
    FailedEntry,
    Outgoing,
    Prepared,
    SendError,
    batches,
    build_entry,
    deduplication_id,
    encode_body,
    forget,
    offload,
    retryable,
)
from qworker._publisher import Publisher
from qworker.exceptions import TransientTransportError, TransportError
from qworker.message import BatchFailure
from qworker.payloads import DEFAULT_THRESHOLD_BYTES, PayloadStore, open_s3_client
from qworker.tracing import inject_trace_context
from qworker.transport import QueueTransport, SqsTransport

__all__ = [
    "TYPE_ATTRIBUTE",
    "AttributeValue",
    "Body",
    "FailedEntry",
    "Outgoing",
    "Producer",
    "ProducerSettings",
    "Publisher",
    "SendError",
    "deduplication_id",
    "encode_body",
    "open_producer",
    "send_bodies",
]

log = logging.getLogger(__name__)

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
        entries = [build_entry(item, defaults, fifo=fifo, trace=trace) for item in bodies]
        prepared = [Prepared(i, entry) for i, entry in enumerate(entries)]
        await offload(self.payloads, prepared)
        failed: list[FailedEntry] = []
        sent = 0
        for batch in batches(prepared):
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
            await forget(self.payloads, [p for p in prepared if p.index in unsent])
            raise SendError(transport.queue_name, failed, sent=sent, total=len(prepared))
        return sent

    async def _send(self, transport: QueueTransport, batch: list[Prepared]) -> list[FailedEntry]:
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
            retry = [f for f in failures if retryable(f)]
            failed += [
                FailedEntry(pending[f.index].index, f.code, f.message)
                for f in failures
                if not retryable(f)
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


class ProducerSettings(Protocol):
    """What `open_producer` reads from a settings object (`QWorkerSettings` is one)."""

    @property
    def region(self) -> str | None:
        """The AWS region."""
        ...

    @property
    def endpoint_url(self) -> str | None:
        """A custom endpoint, or None for AWS."""
        ...

    @property
    def payload_bucket(self) -> str | None:
        """Where large payloads go (None: never offload)."""
        ...

    @property
    def payload_threshold_bytes(self) -> int:
        """A message larger than this goes through S3."""
        ...

    @property
    def payload_always(self) -> bool:
        """Every message goes through S3."""
        ...


@contextlib.asynccontextmanager
async def open_producer(
    target: AwsTarget | ProducerSettings,
    *,
    endpoint_url: str | None = None,
    local: bool = False,
    payload_bucket: str | None = None,
    payload_threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
    payload_always: bool = False,
    max_attempts: int = 3,
) -> AsyncIterator[Producer]:
    """Open an SQS client (and, when needed, an S3 client) and yield a producer over them.

    Args:
        target: Region, endpoint and credentials of both clients. A settings object is also
            taken (its region, endpoint and payload settings are read; `endpoint_url` and
            `local` then apply, the `payload_*` arguments do not).
        endpoint_url: With settings: overrides their endpoint.
        local: With settings: use dummy credentials (a local server does not check them).
        payload_bucket: Where large payloads go (None: never offload).
        payload_threshold_bytes: A message larger than this goes through S3.
        payload_always: Every message goes through S3.
        max_attempts: Tries per message for retryable failures.
    """
    if not isinstance(target, AwsTarget):
        payload_bucket = target.payload_bucket
        payload_threshold_bytes = target.payload_threshold_bytes
        payload_always = target.payload_always
        target = AwsTarget(target.region, endpoint_url or target.endpoint_url, local=local)
    elif endpoint_url is not None or local:
        raise TypeError("endpoint_url and local belong in the AwsTarget")
    store = PayloadStore(
        functools.partial(open_s3_client, target),
        bucket=payload_bucket,
        threshold_bytes=payload_threshold_bytes,
        always=payload_always,
    )
    try:
        async with open_client("sqs", target, sqs_profile()) as client:
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
