"""SQS API calls per message at steady state with full batches (target: at most 0.25).

10,000 messages are drained by a consumer with room for full batches (`concurrency` twice ten
per poller), and every consuming call is counted: ReceiveMessage, DeleteMessageBatch,
ChangeMessageVisibility(Batch) (the heartbeat's extensions included). On the in-memory fake
(`FakeQueueTransport.calls`) and on LocalStack (a counting wrapper around `SqsTransport`).
Receives that came back empty (the drain's last look at the queue) are shown apart.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Final

from benchlib import (
    CONSUME_OPERATIONS,
    CountingTransport,
    Section,
    Server,
    bodies,
    delete_queue,
    fill,
    fmt,
    fresh_queue,
    main,
    sqs_client,
    table,
)

from qworker.testing import FakeSqs, consumer_for
from qworker.transport import QueueTransport, SendEntry

MESSAGES: Final = 10_000
POLLERS: Final = 4
CONCURRENCY: Final = POLLERS * 10 * 2
TARGET: Final = 0.25


@dataclass(slots=True)
class Count:
    """The calls one drain of `MESSAGES` made."""

    calls: dict[str, int]
    empty_receives: int
    heartbeat_calls: int

    @property
    def total(self) -> int:
        """Every consuming call."""
        return sum(self.calls.get(op, 0) for op in CONSUME_OPERATIONS)

    @property
    def per_message(self) -> float:
        """Calls per message."""
        return self.total / MESSAGES

    @property
    def steady_per_message(self) -> float:
        """Calls per message, leaving out receives that found nothing."""
        return (self.total - self.empty_receives) / MESSAGES


async def handle(body: str) -> None:
    """The trivial handler."""
    del body


async def count_calls(transport: QueueTransport) -> Count:
    """Drain `MESSAGES` messages through a counting wrapper."""
    counting = CountingTransport(transport)
    consumer = consumer_for(counting, handle, pollers=POLLERS, concurrency=CONCURRENCY)
    await consumer.run_until_empty()
    stats = consumer.statistics()
    if stats.acked != MESSAGES:
        raise RuntimeError(f"acked {stats.acked} of {MESSAGES}")
    calls = {op: counting.calls[op] for op in CONSUME_OPERATIONS}
    return Count(calls, counting.empty_receives, consumer.heartbeat.calls)


async def on_fake() -> Count:
    """Count on the in-memory fake (its own `calls` counter must agree with the wrapper's)."""
    queue = FakeSqs().create_queue("bench", dead_letter="bench-dlq")
    all_bodies = bodies(MESSAGES)
    for start in range(0, MESSAGES, 10):
        await queue.send_batch([SendEntry(b) for b in all_bodies[start : start + 10]])
    queue.calls.clear()
    counted = await count_calls(queue)
    fake_calls = {
        "receive": queue.calls["receive"],
        "delete_batch": queue.calls["delete_batch"],
        "change_visibility": queue.calls["change_visibility"],
        "change_visibility_batch": queue.calls["change_visibility_batch"],
    }
    if fake_calls != counted.calls:
        raise RuntimeError(f"FakeQueueTransport.calls {fake_calls} != counted {counted.calls}")
    return counted


async def on_localstack(server: Server) -> Count:
    """Count on LocalStack."""
    async with sqs_client(server.endpoint_url, pollers=POLLERS) as client:
        transport = await fresh_queue(client, "calls")
        try:
            await fill(transport, MESSAGES)
            return await count_calls(transport)
        finally:
            await delete_queue(transport)


async def measure(server: Server | None) -> Section:
    """Count on the fake, then on LocalStack if there is one."""
    results = {"in-memory fake": await on_fake()}
    if server is not None:
        results["LocalStack (aiobotocore)"] = await on_localstack(server)
    for name, count in results.items():
        print(f"# {name}: {count.calls} ({count.empty_receives} empty receives)", file=sys.stderr)
    rows = []
    data: dict[str, Any] = {"messages": MESSAGES, "pollers": POLLERS, "concurrency": CONCURRENCY}
    for name, count in results.items():
        calls = count.calls
        visibility = calls["change_visibility"] + calls["change_visibility_batch"]
        rows.append(
            [
                name,
                f"{fmt(calls['receive'])} ({count.empty_receives} empty)",
                fmt(calls["delete_batch"]),
                fmt(visibility),
                fmt(count.total),
                f"**{count.per_message:.3f}**",
                f"{count.steady_per_message:.3f}",
                f"{MESSAGES / max(1, calls['delete_batch']):.1f}",
            ]
        )
        data[name] = {
            "calls": calls,
            "empty_receives": count.empty_receives,
            "heartbeat_calls": count.heartbeat_calls,
            "per_message": count.per_message,
            "per_message_without_empty_receives": count.steady_per_message,
        }
    worst = max(c.per_message for c in results.values())
    markdown = (
        f"{MESSAGES:,} messages, {POLLERS} pollers, concurrency {CONCURRENCY}, drain mode; "
        "the queue's visibility timeout (30 s) outlasts every message, so the heartbeat has "
        "nothing to extend at steady state.\n\n"
        + table(
            [
                "transport",
                "ReceiveMessage",
                "DeleteMessageBatch",
                "ChangeMessageVisibility(Batch)",
                "total",
                "calls/msg",
                "calls/msg without empty receives",
                "msgs per delete",
            ],
            rows,
        )
        + f"\n\nWorst case {worst:.3f} calls per message: "
        + ("meets" if worst <= TARGET else "misses")
        + f" the target of {TARGET}."
    )
    return Section("SQS API calls per message", markdown, data)


if __name__ == "__main__":
    raise SystemExit(main(measure, needs_localstack=True, doc=__doc__))
