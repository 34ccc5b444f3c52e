"""Settlement: each outcome's action on the queue, checked on the in-memory fake."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import pytest

from qworker.dead_letter import REJECT_ATTRIBUTES, dead_letter_attributes
from qworker.exceptions import BadRequest, ServerError
from qworker.handback import hand_back_entry
from qworker.outcome import SQS_MAX_VISIBILITY_S, Outcome, OutcomeRecord, RetryPolicy
from qworker.settle import Settler
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock, StoredMessage
from qworker.transport import (
    BatchFailure,
    Message,
    MessageAttribute,
    QueueAttributes,
    SendEntry,
)

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
        receive_count=message.effective_receive_count,
        hops=message.hops,
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


# -- a canary hands non-successes back ------------------------------------------------------------


@pytest.fixture
async def canary(queues: Queues) -> AsyncIterator[Settler]:
    """A canary's settler on a standard queue: hands back up to 3 hops."""
    settler = Settler(
        queues.queue,
        dead_letter=queues.dlq,
        retry_policy=POLICY,
        release_failed=True,
        max_hops=3,
        batch_wait_s=0,
    )
    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run(), name="canary settler")
        yield settler
        task.cancel()


def strings(stored: StoredMessage) -> dict[str, str | bytes]:
    return {k: v.value for k, v in stored.message_attributes.items()}


async def receive_traced(queue: FakeQueueTransport, attributes: dict[str, str]) -> Message:
    await queue.send('{"n": 1}', attributes=attributes)
    [stored] = queue.messages
    stored.trace_header = "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
    [message] = await queue.receive(1, wait_time_s=0)
    return message


@pytest.mark.parametrize(
    ("outcome", "error"),
    [(Outcome.FAILED, "RuntimeError: boom"), (Outcome.REJECTED, "amount: required")],
)
async def test_canary_hands_a_non_success_back_as_a_fresh_copy(
    queues: Queues, canary: Settler, outcome: Outcome, error: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qworker.settle")
    message = await receive_traced(queues.queue, {"traceparent": "00-a-b-01"})

    assert await canary.settle(message, record(message, outcome, error=error))

    assert ids(queues.queue.deleted) == [message.message_id]  # the original is gone
    [copy] = queues.queue.visible  # visible at once, for the primary
    assert copy.message_id != message.message_id
    assert copy.body == message.body
    assert copy.receive_count == 0  # the full receive budget
    assert strings(copy) == {
        "traceparent": "00-a-b-01",
        "qworker.hops": "1",
        "qworker.original_message_id": message.message_id,
    }
    assert copy.message_attributes["qworker.hops"].data_type == "Number"
    assert copy.trace_header == message.attributes["AWSTraceHeader"]
    assert queues.dlq.messages == []  # a canary never dead-letters
    assert canary.handed_back == 1
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "handed_back"]
    assert line.getMessage() == "handed back to the primary"
    assert vars(line)["hops"] == 1
    assert vars(line)["reason"] == error
    assert vars(line)["message_id"] == message.message_id


async def test_copy_of_a_copy_counts_the_hops_and_keeps_the_original_id(
    queues: Queues, canary: Settler
) -> None:
    message = await receive_one(
        queues.queue, attributes={"qworker.hops": "1", "qworker.original_message_id": "first-id"}
    )
    assert message.hops == 1

    assert await canary.settle(message, record(message, Outcome.FAILED))

    [copy] = queues.queue.visible
    assert strings(copy) == {"qworker.hops": "2", "qworker.original_message_id": "first-id"}


