"""Type tests for the producer: `mypy --strict` checks the `assert_type` calls and the misuse.

`app.send` takes a model, text, bytes or JSON data and returns nothing; `send_batch` returns the
count; `app.producer()` yields a `Producer`. The `type: ignore[...]` comments lock misuse as type
errors (with `warn_unused_ignores`, mypy fails if a misuse stops being one). The module also runs
under pytest, on the in-memory fake.
"""

from __future__ import annotations

import contextlib
from typing import assert_type

import pytest
from pydantic import BaseModel

from qworker import QWorker
from qworker.producer import Outgoing, Producer, Publisher, SendError
from qworker.testing import FakeSqs
from qworker.transport import QueueTransport


class Order(BaseModel):
    order_id: str


class Refund(BaseModel):
    order_id: str
    cents: int


app = QWorker("typing-producer")
orders = app.publisher("orders", Order, message_type="Order")


def fake_producer(sqs: FakeSqs) -> Producer:
    async def lookup(name: str) -> QueueTransport:
        return sqs.queue(name)

    return Producer(lookup)


async def test_send_and_send_batch_types() -> None:
    sqs = FakeSqs()
    sqs.create_queue("orders")
    with app.use_producer(fake_producer(sqs)) as producer:
        assert_type(producer, Producer)
        assert_type(await app.send("orders", Order(order_id="o-1")), None)
        assert_type(await app.send("orders", "text", attributes={"n": 1, "b": b"x"}), None)
        assert_type(await app.send("orders", {"order_id": "o-2"}, message_type="Order"), None)
        sent = await app.send_batch("orders", [Order(order_id="o-3"), Outgoing(b"raw", delay_s=1)])
        assert_type(sent, int)
        assert sent == 2
    assert len(sqs.queue("orders").messages) == 5


def test_producer_context_yields_a_producer() -> None:
    async def use() -> None:  # type-checked only: opening a producer needs a server
        async with app.producer(endpoint_url="http://127.0.0.1:4566", local=True) as producer:
            assert_type(producer, Producer)

    assert isinstance(app.producer(), contextlib.AbstractAsyncContextManager)
    assert callable(use)


def test_send_error_lists_failed_entries() -> None:
    error = SendError("orders", [], sent=1, total=1)
    assert_type(error.failed[0].code if error.failed else None, str | None)


async def test_misuse_is_a_type_error() -> None:
    sqs = FakeSqs()
    sqs.create_queue("orders")
    with app.use_producer(fake_producer(sqs)):
        await app.send("orders", 3.5)  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await app.send("orders", "x", delay_s="5")  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await app.send("orders", "x", attributes={"a": object()})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="use send"):
            await app.send_batch("orders", Order(order_id="o-1"))  # a model iterates its fields


async def test_a_publisher_takes_only_its_body_type() -> None:
    assert_type(orders, Publisher[Order])
    sqs = FakeSqs()
    queue = sqs.create_queue("orders")
    with app.use_producer(fake_producer(sqs)):
        assert_type(await orders.send(Order(order_id="o-1")), None)
        assert_type(await orders.send_batch([Order(order_id="o-2")]), int)
        await orders.send(Refund(order_id="o-1", cents=5))  # type: ignore[arg-type]
        await orders.send("raw text")  # type: ignore[arg-type]
    assert [m.attribute("type") for m in queue.messages] == ["Order"] * 4
