"""The pytest plugin shipped with the package: loaded by its entry point, its fixtures drain
handlers and apps on the in-memory SQS, in plain tests and in async ones.
"""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from qworker import Message, Outcome, QWorker, Reject, Retry
from qworker import pytest_plugin as plugin
from qworker.pytest_plugin import ConsumerFactory
from qworker.testing import Drainer, FakeSqs, ManualClock


class Order(BaseModel):
    order_id: str
    amount_cents: int


async def book(order: Order) -> None:
    if order.amount_cents < 0:
        raise Reject(f"negative amount in {order.order_id}")
    if order.amount_cents > 1_000:
        raise Retry(delay_s=60, reason="needs review")


def test_the_plugin_is_loaded_by_its_entry_point(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.get_plugin("qworker") is plugin


def test_fake_sqs_runs_on_the_manual_clock(sqs_clock: ManualClock, fake_sqs: FakeSqs) -> None:
    assert fake_sqs.clock is sqs_clock
    orders = fake_sqs.create_queue("orders")
    orders.put("{}", delay_s=10)
    assert orders.visible == []
    fake_sqs.advance(10)
    assert len(orders.visible) == 1


def test_drain_runs_a_function_and_reports_each_outcome(fake_sqs: FakeSqs, drain: Drainer) -> None:
    orders = fake_sqs.create_queue("orders", dead_letter="orders-dlq")
    orders.put('{"order_id": "o-1", "amount_cents": 5}')
    orders.put('{"order_id": "o-2", "amount_cents": -5}')
    orders.put("not json")
    drained = drain(book, orders)
    assert sorted(drained.outcomes) == sorted(
        [Outcome.SUCCEEDED, Outcome.REJECTED, Outcome.REJECTED]
    )
    assert (drained.succeeded, drained.rejected, drained.failed) == (1, 2, 0)
    assert orders.messages == []
    assert len(orders.deleted) == 3  # a rejected message is deleted once dead-lettered
    reasons = {m.attribute("qworker.reject_reason") for m in fake_sqs.queue("orders-dlq").messages}
    assert "negative amount in o-2" in reasons
    assert len(reasons) == 2
    assert drained.statistics["orders"].acked == 1


def test_a_retry_waits_for_its_delay_on_the_clock(fake_sqs: FakeSqs, drain: Drainer) -> None:
    orders = fake_sqs.create_queue("orders", dead_letter="orders-dlq")
    orders.put('{"order_id": "o-1", "amount_cents": 5000}')
    assert drain(book, orders).outcomes == [Outcome.RETRIED]
    fake_sqs.advance(59)
    assert drain(book, orders).outcomes == []  # still hidden
    fake_sqs.advance(1)
    again = drain(book, orders)
    assert again.outcomes == [Outcome.RETRIED]
    assert again.records[0].receive_count == 2
    assert again.errors == ["needs review"]


def test_a_failing_message_ends_in_the_dead_letter_queue(fake_sqs: FakeSqs, drain: Drainer) -> None:
    async def broken(body: str) -> None:
        raise RuntimeError("database down")

    orders = fake_sqs.create_queue("orders", dead_letter="orders-dlq", max_receive_count=2)
    orders.put("hello")
    drained = drain(broken, orders)
    assert drained.failed == 2
    assert drained.errors == ["RuntimeError: database down"] * 2
    assert orders.messages == []
    assert [m.body for m in fake_sqs.queue("orders-dlq").messages] == ["hello"]


def test_drain_runs_every_handler_of_an_app_with_its_own_timeout(
    fake_sqs: FakeSqs, drain: Drainer
) -> None:
    app = QWorker("billing")
    seen: list[str] = []

    @app.handler("invoices")
    async def invoice(body: str) -> None:
        seen.append(body)

    @app.handler("refunds", timeout_s=0.01)
    async def refund(body: str) -> None:
        await asyncio.Event().wait()  # never set: only the timeout ends it

    @app.handler  # the configured queue: the app's name by default
    def audit(body: str) -> None:
        seen.append(f"audit {body}")

    fake_sqs.queue_or_create("invoices").put("i-1")
    fake_sqs.queue_or_create("refunds", max_receive_count=1).put("r-1")
    fake_sqs.queue_or_create("billing").put("b-1")
    drained = drain(app)
    assert sorted(seen) == ["audit b-1", "i-1"]
    assert drained.succeeded == 2
    assert [r.error for r in drained.records if r.outcome is Outcome.FAILED] == [
        "handler timed out after 0.01 s"
    ]
    assert [m.body for m in fake_sqs.queue("refunds-dlq").messages] == ["r-1"]
    assert set(drained.statistics) == {"invoices", "refunds", "billing"}


def test_fifo_groups_run_in_order_and_a_failure_is_retried_in_place(
    fake_sqs: FakeSqs, drain: Drainer
) -> None:
    seen: list[str] = []
    failed_once: set[str] = set()

    async def ship(body: str, message: Message) -> None:
        if body == "a-2" and body not in failed_once:
            failed_once.add(body)
            raise RuntimeError("carrier busy")
        seen.append(body)

    shipments = fake_sqs.create_queue("shipments.fifo", dead_letter="shipments-dlq.fifo")
    for body in ["a-1", "a-2", "a-3"]:
        shipments.put(body, group_id="a")
    for body in ["b-1", "b-2"]:
        shipments.put(body, group_id="b")
    drained = drain(ship, shipments)
    assert [b for b in seen if b.startswith("a")] == ["a-1", "a-2", "a-3"]
    assert [b for b in seen if b.startswith("b")] == ["b-1", "b-2"]
    assert drained.failed == 1
    assert drained.succeeded == 5


def test_a_function_needs_a_queue(drain: Drainer) -> None:
    with pytest.raises(ValueError, match="which queue does"):
        drain(book)


async def test_in_an_async_test_drain_is_awaited(fake_sqs: FakeSqs, drain: Drainer) -> None:
    fake_sqs.queue_or_create("orders").put('{"order_id": "o-1", "amount_cents": 5}')
    with pytest.raises(RuntimeError, match=r"await drain\.run"):
        drain(book, "orders")
    assert (await drain.run(book, "orders")).succeeded == 1


async def test_make_consumer_wires_the_dead_letter_queue_and_the_clock(
    fake_sqs: FakeSqs, make_consumer: ConsumerFactory
) -> None:
    orders = fake_sqs.queue_or_create("orders")
    orders.put('{"order_id": "o-1", "amount_cents": -1}')
    orders.put('{"order_id": "o-2", "amount_cents": 5000}')
    consumer = make_consumer(book, "orders")
    await consumer.run_until_empty()
    stats = consumer.statistics()
    assert (stats.rejected, stats.retried) == (1, 1)
    assert [
        m.attribute("qworker.reject_reason") for m in fake_sqs.queue("orders-dlq").messages
    ] == ["negative amount in o-1"]
    assert len(orders.in_flight) == 1  # hidden for the Retry's 60 s on the manual clock
    fake_sqs.advance(60)
    assert len(orders.visible) == 1