@pytest.mark.parametrize("delay_s", [0, 42, 901, SQS_MAX_VISIBILITY_S])
async def test_canary_retry_is_handed_back_at_once_whatever_its_delay(
    queues: Queues, canary: Settler, delay_s: float
) -> None:
    # The delay is the canary's verdict: the primary gets the message now, and asks for its own.
    message = await receive_one(queues.queue)

    assert await canary.settle(message, record(message, Outcome.RETRIED, delay_s=delay_s))

    assert ids(queues.queue.deleted) == [message.message_id]
    [copy] = queues.queue.visible
    assert strings(copy)["qworker.hops"] == "1"


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.REJECTED])
async def test_at_the_hop_limit_the_canary_releases_and_never_dead_letters(
    queues: Queues, canary: Settler, outcome: Outcome, caplog: pytest.LogCaptureFixture
) -> None:
    message = await receive_one(queues.queue, attributes={"qworker.hops": "3"})

    assert await canary.settle(message, record(message, outcome, error="bad"))

    assert ids(queues.queue.visible) == [message.message_id]  # released, the same message
    assert queues.queue.deleted == []
    assert queues.dlq.messages == []
    assert canary.handed_back == 0
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "hand_back_skipped"]
    assert "limit" in vars(line)["why"]


async def test_no_room_for_the_hop_attribute_falls_back_to_release(
    queues: Queues, canary: Settler, caplog: pytest.LogCaptureFixture
) -> None:
    message = await receive_one(queues.queue, attributes={f"a{i}": str(i) for i in range(10)})

    assert await canary.settle(message, record(message, Outcome.FAILED))

    assert ids(queues.queue.visible) == [message.message_id]
    assert queues.queue.deleted == []
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "hand_back_skipped"]
    assert "no room for qworker.hops" in vars(line)["why"]


async def test_nine_attributes_leave_room_for_the_hops_only(
    queues: Queues, canary: Settler
) -> None:
    message = await receive_one(queues.queue, attributes={f"a{i}": str(i) for i in range(9)})

    assert await canary.settle(message, record(message, Outcome.FAILED))

    [copy] = queues.queue.visible
    assert len(copy.message_attributes) == 10
    assert strings(copy)["qworker.hops"] == "1"
    assert "qworker.original_message_id" not in copy.message_attributes


@pytest.mark.parametrize(
    "error", [BadRequest("SendMessageBatch: message too long"), ServerError("outage")]
)
async def test_copy_not_sent_falls_back_to_release_and_loses_nothing(
    queues: Queues, canary: Settler, error: Exception, caplog: pytest.LogCaptureFixture
) -> None:
    message = await receive_one(queues.queue)
    assert isinstance(error, BadRequest | ServerError)
    queues.queue.fail_next("send_batch", error)

    assert await canary.settle(message, record(message, Outcome.REJECTED))

    assert ids(queues.queue.messages) == [message.message_id]  # the original, and only it
    assert ids(queues.queue.visible) == [message.message_id]
    assert queues.queue.deleted == []
    assert queues.dlq.messages == []
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "hand_back_skipped"]
    assert str(error) in vars(line)["why"]


async def test_copy_refused_entry_falls_back_to_release(queues: Queues) -> None:
    refusing = RefusingSends(queues.queue)
    settler = Settler(refusing, release_failed=True, max_hops=3, batch_wait_s=0)
    message = await receive_one(queues.queue)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run())
        assert await settler.settle(message, record(message, Outcome.FAILED))
        task.cancel()

    assert ids(queues.queue.visible) == [message.message_id]
    assert queues.queue.deleted == []


async def test_original_not_deleted_after_the_copy_leaves_a_duplicate_not_a_loss(
    queues: Queues, canary: Settler, caplog: pytest.LogCaptureFixture
) -> None:
    message = await receive_one(queues.queue)
    queues.queue.fail_next("delete_batch", BadRequest("refused"))

    assert not await canary.settle(message, record(message, Outcome.FAILED))

    assert len(queues.queue.messages) == 2  # the copy, and the original that comes back
    queues.clock.advance(30)
    assert len(queues.queue.visible) == 2
    assert [r for r in caplog.records if getattr(r, "action", None) == "hand_back_duplicate"]


