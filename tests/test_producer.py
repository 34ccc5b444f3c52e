"""The typed producer on the in-memory fake: encoding, batching, per-entry retries, FIFO ids.

A `Flaky` transport wraps the fake queue and fails chosen entries of chosen calls the way
SendMessageBatch does (a `Failed` entry with a code and `SenderFault`), so every path of the retry
logic is driven by the entries' real outcomes; the messages that reach the queue are counted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from pydantic import BaseModel, Field

from qworker import QWorker
from qworker._outgoing import MAX_BATCH_BYTES, NOT_ATTEMPTED
from qworker.exceptions import QueueUnavailable, TransportError
from qworker.message import BatchFailure, MessageAttribute, SendEntry
from qworker.producer import (
    Outgoing,
    Producer,
    SendError,
    deduplication_id,
    encode_body,
    send_bodies,
)
from qworker.role import Identity
from qworker.testing import FakeQueueTransport, FakeSqs, consumer_for
from qworker.tracing import TracingMiddleware
from qworker.transport import QueueTransport


class Order(BaseModel):
    order_id: str = Field(alias="orderId")
    amount: int = 0


@dataclass
class Flaky:
    """A queue whose send calls fail the given entries: `plan[call] = {index: (code, sender)}`."""

    inner: FakeQueueTransport
    plan: list[dict[int, tuple[str, bool]]] = field(default_factory=list)
    calls: list[list[str]] = field(default_factory=list)

    @property
    def queue_name(self) -> str:
        return self.inner.queue_name

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        self.calls.append([e.body for e in entries])
        failing = self.plan[len(self.calls) - 1] if len(self.calls) <= len(self.plan) else {}
        stored = [e for i, e in enumerate(entries) if i not in failing]
        if stored:
            await self.inner.send_batch(stored)
        return [BatchFailure(i, code, "injected", sender) for i, (code, sender) in failing.items()]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def producer_for(*queues: QueueTransport, sleep: Sleeps | None = None) -> Producer:
    by_name = {q.queue_name: q for q in queues}

    async def lookup(name: str) -> QueueTransport:
        return by_name[name]

    return Producer(lookup, sleep=sleep or Sleeps())


def bodies_of(queue: FakeQueueTransport) -> list[str]:
    return [m.body for m in queue.messages]


# -- encoding --------------------------------------------------------------------------------------


def test_bodies_encode_models_by_alias_text_bytes_and_data() -> None:
    assert json.loads(encode_body(Order(orderId="o-1", amount=3))) == {
        "orderId": "o-1",
        "amount": 3,
    }
    assert encode_body("plain text") == "plain text"
    assert encode_body("ünïcode".encode()) == "ünïcode"
    assert json.loads(encode_body({"a": [1, 2], "m": Order(orderId="x")})) == {
        "a": [1, 2],
        "m": {"orderId": "x", "amount": 0},
    }
    with pytest.raises(ValueError, match="UTF-8"):
        encode_body(b"\xff\xfe")
    with pytest.raises(ValueError, match="cannot serialize"):
        encode_body({"x": object()})


async def test_a_sent_model_is_what_the_handler_receives() -> None:
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    seen: list[Order] = []

    async def handle(order: Order) -> None:
        seen.append(order)

    await producer_for(orders).send("orders", Order(orderId="o-7", amount=12))
    await consumer_for(orders, handle).run_until_empty()
    assert seen == [Order(orderId="o-7", amount=12)]


async def test_options_attributes_type_and_delay_reach_the_message() -> None:
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    await producer_for(orders).send(
        "orders",
        {"n": 1},
        attributes={"tenant": "t-1", "priority": 5, "blob": b"\x00\x01"},
        delay_s=30,
        message_type="OrderPlaced",
    )
    (stored,) = orders.messages
    assert stored.message_attributes["tenant"] == MessageAttribute("String", "t-1")
    assert stored.message_attributes["priority"] == MessageAttribute("Number", "5")
    assert stored.message_attributes["blob"] == MessageAttribute("Binary", b"\x00\x01")
    assert stored.message_attributes["type"] == MessageAttribute("String", "OrderPlaced")
    assert stored.visible_at == pytest.approx(sqs.clock() + 30)


async def test_bad_options_raise_before_anything_is_sent() -> None:
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    fifo = sqs.create_queue("orders.fifo")
    producer = producer_for(orders, fifo)
    with pytest.raises(ValueError, match="900"):
        await producer.send_batch("orders", ["a", "b"], delay_s=901)
    with pytest.raises(ValueError, match="at most 10"):
        await producer.send("orders", "a", attributes={f"a{i}": "v" for i in range(11)})
    with pytest.raises(ValueError, match="FIFO"):
        await producer.send("orders", "a", deduplication_id="d")
    with pytest.raises(ValueError, match="FIFO queues take no per-message delay"):
        await producer.send("orders.fifo", "a", delay_s=5)
    with pytest.raises(TypeError, match="bool"):
        await producer.send("orders", "a", attributes={"flag": True})
    assert orders.messages == []
    assert fifo.messages == []


async def test_trace_context_is_injected_inside_a_span() -> None:
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    tracer = TracerProvider().get_tracer(__name__)
    with tracer.start_as_current_span("send") as span:
        await producer_for(orders).send("orders", "a")
    trace_id = f"{span.get_span_context().trace_id:032x}"
    (stored,) = orders.messages
    assert stored.attribute("traceparent") is not None
    assert str(stored.attribute("traceparent")).split("-")[1] == trace_id
    await producer_for(orders).send("orders", "b")  # no span: nothing to inject
    assert orders.messages[1].attribute("traceparent") is None


# -- batching and failures -------------------------------------------------------------------


async def test_batches_of_ten_in_order() -> None:
    sqs = FakeSqs()
    queue = Flaky(sqs.create_queue("orders"))
    sent = await producer_for(queue).send_batch("orders", [str(i) for i in range(25)])
    assert sent == 25
    assert [len(c) for c in queue.calls] == [10, 10, 5]
    assert bodies_of(queue.inner) == [str(i) for i in range(25)]


async def test_batches_stay_within_the_request_size_limit() -> None:
    sqs = FakeSqs()
    queue = Flaky(sqs.create_queue("orders"))
    big = "x" * (MAX_BATCH_BYTES // 3 + 1)  # two fit in a batch, three do not
    sent = await producer_for(queue).send_batch("orders", [big] * 5)
    assert sent == 5
    assert [len(c) for c in queue.calls] == [2, 2, 1]


async def test_retryable_entry_failures_are_sent_again_once_each() -> None:
    sqs = FakeSqs()
    queue = Flaky(
        sqs.create_queue("orders"),
        plan=[{2: ("RequestThrottled", False), 5: ("InternalError", False)}, {0: ("X", False)}],
    )
    sleeps = Sleeps()
    sent = await producer_for(queue, sleep=sleeps).send_batch("orders", [str(i) for i in range(8)])
    assert sent == 8
    assert queue.calls[1] == ["2", "5"]  # only the failed entries, in order
    assert queue.calls[2] == ["2"]
    assert sorted(bodies_of(queue.inner), key=int) == [str(i) for i in range(8)]
    assert sleeps.delays == [0.2, 0.4]


async def test_entries_failing_for_good_raise_a_send_error_listing_them() -> None:
    sqs = FakeSqs()
    always = {0: ("ServiceUnavailable", False)}  # the retries send entry 3 alone
    queue = Flaky(
        sqs.create_queue("orders"),
        plan=[
            {1: ("InvalidParameterValue", True), 3: ("ServiceUnavailable", False)},
            always,
            always,
        ],
    )
    with pytest.raises(SendError) as caught:
        await producer_for(queue).send_batch("orders", [f"m{i}" for i in range(12)])
    error = caught.value
    assert [(f.index, f.code) for f in error.failed] == [
        (1, "InvalidParameterValue"),
        (3, "ServiceUnavailable"),
    ]
    assert error.sent == 10
    assert error.total == 12
    assert "2 of 12 messages not sent" in str(error)
    assert "#1 InvalidParameterValue" in str(error)
    assert len(queue.calls) == 4  # the first batch three times (entry 3 only), then the second
    assert sorted(bodies_of(queue.inner)) == sorted(f"m{i}" for i in range(12) if i not in {1, 3})


async def test_a_whole_call_failing_transiently_is_retried() -> None:
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    orders.fail_next("send_batch", QueueUnavailable("SendMessageBatch: connection reset"), times=2)
    sent = await producer_for(orders).send_batch("orders", ["a", "b"])
    assert sent == 2
    assert bodies_of(orders) == ["a", "b"]


async def test_a_lasting_call_error_lists_every_entry() -> None:
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    orders.fail_next("send_batch", TransportError("SendMessageBatch: AccessDenied"), times=1)
    with pytest.raises(SendError) as caught:
        await producer_for(orders).send_batch("orders", ["a", "b"])
    assert [f.index for f in caught.value.failed] == [0, 1]
    assert caught.value.sent == 0


async def test_a_fifo_failure_leaves_the_later_batches_unsent_to_keep_the_order() -> None:
    sqs = FakeSqs()
    queue = Flaky(sqs.create_queue("orders.fifo"), plan=[{4: ("InvalidParameterValue", True)}])
    with pytest.raises(SendError) as caught:
        await producer_for(queue).send_batch("orders.fifo", [str(i) for i in range(15)])
    codes = {f.index: f.code for f in caught.value.failed}
    assert codes[4] == "InvalidParameterValue"
    assert {i for i, c in codes.items() if c == NOT_ATTEMPTED} == set(range(10, 15))
    assert len(queue.calls) == 1


# -- FIFO ------------------------------------------------------------------------------------------


async def test_fifo_sends_get_a_group_and_a_content_deduplication_id() -> None:
    sqs = FakeSqs()
    fifo = sqs.create_queue("orders.fifo")
    producer = producer_for(fifo)
    await producer.send("orders.fifo", Order(orderId="o-1"))
    await producer.send("orders.fifo", "b", group_id="g-2", deduplication_id="mine")
    first, second = fifo.messages
    assert first.group_id == "default"
    assert first.deduplication_id == deduplication_id('{"orderId":"o-1","amount":0}')
    assert len(str(first.deduplication_id)) == 64
    assert (second.group_id, second.deduplication_id) == ("g-2", "mine")


async def test_outgoing_items_override_the_calls_options() -> None:
    sqs = FakeSqs()
    fifo = sqs.create_queue("orders.fifo")
    await producer_for(fifo).send_batch(
        "orders.fifo",
        ["a", Outgoing("b", attributes={"k": "v"}, group_id="g-b", message_type="B")],
        group_id="g-all",
        message_type="A",
    )
    a, b = fifo.messages
    assert (a.group_id, a.attribute("type")) == ("g-all", "A")
    assert (b.group_id, b.attribute("type"), b.attribute("k")) == ("g-b", "B", "v")


DEDUP_SCRIPT = """
import asyncio, json
from qworker.producer import send_bodies
from qworker.testing import FakeSqs

