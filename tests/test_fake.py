"""The in-memory SQS: the behaviours qworker relies on, on a manual clock."""

from __future__ import annotations

import asyncio
import json

import pytest
from pydantic import BaseModel

from qworker.exceptions import QueueDoesNotExist, Throttled, TransportError
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock, consumer_for
from qworker.transport import MessageAttribute, SendEntry


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sqs(clock: ManualClock) -> FakeSqs:
    return FakeSqs(clock=clock)


@pytest.fixture
def queue(sqs: FakeSqs) -> FakeQueueTransport:
    return sqs.create_queue("orders", visibility_timeout_s=30)


async def wait_for_receive_call(queue: FakeQueueTransport, count: int = 1) -> None:
    """Yield to the loop until `count` receives have started (each a zero-length step)."""
    async with asyncio.timeout(5):
        # Zero-length steps, not a wait: the fake has no event for "a receive is waiting".
        while queue.calls["receive"] < count:  # noqa: ASYNC110
            await asyncio.sleep(0)


def test_manual_clock_only_moves_when_told() -> None:
    clock = ManualClock(start=5.0)

    assert clock() == 5.0
    clock.advance(2.5)
    assert clock() == 7.5


# -- visibility and receipts ---------------------------------------------------------------------


async def test_received_message_is_hidden_for_the_visibility_timeout(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    message_id = await queue.send("hello", attributes={"k": "v"})

    [message] = await queue.receive(10, wait_time_s=0)

    assert (message.message_id, message.body, message.receive_count) == (message_id, "hello", 1)
    assert message.message_attributes == {"k": MessageAttribute("String", "v")}
    assert message.sent_timestamp_s is not None
    assert queue.visible == []
    assert [m.message_id for m in queue.in_flight] == [message_id]
    assert await queue.receive(10, wait_time_s=0) == []
    clock.advance(29)
    assert queue.visible == []
    clock.advance(1)
    assert [m.message_id for m in queue.visible] == [message_id]
    assert queue.in_flight == []


async def test_redelivery_has_a_new_receipt_handle_and_count(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    await queue.send("hello")
    [first] = await queue.receive(1, wait_time_s=0)
    clock.advance(30)

    [second] = await queue.receive(1, wait_time_s=0)

    assert second.message_id == first.message_id
    assert second.receipt_handle != first.receipt_handle
    assert second.receive_count == 2


async def test_receive_asks_its_own_visibility_timeout(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    await queue.send("hello")
    await queue.receive(1, wait_time_s=0, visibility_timeout_s=5)

    clock.advance(5)

    assert len(queue.visible) == 1


async def test_stale_receipt_handle_deletes_nothing(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    await queue.send("hello")
    [first] = await queue.receive(1, wait_time_s=0)
    clock.advance(30)
    [second] = await queue.receive(1, wait_time_s=0)

    assert await queue.delete_batch([first.receipt_handle]) == []
    assert queue.deleted == []
    assert len(queue.messages) == 1

    assert await queue.delete_batch([second.receipt_handle]) == []
    assert [m.message_id for m in queue.deleted] == [second.message_id]
    assert queue.messages == []


async def test_change_visibility(queue: FakeQueueTransport, clock: ManualClock) -> None:
    await queue.send("a")
    await queue.send("b")
    [a, b] = await queue.receive(2, wait_time_s=0)

    await queue.change_visibility(a.receipt_handle, 100)
    failures = await queue.change_visibility_batch([(b.receipt_handle, 0), ("stale", 10)])

    assert [(f.index, f.code, f.sender_fault) for f in failures] == [
        (1, "MessageNotInflight", True)
    ]
    assert [m.body for m in queue.visible] == ["b"]
    clock.advance(99)
    assert [m.body for m in queue.visible] == ["b"]
    clock.advance(1)
    assert [m.body for m in queue.visible] == ["a", "b"]


async def test_change_visibility_of_a_message_not_in_flight_raises(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    await queue.send("a")
    [a] = await queue.receive(1, wait_time_s=0)
    clock.advance(30)

    with pytest.raises(TransportError, match="MessageNotInflight"):
        await queue.change_visibility(a.receipt_handle, 10)


async def test_at_most_ten_per_receive(queue: FakeQueueTransport) -> None:
    for i in range(15):
        await queue.send(str(i))

    first = await queue.receive(25, wait_time_s=0)
    second = await queue.receive(10, wait_time_s=0)
    third = await queue.receive(0, wait_time_s=0)

    assert [m.body for m in first] == [str(i) for i in range(10)]
    assert [m.body for m in second] == [str(i) for i in range(10, 15)]
    assert third == []


async def test_receive_count_counts_every_delivery(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    await queue.send("x")
    counts = []
    for _ in range(4):
        [message] = await queue.receive(1, wait_time_s=0)
        counts.append(message.receive_count)
        clock.advance(30)

    assert counts == [1, 2, 3, 4]  # no redrive policy: it never leaves


async def test_redrive_to_the_dead_letter_queue_after_max_receive_count(
    sqs: FakeSqs, clock: ManualClock
) -> None:
    queue = sqs.create_queue("jobs", dead_letter="jobs-dlq", max_receive_count=2)
    dlq = sqs.queue("jobs-dlq")
    message_id = await queue.send("poison")
    for expected in (1, 2):
        [message] = await queue.receive(1, wait_time_s=0)
        assert message.receive_count == expected
        clock.advance(30)

    assert await queue.receive(1, wait_time_s=0) == []

    assert queue.messages == []
    assert [m.message_id for m in dlq.visible] == [message_id]
    [dead] = await dlq.receive(1, wait_time_s=0)
    assert dead.body == "poison"
    attributes = await queue.get_attributes()
    assert attributes.redrive_policy is not None
    assert attributes.redrive_policy.dead_letter_arn == dlq.arn
    assert attributes.redrive_policy.max_receive_count == 2


def test_queues_by_name_and_arn(sqs: FakeSqs, queue: FakeQueueTransport) -> None:
    assert sqs.queue("orders") is queue
    assert sqs.queue(queue.arn) is queue
    assert queue.arn == "arn:aws:sqs:us-east-1:000000000000:orders"
    with pytest.raises(QueueDoesNotExist):
        sqs.queue("missing")


async def test_get_attributes_counts_messages(
    queue: FakeQueueTransport,
) -> None:
    for body in ("a", "b", "c"):
        await queue.send(body)
    await queue.receive(1, wait_time_s=0)

    attributes = await queue.get_attributes()

    assert (attributes.approximate_visible, attributes.approximate_in_flight) == (2, 1)
    assert attributes.visibility_timeout_s == 30
    assert not attributes.fifo
    assert attributes.redrive_policy is None


# -- FIFO ----------------------------------------------------------------------------------------


async def test_fifo_group_is_blocked_while_a_message_is_in_flight(sqs: FakeSqs) -> None:
    queue = sqs.create_queue("jobs.fifo")
    for body, group in (("a1", "A"), ("a2", "A"), ("b1", "B"), ("a3", "A"), ("b2", "B")):
        await queue.send(body, group_id=group)

    [a1] = await queue.receive(1, wait_time_s=0)
    assert (a1.body, a1.group_id) == ("a1", "A")

    others = await queue.receive(10, wait_time_s=0)
    assert [m.body for m in others] == ["b1", "b2"]
    assert await queue.receive(10, wait_time_s=0) == []

    await queue.delete_batch([a1.receipt_handle])
    rest = await queue.receive(10, wait_time_s=0)
    assert [m.body for m in rest] == ["a2", "a3"]  # group A, in order


async def test_fifo_message_that_comes_back_keeps_its_place(
    sqs: FakeSqs, clock: ManualClock
) -> None:
    queue = sqs.create_queue("jobs.fifo", visibility_timeout_s=10)
    await queue.send("a1", group_id="A")
    await queue.send("a2", group_id="A")
    [a1] = await queue.receive(1, wait_time_s=0)

    clock.advance(10)
    [again] = await queue.receive(1, wait_time_s=0)

    assert again.body == "a1"
    assert again.receive_count == 2
    assert a1.receipt_handle != again.receipt_handle


async def test_fifo_delayed_message_holds_back_its_group(sqs: FakeSqs, clock: ManualClock) -> None:
    queue = sqs.create_queue("jobs.fifo")
    await queue.send("a1", group_id="A", delay_s=5)
    await queue.send("a2", group_id="A")
    await queue.send("b1", group_id="B")

    assert [m.body for m in await queue.receive(10, wait_time_s=0)] == ["b1"]
    clock.advance(5)
    assert [m.body for m in await queue.receive(10, wait_time_s=0)] == ["a1", "a2"]


async def test_fifo_send_without_group_fails(sqs: FakeSqs) -> None:
    queue = sqs.create_queue("jobs.fifo")

    with pytest.raises(TransportError, match="group id"):
        await queue.send("x")
    assert (await queue.get_attributes()).fifo


async def test_fifo_send_batch_keeps_group_and_deduplication_id(sqs: FakeSqs) -> None:
    queue = sqs.create_queue("jobs.fifo")

    await queue.send_batch([SendEntry("x", group_id="g", deduplication_id="d-1")])

    [stored] = queue.messages
    assert (stored.group_id, stored.deduplication_id) == ("g", "d-1")
    [message] = await queue.receive(1, wait_time_s=0)
    assert message.group_id == "g"


# -- sending -------------------------------------------------------------------------------------


async def test_delay_on_send(queue: FakeQueueTransport, clock: ManualClock) -> None:
    await queue.send("later", delay_s=5)
    await queue.send_batch([SendEntry("batch later", delay_s=3)])

    assert queue.visible == []
    assert await queue.receive(10, wait_time_s=0) == []
    clock.advance(3)
    assert [m.body for m in queue.visible] == ["batch later"]
    clock.advance(2)
    assert [m.body for m in queue.visible] == ["later", "batch later"]


async def test_send_batch_stores_every_entry_with_attributes(queue: FakeQueueTransport) -> None:
    entries = [
        SendEntry(str(i), attributes={"i": MessageAttribute("Number", str(i))}) for i in range(10)
    ]

    assert await queue.send_batch(entries) == []

    assert [m.body for m in queue.messages] == [str(i) for i in range(10)]
    assert queue.messages[3].message_attributes["i"] == MessageAttribute("Number", "3")
    assert len({m.message_id for m in queue.messages}) == 10


@pytest.mark.parametrize("size", [0, 11])
async def test_batches_outside_one_to_ten_are_refused(queue: FakeQueueTransport, size: int) -> None:
    with pytest.raises(TransportError, match="SQS takes 1 to 10"):
        await queue.send_batch([SendEntry("x")] * size)
    with pytest.raises(TransportError):
        await queue.delete_batch(["r"] * size)
    with pytest.raises(TransportError):
        await queue.change_visibility_batch([("r", 1)] * size)


# -- test helpers --------------------------------------------------------------------------------


async def test_fail_next_raises_for_the_next_calls_only(queue: FakeQueueTransport) -> None:
    await queue.send("x")
    queue.fail_next("receive", Throttled("slow down"), times=2)

    for _ in range(2):
        with pytest.raises(Throttled, match="slow down"):
            await queue.receive(1, wait_time_s=0)
    [message] = await queue.receive(1, wait_time_s=0)

    assert message.body == "x"
    assert queue.calls["receive"] == 3


async def test_calls_counts_each_operation(queue: FakeQueueTransport) -> None:
    await queue.send_batch([SendEntry("a"), SendEntry("b")])
    [a, b] = await queue.receive(10, wait_time_s=0)
    await queue.delete_batch([a.receipt_handle, b.receipt_handle])
    await queue.get_attributes()

    assert dict(queue.calls) == {
        "send_batch": 1,
        "receive": 1,
        "delete_batch": 1,
        "get_attributes": 1,
    }


async def test_reset_forgets_everything(queue: FakeQueueTransport) -> None:
    await queue.send("a")
    await queue.send("b")
    [a, _] = await queue.receive(10, wait_time_s=0)
    await queue.delete_batch([a.receipt_handle])
    queue.fail_next("receive", Throttled())

    queue.reset()

    assert (queue.messages, queue.deleted, queue.visible, queue.in_flight) == ([], [], [], [])
    assert dict(queue.calls) == {}
    assert await queue.receive(10, wait_time_s=0) == []  # the planned failure is gone too
    await queue.send("c")
    assert [m.body for m in await queue.receive(10, wait_time_s=0)] == ["c"]


def test_repr_shows_the_counts(queue: FakeQueueTransport) -> None:
    assert repr(queue) == "FakeQueueTransport('orders', visible=0, in_flight=0, deleted=0)"


# -- long polling --------------------------------------------------------------------------------


async def test_long_poll_wakes_on_send(queue: FakeQueueTransport) -> None:
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        receiving = group.create_task(queue.receive(10, wait_time_s=20))
        await wait_for_receive_call(queue)
        assert not receiving.done()

        await queue.send("hello")
        messages = await receiving

    assert [m.body for m in messages] == ["hello"]


async def test_long_poll_wakes_on_release(queue: FakeQueueTransport) -> None:
    await queue.send("hello")
    [first] = await queue.receive(1, wait_time_s=0)

    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        receiving = group.create_task(queue.receive(10, wait_time_s=20))
        await wait_for_receive_call(queue, 2)
        await queue.change_visibility(first.receipt_handle, 0)
        messages = await receiving

    assert [m.receive_count for m in messages] == [2]


async def test_long_poll_on_a_dead_letter_queue_wakes_on_redrive(
    sqs: FakeSqs, clock: ManualClock
) -> None:
    queue = sqs.create_queue("jobs", dead_letter="jobs-dlq", max_receive_count=1)
    dlq = sqs.queue("jobs-dlq")
    await queue.send("poison")
    await queue.receive(1, wait_time_s=0)
    clock.advance(30)

    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        receiving = group.create_task(dlq.receive(10, wait_time_s=20))
        await wait_for_receive_call(dlq)
        assert await queue.receive(1, wait_time_s=0) == []  # moves it to the DLQ
        messages = await receiving

    assert [m.body for m in messages] == ["poison"]


async def test_short_poll_returns_at_once_when_empty(queue: FakeQueueTransport) -> None:
    assert await queue.receive(10, wait_time_s=0) == []


# -- consumer_for --------------------------------------------------------------------------------


class Order(BaseModel):
    order_id: str


async def test_consumer_for_runs_a_handler_on_the_fake(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    seen: list[str] = []

    async def handle(order: Order) -> None:
        seen.append(order.order_id)

    for i in range(3):
        await queue.send(json.dumps({"order_id": f"o-{i}"}))
    consumer = consumer_for(queue, handle, clock=clock)

    async with asyncio.timeout(10):
        await consumer.run_until_empty()

    assert sorted(seen) == ["o-0", "o-1", "o-2"]
    assert consumer.statistics().acked == 3
    assert queue.messages == []
    assert len(queue.deleted) == 3