async def test_fifo_messages_are_never_handed_back(queues: Queues) -> None:
    sqs = FakeSqs(clock=queues.clock)
    source = sqs.create_queue("jobs.fifo")
    settler = Settler(source, release_failed=True, max_hops=3, batch_wait_s=0)
    await source.send("{}", group_id="g")
    [message] = await source.receive(1, wait_time_s=0)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run())
        assert await settler.settle(message, record(message, Outcome.FAILED))
        task.cancel()

    assert ids(source.visible) == [message.message_id]
    assert source.deleted == []


async def deliver_again(queue: FakeQueueTransport, message: Message) -> Message:
    """Let a received message go (the primary failed it) and receive it again."""
    await queue.change_visibility(message.receipt_handle, 0)
    [again] = await queue.receive(1, wait_time_s=0)
    assert again.message_id == message.message_id
    return again


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.RETRIED, Outcome.REJECTED])
async def test_a_later_delivery_is_handed_back_with_the_deliveries_spent_before_it(
    queues: Queues, canary: Settler, outcome: Outcome, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="qworker.settle")
    second = await deliver_again(queues.queue, await receive_one(queues.queue))
    third = await deliver_again(queues.queue, second)
    assert third.receive_count == 3

    assert await canary.settle(third, record(third, outcome, error="bad"))

    assert ids(queues.queue.deleted) == [third.message_id]
    [copy] = queues.queue.visible
    # Two deliveries were spent before the canary's; the canary's own is not counted.
    assert strings(copy) == {
        "qworker.hops": "1",
        "qworker.receives": "2",
        "qworker.original_message_id": third.message_id,
    }
    assert copy.message_attributes["qworker.receives"].data_type == "Number"
    assert queues.dlq.messages == []
    assert canary.handed_back == 1
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "handed_back"]
    assert (vars(line)["receives"], vars(line)["receive_count"]) == (2, 3)


async def test_a_copy_handed_back_again_adds_its_own_spent_deliveries(
    queues: Queues, canary: Settler
) -> None:
    copy = await receive_one(
        queues.queue,
        attributes={
            "qworker.hops": "2",
            "qworker.receives": "1",
            "qworker.original_message_id": "first-id",
        },
    )
    again = await deliver_again(queues.queue, copy)
    assert (again.prior_receives, again.effective_receive_count) == (1, 3)

    assert await canary.settle(again, record(again, Outcome.FAILED))

    [next_copy] = queues.queue.visible
    assert strings(next_copy) == {
        "qworker.hops": "3",
        "qworker.receives": "2",
        "qworker.original_message_id": "first-id",
    }


async def test_no_room_for_the_receives_attribute_falls_back_to_release(
    queues: Queues, canary: Settler, caplog: pytest.LogCaptureFixture
) -> None:
    """Nine attributes leave room for `qworker.hops` alone: a first delivery is handed back
    without `qworker.receives` (nothing was spent), a later one is released instead: a copy
    without the count would get back the deliveries already spent."""
    message = await receive_one(queues.queue, attributes={f"a{i}": str(i) for i in range(9)})
    again = await deliver_again(queues.queue, message)

    assert await canary.settle(again, record(again, Outcome.FAILED))

    assert ids(queues.queue.visible) == [message.message_id]  # released, the same message
    assert queues.queue.deleted == []
    assert canary.handed_back == 0
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "hand_back_skipped"]
    assert "no room for qworker.hops and qworker.receives" in vars(line)["why"]


@pytest.mark.parametrize(
    ("raw", "prior", "effective"), [(None, 0, 2), ("3", 3, 5), ("x", 0, 2), ("-1", 0, 2)]
)
def test_message_effective_receive_count(raw: str | None, prior: int, effective: int) -> None:
    attributes = {} if raw is None else {"qworker.receives": MessageAttribute("Number", raw)}
    message = Message(
        "m", "r", "{}", {"ApproximateReceiveCount": "2"}, message_attributes=attributes
    )

    assert (message.receive_count, message.prior_receives) == (2, prior)
    assert message.effective_receive_count == effective


