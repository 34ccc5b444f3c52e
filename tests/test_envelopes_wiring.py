"""Envelopes and message types through the whole consumer on the in-memory fake (Drainer)."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic import BaseModel

from qworker import Message, QWorker
from qworker.role import Identity
from qworker.routing import TypeRouter, by_attribute
from qworker.testing import Drainer, FakeSqs, ManualClock
from qworker.tracing import TracingMiddleware

IDENTITY = Identity(service="svc", role="primary", version="v1")


class Order(BaseModel):
    order_id: str


def sns(inner: str) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "s",
            "TopicArn": "arn:aws:sns:us-east-1:1:t",
            "Message": inner,
            "Timestamp": "2026-12-05T06:30:00Z",
            "Signature": "x",
        }
    )


def test_envelopes_and_message_types_are_wired_through_the_consumer() -> None:
    sqs = FakeSqs(clock=ManualClock())
    app = QWorker("w")
    seen: list[object] = []

    @app.handler("orders")
    async def handle(order: Order, message: Message) -> None:
        seen.append(
            (
                order,
                message.envelope.sns.topic_arn
                if message.envelope and message.envelope.sns
                else None,
            )
        )

    @app.handler("texts", envelope="sns")
    async def text(body: str) -> None:
        seen.append(body)

    router = TypeRouter(by_attribute())

    @router.route("A")
    async def a(body: dict[str, int]) -> None: ...

    app.handler("routed")(router.handle)
    sqs.create_queue("orders", dead_letter="orders-dlq").put(sns('{"order_id": "o-1"}'))
    sqs.queue("orders").put('{"order_id": "o-2"}')
    sqs.create_queue("texts", dead_letter="texts-dlq").put(sns("hello"))
    sqs.queue("texts").put("plain")
    sqs.create_queue("routed", dead_letter="routed-dlq").put('{"n": 1}', attributes={"type": "A"})
    sqs.queue("routed").put('{"n": 1}', attributes={"type": "Z"})
    drained = Drainer(sqs)(app)
    assert sorted(map(repr, seen)) == sorted(
        map(
            repr,
            [
                (Order(order_id="o-1"), "arn:aws:sns:us-east-1:1:t"),
                (Order(order_id="o-2"), None),
                "hello",
            ],
        )
    )
    by_type = sorted((r.queue, r.message_type, r.outcome.value) for r in drained.records)
    assert ("routed", "A", "succeeded") in by_type
    assert ("routed", "unknown", "rejected") in by_type
    assert ("texts", None, "rejected") in by_type
    assert all(r.message_type is None for r in drained.records if r.queue != "routed")


def test_the_message_type_reaches_the_log_line_and_the_span(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    sqs = FakeSqs(clock=ManualClock())
    router = TypeRouter(by_attribute())

    @router.route("OrderPlaced")
    async def placed(body: dict[str, int]) -> None: ...

    sqs.create_queue("routed", dead_letter="routed-dlq").put(
        '{"n": 1}', attributes={"type": "OrderPlaced"}
    )
    layer = TracingMiddleware(provider.get_tracer("t"), identity=IDENTITY, queue="routed")
    with caplog.at_level(logging.DEBUG, logger="qworker"):
        Drainer(sqs)(router.handle, queue="routed", middleware=[layer])
    provider.shutdown()
    lines = [r for r in caplog.records if getattr(r, "action", None) == "message_succeeded"]
    assert [getattr(r, "message_type", None) for r in lines] == ["OrderPlaced"]
    [span] = exporter.get_finished_spans()
    assert span.attributes is not None
    assert span.attributes["qworker.message_type"] == "OrderPlaced"
