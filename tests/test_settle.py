"""Settlement: each outcome's action on the queue, checked on the in-memory fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from qworker.exceptions import BadRequest, ServerError
from qworker.outcome import SQS_MAX_VISIBILITY_S, Outcome, OutcomeRecord, RetryPolicy
from qworker.settle import REJECT_ATTRIBUTES, Settler, dead_letter_attributes
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock, StoredMessage
from qworker.transport import Message, MessageAttribute

POLICY = RetryPolicy(base_s=10, factor=2, max_s=100, jitter=0)


@dataclass
class Queues:
    clock: ManualClock
    queue: FakeQueueTransport
    dlq: FakeQueueTransport


@pytest.fixture
def queues() -> Queues:
    clock = ManualClock()
    sqs = FakeSqs(clock=clock)
    return Queues(clock, sqs.create_queue("orders"), sqs.create_queue("orders-dlq"))


@pytest.fixture
async def settler(queues: Queues) -> AsyncIterator[Settler]:
    settler = Settler(queues.queue, dead_letter=queues.dlq, retry_policy=POLICY, batch_wait_s=0)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run(), name="settler")
        yield settler
        task.cancel()


def record(
    message: Message, outcome: Outcome, *, error: str | None = None, delay_s: float | None = None
) -> OutcomeRecord:
    return OutcomeRecord(
        outcome=outcome,
        queue="orders",
        handler="tests.handle",
        role="primary",
        version="test",
        message_id=message.message_id,
        receive_count=message.receive_count,
        error=error,
        delay_s=delay_s,
    )


async def receive_one(
    queue: FakeQueueTransport, body: str = "{}", attributes: dict[str, str] | None = None
) -> Message:
    await queue.send(body, attributes=attributes)
    [message] = await queue.receive(1, wait_time_s=0)
    return message


def ids(messages: Sequence[StoredMessage]) -> list[str]:
    return [m.message_id for m in messages]


async def test_succeeded_is_deleted(queues: Queues, settler: Settler) -> None:
    message = await receive_one(queues.queue)

    assert await settler.settle(message, record(message, Outcome.SUCCEEDED))

    assert ids(queues.queue.deleted) == [message.message_id]
    assert queues.queue.messages == []


async def test_failed_is_hidden_for_the_backoff(queues: Queues, settler: Settler) -> None:
    message = await receive_one(queues.queue)

    assert await settler.settle(message, record(message, Outcome.FAILED, error="boom"))

    queues.clock.advance(9)
    assert queues.queue.visible == []
    queues.clock.advance(1)
    assert ids(queues.queue.visible) == [message.message_id]
    assert queues.queue.deleted == []


async def test_failed_backoff_grows_with_the_receive_count(
    queues: Queues, settler: Settler
) -> None:
    await queues.queue.send("{}")
    [first] = await queues.queue.receive(1, wait_time_s=0)
    await settler.settle(first, record(first, Outcome.FAILED))
    queues.clock.advance(10)
    [second] = await queues.queue.receive(1, wait_time_s=0)
    assert second.receive_count == 2

    await settler.settle(second, record(second, Outcome.FAILED))

    queues.clock.advance(19)
    assert queues.queue.visible == []
    queues.clock.advance(1)
    assert len(queues.queue.visible) == 1


async def test_failed_is_released_at_once_with_release_failed(queues: Queues) -> None:
    settler = Settler(queues.queue, retry_policy=POLICY, release_failed=True)
    message = await receive_one(queues.queue)

    assert await settler.settle(message, record(message, Outcome.FAILED))

    assert ids(queues.queue.visible) == [message.message_id]


async def test_retried_is_hidden_for_the_asked_delay(queues: Queues, settler: Settler) -> None:
    message = await receive_one(queues.queue)

    assert await settler.settle(message, record(message, Outcome.RETRIED, delay_s=42))

    queues.clock.advance(41)
    assert queues.queue.visible == []
    queues.clock.advance(1)
    assert ids(queues.queue.visible) == [message.message_id]


async def test_rejected_goes_to_the_dead_letter_queue_with_its_reason(
    queues: Queues, settler: Settler
) -> None:
    message = await receive_one(queues.queue, '{"bad": true}', {"traceparent": "00-a-b-01"})

    ok = await settler.settle(message, record(message, Outcome.REJECTED, error="amount: required"))

    assert ok
    assert ids(queues.queue.deleted) == [message.message_id]
    assert queues.queue.messages == []
    [dead] = queues.dlq.messages
    assert dead.body == '{"bad": true}'
    assert {k: v.value for k, v in dead.message_attributes.items()} == {
        "traceparent": "00-a-b-01",
        "qworker.reject_reason": "amount: required",
        "qworker.source_queue": "orders",
        "qworker.original_message_id": message.message_id,
        "qworker.receive_count": "1",
    }


async def test_rejected_without_dead_letter_queue_is_hidden_for_the_longest_backoff(
    queues: Queues,
) -> None:
    settler = Settler(queues.queue, retry_policy=POLICY)
    message = await receive_one(queues.queue)

    assert await settler.settle(message, record(message, Outcome.REJECTED, error="bad"))

    queues.clock.advance(99)
    assert queues.queue.visible == []
    assert queues.queue.deleted == []
    queues.clock.advance(1)
    assert ids(queues.queue.visible) == [message.message_id]
    assert queues.dlq.messages == []


async def test_rejected_without_dead_letter_queue_stays_within_the_sqs_limit(
    queues: Queues,
) -> None:
    settler = Settler(queues.queue, retry_policy=RetryPolicy(base_s=10, max_s=100_000, jitter=0))
    message = await receive_one(queues.queue)

    assert await settler.settle(message, record(message, Outcome.REJECTED))

    [held] = queues.queue.in_flight
    assert held.visible_at - queues.clock() <= SQS_MAX_VISIBILITY_S


async def test_released_is_visible_at_once(queues: Queues, settler: Settler) -> None:
    message = await receive_one(queues.queue)

    assert await settler.settle(message, record(message, Outcome.RELEASED))

    assert ids(queues.queue.visible) == [message.message_id]


async def test_rejected_fifo_message_keeps_its_group(queues: Queues) -> None:
    sqs = FakeSqs(clock=queues.clock)
    source = sqs.create_queue("jobs.fifo")
    dlq = sqs.create_queue("jobs-dlq.fifo")
    settler = Settler(source, dead_letter=dlq, retry_policy=POLICY, batch_wait_s=0)
    await source.send("{}", group_id="customer-1")
    [message] = await source.receive(1, wait_time_s=0)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run())
        assert await settler.settle(message, record(message, Outcome.REJECTED))
        task.cancel()

    [dead] = dlq.messages
    assert dead.group_id == "customer-1"
    assert dead.deduplication_id == message.message_id


async def test_failed_queue_action_returns_false_and_does_not_raise(
    queues: Queues, settler: Settler
) -> None:
    message = await receive_one(queues.queue)
    queues.queue.fail_next("change_visibility", ServerError("outage"))

    assert not await settler.settle(message, record(message, Outcome.FAILED))
    assert queues.queue.visible == []  # unchanged: it comes back when its timeout lapses


async def test_stale_receipt_release_returns_false(queues: Queues, settler: Settler) -> None:
    message = await receive_one(queues.queue)
    queues.clock.advance(30)  # the delivery lapses

    assert not await settler.settle(message, record(message, Outcome.RELEASED))


async def test_failed_dead_letter_send_keeps_the_message(queues: Queues, settler: Settler) -> None:
    message = await receive_one(queues.queue)
    queues.dlq.fail_next("send_batch", ServerError("outage"))

    assert not await settler.settle(message, record(message, Outcome.REJECTED))
    assert queues.queue.deleted == []
    assert ids(queues.queue.messages) == [message.message_id]


async def test_dead_letter_copy_refused_with_our_attributes_goes_without_them(
    queues: Queues, settler: Settler
) -> None:
    # A body near the size limit leaves no room for the reject attributes: SQS refuses the copy.
    message = await receive_one(queues.queue, "x" * 100, {"traceparent": "00-a-b-01"})
    queues.dlq.fail_next("send_batch", BadRequest("message too long"))

    assert await settler.settle(message, record(message, Outcome.REJECTED, error="too big"))

    [dead] = queues.dlq.messages
    assert {k: v.value for k, v in dead.message_attributes.items()} == {"traceparent": "00-a-b-01"}
    assert ids(queues.queue.deleted) == [message.message_id]


async def test_dead_letter_copy_refused_for_good_is_left_for_the_redrive_policy(
    queues: Queues, settler: Settler
) -> None:
    message = await receive_one(queues.queue)
    queues.dlq.fail_next("send_batch", BadRequest("refused"), times=2)

    assert await settler.settle(message, record(message, Outcome.REJECTED, error="bad"))

    assert queues.dlq.messages == []
    assert queues.queue.deleted == []
    queues.clock.advance(99)
    assert queues.queue.visible == []  # not retried blindly: hidden for the longest backoff
    queues.clock.advance(1)
    assert ids(queues.queue.visible) == [message.message_id]


# -- dead_letter_attributes ----------------------------------------------------------------------


def message_with(count: int) -> Message:
    return Message(
        message_id="m-1",
        receipt_handle="r-1",
        body="{}",
        attributes={"ApproximateReceiveCount": "4"},
        message_attributes={f"a{i}": MessageAttribute("String", str(i)) for i in range(count)},
    )


def test_dead_letter_attributes_keep_the_originals_and_add_the_reason() -> None:
    message = message_with(2)

    attributes = dead_letter_attributes(message, record(message, Outcome.REJECTED, error="why"))

    assert list(attributes) == ["a0", "a1", *REJECT_ATTRIBUTES]
    assert attributes["a1"] == MessageAttribute("String", "1")
    assert attributes["qworker.reject_reason"].value == "why"
    assert attributes["qworker.receive_count"].value == "4"


def test_dead_letter_attributes_default_reason() -> None:
    message = message_with(0)

    attributes = dead_letter_attributes(message, record(message, Outcome.REJECTED))

    assert attributes["qworker.reject_reason"].value == "rejected"


@pytest.mark.parametrize(("originals", "ours"), [(6, 4), (8, 2), (9, 1), (10, 0)])
def test_dead_letter_attributes_stay_within_ten(originals: int, ours: int) -> None:
    message = message_with(originals)

    attributes = dead_letter_attributes(message, record(message, Outcome.REJECTED, error="why"))

    assert len(attributes) == min(10, originals + 4)
    assert [name for name in attributes if name.startswith("qworker.")] == list(
        REJECT_ATTRIBUTES[:ours]
    )
    assert all(f"a{i}" in attributes for i in range(originals))
