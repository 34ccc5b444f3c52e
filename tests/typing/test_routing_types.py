"""Type tests for routing and envelopes: `mypy --strict` checks the `assert_type` calls and misuse.

`@router.route("name")`, `@router.route` and `@router.fallback` hand back the decorated function
with its own type; `router.handle` registers with `app.handler`; the envelope metadata on `Message`
is typed (optional, narrowed by `is not None`); `S3Event`'s records are typed. The
`type: ignore[...]` comments lock misuse as type errors (with `warn_unused_ignores`, mypy fails if
a misuse stops being one). The module also runs under pytest, on the in-memory fake.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from typing import Any, Literal, assert_type

from pydantic import BaseModel

from qworker import QWorker
from qworker.envelopes import EnvelopeMode, S3Event, S3Record, unwrapper
from qworker.message import EventBridgeEnvelope, Message, SnsEnvelope
from qworker.outcome import Outcome
from qworker.routing import TypeRouter, by_attribute, by_detail_type, by_field, message_type_of
from qworker.testing import Drainer, FakeSqs, ManualClock


class Placed(BaseModel):
    kind: Literal["placed"] = "placed"
    order_id: str


app = QWorker("typing-routing")
orders = TypeRouter(by_attribute("type"), unknown="retry", envelope="auto")
events = TypeRouter(by_detail_type(), envelope="eventbridge")
fields = TypeRouter(by_field("kind"), unknown="ignore")


@orders.route("OrderPlaced")
async def placed(order: Placed, /) -> None: ...


@orders.route("Upload")
def upload(event: S3Event, /) -> None: ...


@fields.route
async def inferred(order: Placed, /) -> None: ...


@orders.fallback
async def anything(body: str, message: Message, /) -> None: ...


app.handler("orders")(orders.handle)
app.handler("events")(events.handle)


def misuse() -> None:
    """Type errors (never called: each would also fail at run time)."""
    TypeRouter(by_attribute(), unknown="drop")  # type: ignore[arg-type]
    TypeRouter(by_detail_type(), envelope="raw")  # type: ignore[arg-type]
    orders.route(42)  # type: ignore[call-overload]


def describe(message: Message) -> str:
    envelope = message.envelope
    if envelope is None:
        return "direct"
    sns = envelope.sns
    if sns is not None:
        assert_type(sns, SnsEnvelope)
        assert_type(sns.topic_arn, str)
        assert_type(sns.timestamp, datetime | None)
        assert_type(sns.attribute("type"), str | None)
        return sns.topic_arn
    event = envelope.eventbridge
    assert event is not None
    assert_type(event, EventBridgeEnvelope)
    assert_type(event.resources, tuple[str, ...])
    return event.detail_type


def test_decorators_keep_the_function_types() -> None:
    assert_type(placed, Callable[[Placed], Coroutine[Any, Any, None]])
    assert_type(upload, Callable[[S3Event], None])
    assert_type(inferred, Callable[[Placed], Coroutine[Any, Any, None]])
    assert_type(anything, Callable[[str, Message], Coroutine[Any, Any, None]])
    assert_type(orders.handle, Callable[[Message], Awaitable[None]])
    assert list(orders.routes) == ["OrderPlaced", "Upload"]
    assert list(fields.routes) == ["placed"]
    assert app.handlers["orders"].func is orders.handle


def test_helpers_are_typed() -> None:
    mode: EnvelopeMode = "eventbridge"
    step = unwrapper(Placed, mode)
    assert_type(step, Callable[[Message], Message] | None)
    kind = message_type_of(orders.handle)
    assert_type(kind, Callable[[Message], str] | None)
    record_keys: list[str] = [r.key for r in S3Event(records=()).records]
    assert record_keys == []
    assert_type(S3Event(records=()).records, tuple[S3Record, ...])
    assert describe(Message("m", "rh", "{}")) == "direct"


def test_the_router_runs_on_the_fake() -> None:
    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq").put(
        '{"order_id": "o-1"}', attributes={"type": "Nope"}
    )
    drained = Drainer(sqs)(app)
    assert drained.outcomes == [Outcome.SUCCEEDED]  # the fallback took it