# -- the primary keeps the exact receive budget across copies -------------------------------------

BUDGET = 3


@pytest.fixture
async def primary(queues: Queues) -> AsyncIterator[Settler]:
    """A primary's settler on a queue whose redrive policy allows BUDGET receives."""
    settler = Settler(
        queues.queue,
        dead_letter=queues.dlq,
        retry_policy=POLICY,
        max_receive_count=BUDGET,
        batch_wait_s=0,
    )
    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run(), name="primary settler")
        yield settler
        task.cancel()


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.RETRIED])
async def test_primary_dead_letters_a_copy_at_its_effective_budget(
    queues: Queues, primary: Settler, outcome: Outcome, caplog: pytest.LogCaptureFixture
) -> None:
    copy = await receive_one(
        queues.queue,
        attributes={
            "qworker.hops": "4",
            "qworker.receives": "2",
            "qworker.original_message_id": "first-id",
        },
    )
    assert copy.effective_receive_count == BUDGET

    assert await primary.settle(copy, record(copy, outcome, error="RuntimeError: boom", delay_s=5))

    assert ids(queues.queue.deleted) == [copy.message_id]
    [dead] = queues.dlq.messages
    assert strings(dead) == {
        "qworker.hops": "4",  # the message's own attributes, but not the spent budget
        "qworker.reject_reason": "failed 3 times (maxReceiveCount 3): RuntimeError: boom",
        "qworker.source_queue": "orders",
        "qworker.original_message_id": "first-id",
        "qworker.receive_count": "3",
    }
    [line] = [r for r in caplog.records if getattr(r, "action", None) == "budget_dead_lettered"]
    assert (vars(line)["receive_count"], vars(line)["prior_receives"]) == (3, 2)


async def test_a_spent_copy_refused_with_our_attributes_goes_without_the_spent_count(
    queues: Queues, primary: Settler
) -> None:
    copy = await receive_one(
        queues.queue, attributes={"qworker.hops": "1", "qworker.receives": "2"}
    )
    queues.dlq.fail_next("send_batch", BadRequest("message too long"))

    assert await primary.settle(copy, record(copy, Outcome.FAILED, error="boom"))

    [dead] = queues.dlq.messages
    assert strings(dead) == {"qworker.hops": "1"}  # a redrive from there starts a fresh budget
    assert ids(queues.queue.deleted) == [copy.message_id]


async def test_primary_backs_off_below_the_budget_from_the_effective_count(
    queues: Queues, primary: Settler
) -> None:
    copy = await receive_one(queues.queue, attributes={"qworker.receives": "1"})

    assert await primary.settle(copy, record(copy, Outcome.FAILED))

    assert queues.dlq.messages == []
    queues.clock.advance(19.9)  # POLICY: the second delivery's backoff is 20 s
    assert queues.queue.visible == []
    queues.clock.advance(0.1)
    assert ids(queues.queue.visible) == [copy.message_id]


async def test_an_original_at_its_budget_is_left_to_the_redrive_policy(
    queues: Queues, primary: Settler
) -> None:
    """SQS sees an original's whole budget: its redrive policy moves it, as without copies."""
    message = await receive_one(queues.queue)
    for _ in range(BUDGET - 1):
        message = await deliver_again(queues.queue, message)
    assert message.effective_receive_count == BUDGET

    assert await primary.settle(message, record(message, Outcome.FAILED))

    assert queues.dlq.messages == []
    assert ids(queues.queue.in_flight) == [message.message_id]  # hidden for the backoff


