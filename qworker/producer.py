"""Producing messages: the Python send helper behind `qworker send`.

`send_bodies()` sends bodies in batches of 10 and returns their count; every failed entry raises,
so a caller never believes a message was sent when it was not. When the caller runs inside a span,
every message carries its `traceparent` (W3C Trace Context), so the consumer's span links to it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from qworker.exceptions import TransportError
from qworker.tracing import TRACEPARENT, inject_trace_context
from qworker.transport import MAX_BATCH, MessageAttribute, QueueTransport, SendEntry

__all__ = ["send_bodies"]

FIFO_SUFFIX: Final = ".fifo"
SQS_MAX_MESSAGE_ATTRIBUTES: Final = 10
TRACE_ATTRIBUTES: Final = 2
"""`traceparent` and, when the context has one, `tracestate`."""


async def send_bodies(
    transport: QueueTransport,
    bodies: Iterable[str],
    *,
    attributes: Mapping[str, str] | None = None,
    group_id: str | None = None,
    delay_s: int = 0,
) -> int:
    """Send every body (in batches of 10) and return how many were sent.

    Args:
        transport: The queue.
        bodies: Message bodies.
        attributes: String message attributes added to every message (plus `traceparent` when
            there is a current span, one is not given, and SQS's 10 attributes leave room).
        group_id: The FIFO message group (FIFO queues need one; default `default`).
        delay_s: Delay before the messages become visible.

    Raises:
        TransportError: A message was not sent.
    """
    given = dict(attributes or {})
    if TRACEPARENT not in given and len(given) <= SQS_MAX_MESSAGE_ATTRIBUTES - TRACE_ATTRIBUTES:
        inject_trace_context(given)
    attrs = {k: MessageAttribute("String", v) for k, v in given.items()}
    fifo = transport.queue_name.endswith(FIFO_SUFFIX)
    if fifo and group_id is None:
        group_id = "default"
    sent = 0
    batch: list[SendEntry] = []
    for index, body in enumerate(bodies):
        dedup = f"{index}-{hash(body) & 0xFFFFFFFF:x}" if fifo else None
        batch.append(
            SendEntry(body, dict(attrs), delay_s, group_id if fifo or group_id else None, dedup)
        )
        if len(batch) == MAX_BATCH:
            sent += await _flush(transport, batch)
            batch = []
    if batch:
        sent += await _flush(transport, batch)
    return sent


async def _flush(transport: QueueTransport, batch: list[SendEntry]) -> int:
    failures = await transport.send_batch(batch)
    if failures:
        first = failures[0]
        raise TransportError(
            f"{len(failures)} of {len(batch)} messages not sent: {first.code}: {first.message}"
        )
    return len(batch)
