"""Several message types on one queue: `TypeRouter` on the in-memory fake.

The router's `handle` is registered as the queue's handler and drained on the fake: each type
reaches its route's handler, decoded into that route's model; an unknown or missing type gets the
router's explicit answer (rejected with a reason by default, retried, ignored, or a fallback); the
route name is the bounded `message_type`, and past 20 declared routes the metric value is
`other`.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field

from qworker import QWorker, routing
from qworker.exceptions import HandlerSignatureError
from qworker.handler import HandlerSpec
from qworker.message import Message, MessageAttribute
from qworker.outcome import Outcome
from qworker.routing import (
    METRIC_TYPE_LIMIT,
    OTHER,
    UNKNOWN,
    TypeRouter,
    by_attribute,
    by_detail_type,
    by_field,
    message_type_of,
    metric_dimension,
)
from qworker.testing import Drainer, FakeSqs, ManualClock


class Placed(BaseModel):
    kind: Literal["placed"] = "placed"
    order_id: str


class Cancelled(BaseModel):
    kind: Literal["cancelled"] = "cancelled"
    order_id: str
    reason: str


OrderEvent = Annotated[Placed | Cancelled, Field(discriminator="kind")]


@pytest.fixture
def sqs() -> FakeSqs:
    fake = FakeSqs(clock=ManualClock())
    fake.create_queue("orders", dead_letter="orders-dlq", max_receive_count=3)
    return fake


def attribute_router(seen: list[tuple[str, object]], **options: Any) -> TypeRouter:
    router = TypeRouter(by_attribute("type"), **options)

    @router.route("OrderPlaced")
    async def placed(order: Placed) -> None:
        seen.append(("placed", order))

    @router.route("OrderCancelled")
    def cancelled(order: Cancelled, message: Message) -> None:  # sync: a worker thread
        seen.append(("cancelled", (order, message.message_id)))

    return router


def test_each_type_reaches_its_handler_with_its_model(sqs: FakeSqs) -> None:
    seen: list[tuple[str, object]] = []
    router = attribute_router(seen)
    orders = sqs.queue("orders")
    orders.put('{"order_id": "o-1"}', attributes={"type": "OrderPlaced"})
    cancel_id = orders.put(
        '{"order_id": "o-2", "reason": "late"}', attributes={"type": "OrderCancelled"}
    )
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.succeeded == 2
    assert sorted(seen, key=lambda s: s[0]) == [
        ("cancelled", (Cancelled(order_id="o-2", reason="late"), cancel_id)),
        ("placed", Placed(order_id="o-1")),
    ]
    assert orders.messages == []


def test_an_unknown_type_is_rejected_with_a_reason(sqs: FakeSqs) -> None:
    router = attribute_router([])
    orders = sqs.queue("orders")
    orders.put('{"order_id": "o-1"}', attributes={"type": "Refunded"})
    orders.put('{"order_id": "o-1"}')
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.outcomes == [Outcome.REJECTED, Outcome.REJECTED]
    assert sorted(drained.errors) == [
        "no message type (attribute 'type' absent); routes: OrderPlaced, OrderCancelled",
        "unknown message type 'Refunded' (attribute 'type'); routes: OrderPlaced, OrderCancelled",
    ]


def test_unknown_types_can_be_retried(sqs: FakeSqs) -> None:
    router = attribute_router([], unknown="retry", unknown_retry_s=300)
    sqs.queue("orders").put('{"order_id": "o-1"}', attributes={"type": "Refunded"})
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.outcomes == [Outcome.RETRIED]
    assert drained.records[0].delay_s == 300


def test_unknown_types_can_be_ignored(sqs: FakeSqs, caplog: pytest.LogCaptureFixture) -> None:
    router = attribute_router([], unknown="ignore")
    sqs.queue("orders").put('{"order_id": "o-1"}', attributes={"type": "Refunded"})
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.outcomes == [Outcome.SUCCEEDED]
    assert any(getattr(r, "action", None) == "message_type_ignored" for r in caplog.records)


def test_a_fallback_takes_unknown_types(sqs: FakeSqs) -> None:
    seen: list[tuple[str, object]] = []
    router = attribute_router(seen)

    @router.fallback
    async def other(body: dict[str, Any], message: Message) -> None:
        seen.append(("fallback", (body, message.attribute("type"))))

    sqs.queue("orders").put('{"order_id": "o-9"}', attributes={"type": "Refunded"})
    assert Drainer(sqs)(router.handle, "orders").succeeded == 1
    assert seen == [("fallback", ({"order_id": "o-9"}, "Refunded"))]
    with pytest.raises(HandlerSignatureError, match="fallback"):
        router.fallback(other)


def test_a_body_invalid_for_its_route_is_rejected_naming_the_route(sqs: FakeSqs) -> None:
    router = attribute_router([])
    sqs.queue("orders").put('{"order_id": "o-2"}', attributes={"type": "OrderCancelled"})
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.outcomes == [Outcome.REJECTED]
    assert drained.errors[0].startswith("OrderCancelled: invalid body: reason: Field required")


def test_route_errors_are_the_handlers_outcomes(sqs: FakeSqs) -> None:
    router = TypeRouter(by_attribute())

    @router.route("Boom")
    async def boom(body: dict[str, Any]) -> None:
        raise RuntimeError(f"boom {body['n']}")

    sqs.queue("orders").put('{"n": 1}', attributes={"type": "Boom"})
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.failed == 3  # retried until the redrive budget, then dead-lettered
    assert drained.errors == ["RuntimeError: boom 1"] * 3


def test_by_field_takes_route_names_from_the_models_literal(sqs: FakeSqs) -> None:
    seen: list[object] = []
    router = TypeRouter(by_field("kind"))

    @router.route
    async def placed(order: Placed) -> None:
        seen.append(order)

    @router.route
    async def cancelled(order: Cancelled) -> None:
        seen.append(order)

    assert list(router.routes) == ["placed", "cancelled"]
    orders = sqs.queue("orders")
    orders.put('{"kind": "cancelled", "order_id": "o-2", "reason": "r"}')
    orders.put('{"kind": "placed", "order_id": "o-1"}')
    orders.put('{"kind": "refunded", "order_id": "o-3"}')
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.succeeded == 2
    assert drained.errors == [
        "unknown message type 'refunded' (body field 'kind'); routes: placed, cancelled"
    ]
    assert sorted(seen, key=repr) == [
        Cancelled(order_id="o-2", reason="r"),
        Placed(order_id="o-1"),
    ]


def test_a_discriminated_union_handler_can_be_one_route(sqs: FakeSqs) -> None:
    seen: list[object] = []
    router = TypeRouter(by_attribute("type"))

    @router.route("OrderEvent")
    async def event(order: OrderEvent) -> None:
        seen.append(order)

    sqs.queue("orders").put(
        '{"kind": "cancelled", "order_id": "o-2", "reason": "r"}', attributes={"type": "OrderEvent"}
    )
    assert Drainer(sqs)(router.handle, "orders").succeeded == 1
    assert seen == [Cancelled(order_id="o-2", reason="r")]


def sns(message: str, attributes: dict[str, str] | None = None) -> str:
    return json.dumps(
        {
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": "arn:aws:sns:us-east-1:000000000000:orders",
            "Message": message,
            "Timestamp": "2026-12-05T06:30:00Z",
            "Signature": "x",
            "MessageAttributes": {
                k: {"Type": "String", "Value": v} for k, v in (attributes or {}).items()
            },
        }
    )


def test_types_inside_an_sns_notification(sqs: FakeSqs) -> None:
    seen: list[tuple[str, object]] = []
    by_attr = attribute_router(seen)
    orders = sqs.queue("orders")
    orders.put(sns('{"order_id": "o-1"}', {"type": "OrderPlaced"}))
    assert Drainer(sqs)(by_attr.handle, "orders").succeeded == 1
    assert seen == [("placed", Placed(order_id="o-1"))]

    fields = TypeRouter(by_field("kind"))
    got: list[tuple[object, str | None]] = []

    @fields.route
    async def cancelled(order: Cancelled, message: Message) -> None:
        assert message.envelope is not None
        assert message.envelope.sns is not None
        got.append((order, message.envelope.sns.topic_arn))

    orders.put(sns('{"kind": "cancelled", "order_id": "o-2", "reason": "r"}'))
    assert Drainer(sqs)(fields.handle, "orders").succeeded == 1
    assert got == [
        (Cancelled(order_id="o-2", reason="r"), "arn:aws:sns:us-east-1:000000000000:orders")
    ]


def test_envelope_none_leaves_the_notification_to_the_discriminator(sqs: FakeSqs) -> None:
    router = attribute_router([], envelope="none")
    sqs.queue("orders").put(sns('{"order_id": "o-1"}', {"type": "OrderPlaced"}))
    drained = Drainer(sqs)(router.handle, "orders")
    assert drained.outcomes == [Outcome.REJECTED]
    assert drained.errors[0].startswith("no message type")


def eventbridge(detail_type: str, detail: object) -> str:
    return json.dumps(
        {
            "version": "0",
            "id": "ev-1",
            "detail-type": detail_type,
            "source": "com.example.orders",
            "account": "000000000000",
            "time": "2026-12-05T06:31:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": detail,
        }
    )


def test_by_detail_type(sqs: FakeSqs) -> None:
    seen: list[tuple[object, str]] = []
    router = TypeRouter(by_detail_type())

    @router.route("Order Placed")
    async def placed(order: Placed, message: Message) -> None:
        assert message.envelope is not None
        assert message.envelope.eventbridge is not None
        seen.append((order, message.envelope.eventbridge.source))

    orders = sqs.queue("orders")
    orders.put(eventbridge("Order Placed", {"order_id": "o-1"}))
    orders.put(eventbridge("Order Lost", {"order_id": "o-2"}))
    orders.put('{"order_id": "o-3"}')  # not an event at all
    drained = Drainer(sqs)(router.handle, "orders")
    assert seen == [(Placed(order_id="o-1"), "com.example.orders")]
    assert sorted(drained.errors) == [
        "no message type (EventBridge detail-type absent); routes: Order Placed",
        "unknown message type 'Order Lost' (EventBridge detail-type); routes: Order Placed",
    ]


def test_message_type_is_the_route_name_or_unknown() -> None:
    router = attribute_router([])

    def message(**attributes: str) -> Message:
        attrs = {k: MessageAttribute("String", v) for k, v in attributes.items()}
        return Message("m", "rh", "{}", message_attributes=attrs)

    assert router.message_type(message(type="OrderPlaced")) == "OrderPlaced"
    assert router.message_type(message(type="Anything-a-sender-invents")) == UNKNOWN
    assert router.message_type(message()) == UNKNOWN
    by_type = message_type_of(router.handle)
    assert by_type is not None
    assert by_type(message(type="OrderCancelled")) == "OrderCancelled"

    async def plain(body: str) -> None: ...

    assert message_type_of(plain) is None


def test_metric_values_are_bounded_by_declaration_order() -> None:
    declared = list(routing._DECLARED)
    router = TypeRouter(by_attribute())
    names = [f"Metric{uuid.uuid4().hex[:6]}{i}" for i in range(METRIC_TYPE_LIMIT + 5)]
    for name in names:

        async def handle(body: str) -> None: ...

        router.route(name)(handle)
    everything = [*declared, *(n for n in names if n not in declared)]
    metric = [metric_dimension(n) for n in everything]
    assert metric[:METRIC_TYPE_LIMIT] == everything[:METRIC_TYPE_LIMIT]
    assert set(metric[METRIC_TYPE_LIMIT:]) == {OTHER}
    assert metric_dimension(UNKNOWN) == UNKNOWN
    assert metric_dimension(None) is None
    assert metric_dimension("never-declared") == OTHER
    assert len({*metric, UNKNOWN}) == METRIC_TYPE_LIMIT + 2


def test_registration_mistakes_fail_at_once() -> None:
    router = TypeRouter(by_attribute())

    async def handle(body: str) -> None: ...

    router.route("A")(handle)
    with pytest.raises(HandlerSignatureError, match=r"'A' has handler .* already"):
        router.route("A")(handle)
    for reserved in (UNKNOWN, OTHER):
        with pytest.raises(HandlerSignatureError, match="reserved"):
            router.route(reserved)(handle)
    with pytest.raises(HandlerSignatureError, match="non-blank"):
        router.route(" ")(handle)
    with pytest.raises(HandlerSignatureError, match="give the route's name"):
        router.route(handle)

    async def no_type(body) -> None: ...  # type: ignore[no-untyped-def]  # noqa: ANN001

    with pytest.raises(HandlerSignatureError, match="annotate its first parameter"):
        router.route("B")(no_type)
    with pytest.raises(HandlerSignatureError, match="unknown='drop'"):
        TypeRouter(by_attribute(), unknown="drop")  # type: ignore[arg-type]
    with pytest.raises(HandlerSignatureError, match="envelope='raw'"):
        TypeRouter(by_attribute(), envelope="raw")  # type: ignore[arg-type]
    with pytest.raises(HandlerSignatureError, match="unknown_retry_s"):
        TypeRouter(by_attribute(), unknown_retry_s=-1)
    with pytest.raises(HandlerSignatureError, match="must not be empty"):
        by_attribute("")
    with pytest.raises(HandlerSignatureError, match="must not be empty"):
        by_field("")


def test_the_router_registers_as_a_queue_handler_named_by_its_module() -> None:
    router = TypeRouter(by_attribute(), name="order_types")
    app = QWorker("routing")
    app.handler("orders")(router.handle)
    spec = app.handlers["orders"]
    assert spec.body_type is Message
    assert spec.name == f"{__name__}.order_types"
    assert HandlerSpec.from_function(router.handle).is_async
    assert repr(router) == "TypeRouter(attribute 'type': no routes)"