async def test_without_a_dead_letter_queue_a_spent_copy_takes_the_normal_path(
    queues: Queues,
) -> None:
    settler = Settler(queues.queue, retry_policy=POLICY, max_receive_count=1, batch_wait_s=0)
    copy = await receive_one(queues.queue, attributes={"qworker.receives": "5"})

    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run())
        assert await settler.settle(copy, record(copy, Outcome.FAILED))
        task.cancel()

    assert queues.queue.deleted == []
    assert ids(queues.queue.in_flight) == [copy.message_id]


async def test_a_fifo_message_is_never_dead_lettered_by_the_settlers_budget(
    queues: Queues,
) -> None:
    """FIFO heads keep their own in-place budget (qworker.groups); the settler leaves them be."""
    sqs = FakeSqs(clock=queues.clock)
    source, dlq = sqs.create_queue("jobs.fifo"), sqs.create_queue("jobs-dlq.fifo")
    settler = Settler(
        source, dead_letter=dlq, retry_policy=POLICY, max_receive_count=1, batch_wait_s=0
    )
    await source.send("{}", group_id="g", attributes={"qworker.receives": "2"})
    [message] = await source.receive(1, wait_time_s=0)

    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run())
        assert await settler.settle(message, record(message, Outcome.FAILED))
        task.cancel()

    assert dlq.messages == []
    assert ids(source.in_flight) == [message.message_id]  # hidden for the backoff


def test_max_receive_count_below_one_is_refused(queues: Queues) -> None:
    with pytest.raises(ValueError, match="max_receive_count"):
        Settler(queues.queue, max_receive_count=0)


async def test_budget_arithmetic_across_several_hops() -> None:
    """Deliveries alternate between a primary that fails and a canary that fails; SQS's redrive
    policy (maxReceiveCount 3) sees only each copy's own count. The primary still gets exactly
    three attempts, the canary's deliveries cost none, and the primary dead-letters at the third."""
    clock = ManualClock()
    sqs = FakeSqs(clock=clock)
    queue = sqs.create_queue("orders", dead_letter="orders-dlq", max_receive_count=BUDGET)
    dlq = sqs.queue("orders-dlq")
    primary = Settler(
        queue, dead_letter=dlq, retry_policy=RetryPolicy(base_s=0, max_s=0),
        max_receive_count=BUDGET, batch_wait_s=0,
    )  # fmt: skip
    canary = Settler(queue, release_failed=True, max_hops=10, batch_wait_s=0)
    original = await queue.send('{"n": 1}')
    # Who takes each delivery, in order (an idle canary takes most of them).
    takers = ["primary", "canary", "canary", "primary", "canary", "canary", "primary"]
    seen: list[tuple[str, int, int, int]] = []  # taker, hops, ApproximateReceiveCount, effective

    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(s.run()) for s in (primary, canary)]
        for taker in takers:
            [message] = await queue.receive(1, wait_time_s=0)
            seen.append(
                (taker, message.hops, message.receive_count, message.effective_receive_count)
            )
            settler = primary if taker == "primary" else canary
            assert await settler.settle(
                message, record(message, Outcome.FAILED, error="RuntimeError: boom")
            )
        for task in tasks:
            task.cancel()

    assert seen == [
        ("primary", 0, 1, 1),  # the primary fails the original: one receive spent
        ("canary", 0, 2, 2),  # handed back with qworker.receives 1
        ("canary", 1, 1, 2),  # handed back again, still 1
        ("primary", 2, 1, 2),  # the primary's second attempt
        ("canary", 2, 2, 3),  # handed back with 2
        ("canary", 3, 1, 3),  # again, still 2
        ("primary", 4, 1, 3),  # the third attempt: the budget is spent
    ]
    assert canary.handed_back == 4
    assert queue.messages == []
    [dead] = dlq.messages
    assert strings(dead)["qworker.reject_reason"] == (
        "failed 3 times (maxReceiveCount 3): RuntimeError: boom"
    )
    assert strings(dead)["qworker.original_message_id"] == original
    assert "qworker.receives" not in dead.message_attributes