async def main():
    queue = FakeSqs().create_queue("orders.fifo")
    await send_bodies(queue, ['{"order_id": "o-1"}', "plain"])
    print(json.dumps([m.deduplication_id for m in queue.messages]))

asyncio.run(main())
"""


def test_deduplication_ids_are_the_same_in_every_process() -> None:
    ids = []
    for seed in ("1", "2", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", DEDUP_SCRIPT],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        ids.append(json.loads(out.stdout))
    assert ids[0] == ids[1] == ids[2]
    assert ids[0] == [deduplication_id('{"order_id": "o-1"}'), deduplication_id("plain")]


async def test_send_bodies_keeps_its_contract() -> None:
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    assert await send_bodies(orders, ["a", "b"], attributes={"tenant": "t"}) == 2
    assert [m.attribute("tenant") for m in orders.messages] == ["t", "t"]


# -- the app ---------------------------------------------------------------------------------------


async def test_app_send_needs_a_producer_and_uses_the_open_one() -> None:
    app = QWorker("shop")
    with pytest.raises(RuntimeError, match="no producer"):
        await app.send("orders", "a")
    sqs = FakeSqs()
    orders = sqs.create_queue("orders")
    with app.use_producer(producer_for(orders)):
        await app.send("orders", Order(orderId="o-1"), message_type="OrderPlaced")
        assert await app.send_batch("orders", [Order(orderId="o-2"), {"orderId": "o-3"}]) == 2
    with pytest.raises(RuntimeError, match="no producer"):
        await app.send("orders", "a")
    assert [json.loads(b)["orderId"] for b in bodies_of(orders)] == ["o-1", "o-2", "o-3"]
    assert orders.messages[0].attribute("type") == "OrderPlaced"


async def test_a_handler_s_send_carries_its_span_and_the_receiver_links_to_it() -> None:
    sqs = FakeSqs()
    orders, invoices = sqs.create_queue("orders"), sqs.create_queue("invoices")
    app = QWorker("shop")
    provider = TracerProvider()
    tracing = TracingMiddleware(provider.get_tracer("t"), identity=Identity(service="shop"))
    spans: list[str] = []

    async def place(order: Order) -> None:
        spans.append(f"{trace.get_current_span().get_span_context().trace_id:032x}")
        await app.send("invoices", {"orderId": order.order_id})

    await orders.send(Order(orderId="o-1").model_dump_json(by_alias=True))
    with app.use_producer(producer_for(orders, invoices)):
        await consumer_for(orders, place, middleware=[tracing]).run_until_empty()
    (sent,) = invoices.messages
    traceparent = str(sent.attribute("traceparent"))
    assert traceparent.split("-")[1] == spans[0]