async def test_success_and_release_are_not_handed_back(queues: Queues, canary: Settler) -> None:
    done = await receive_one(queues.queue)
    assert await canary.settle(done, record(done, Outcome.SUCCEEDED))
    stopped = await receive_one(queues.queue)
    assert await canary.settle(stopped, record(stopped, Outcome.RELEASED))

    assert ids(queues.queue.deleted) == [done.message_id]
    assert ids(queues.queue.visible) == [stopped.message_id]
    assert canary.handed_back == 0


def test_negative_max_hops_is_refused(queues: Queues) -> None:
    with pytest.raises(ValueError, match="max_hops"):
        Settler(queues.queue, max_hops=-1)


def test_dead_letter_copy_of_a_copy_names_the_first_id() -> None:
    message = Message(
        "copy-id",
        "r",
        "{}",
        message_attributes={
            "qworker.hops": MessageAttribute("Number", "1"),
            "qworker.original_message_id": MessageAttribute("String", "first-id"),
        },
    )

    attributes = dead_letter_attributes(message, record(message, Outcome.REJECTED))

    assert attributes["qworker.original_message_id"].value == "first-id"
    assert attributes["qworker.hops"].value == "1"


@pytest.mark.parametrize(("raw", "hops"), [(None, 0), ("2", 2), ("x", 0), ("-4", 0)])
def test_message_hops(raw: str | None, hops: int) -> None:
    attributes = {} if raw is None else {"qworker.hops": MessageAttribute("Number", raw)}

    assert Message("m", "r", "{}", message_attributes=attributes).hops == hops


@pytest.mark.parametrize(
    ("attributes", "counts"),
    [
        ({}, (2, 0)),
        ({"qworker.hops": MessageAttribute("Number", "1")}, (2, 1)),
        ({"qworker.receives": MessageAttribute("Number", "3")}, (5, 0)),
        ({"other": MessageAttribute("String", "x")}, (2, 0)),
    ],
)
def test_message_budget_counts_are_the_effective_receive_count_and_the_hops(
    attributes: dict[str, MessageAttribute], counts: tuple[int, int]
) -> None:
    message = Message(
        "m", "r", "{}", {"ApproximateReceiveCount": "2"}, message_attributes=attributes
    )

    assert message.budget_counts() == counts == (message.effective_receive_count, message.hops)


def test_hand_back_entry_replaces_an_old_hop_count_within_the_limit() -> None:
    assert hand_back_entry(message_with(10), 1) is None
    message = message_with(9)
    copy = Message(
        message.message_id,
        message.receipt_handle,
        message.body,
        message_attributes={
            **message.message_attributes,
            "qworker.hops": MessageAttribute("Number", "4"),
        },
    )

    entry = hand_back_entry(copy, 5)

    assert entry is not None
    assert entry.attributes["qworker.hops"] == MessageAttribute("Number", "5")
    assert len(entry.attributes) == 10
    assert entry.delay_s == 0
    assert entry.trace_header is None


class RefusingSends:
    """A queue whose sends are refused entry by entry (the server blames the entry)."""

    def __init__(self, queue: FakeQueueTransport) -> None:
        self._queue = queue

    @property
    def queue_name(self) -> str:
        return self._queue.queue_name

    async def receive(
        self, max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        return await self._queue.receive(
            max_messages, wait_time_s=wait_time_s, visibility_timeout_s=visibility_timeout_s
        )

    async def delete_batch(self, receipt_handles: Sequence[str]) -> list[BatchFailure]:
        return await self._queue.delete_batch(receipt_handles)

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        await self._queue.change_visibility(receipt_handle, timeout_s)

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        return await self._queue.change_visibility_batch(entries)

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        return [
            BatchFailure(i, "InvalidParameterValue", "too long", sender_fault=True)
            for i in range(len(entries))
        ]

    async def get_attributes(self) -> QueueAttributes:
        return await self._queue.get_attributes()
