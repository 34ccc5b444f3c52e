"""FIFO poison without collateral: a failing head is retried in place, its followers keep their
receive budget, and the head is dead-lettered by the worker once it failed `maxReceiveCount` times.

On the in-memory fake (exact, with the consumer in this process); tests/test_handback.py has the
LocalStack scenarios with real worker processes, a SIGTERM and a restart.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from qworker.consumer import Consumer
from qworker.exceptions import Retry
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock, consumer_for
from qworker.transport import Message, SendEntry

BUDGET = 2


class Collect:
    def __init__(self) -> None:
        self.records: list[OutcomeRecord] = []

    def record(self, record: OutcomeRecord) -> None:
        self.records.append(record)


async def fill(queue: FakeQueueTransport) -> None:
    """Group `a`: a poison head `a0` and three followers; group `b`: three messages."""
    entries = [
        SendEntry(json.dumps({"g": g, "n": n}), group_id=g, deduplication_id=f"{g}{n}")
        for g, count in (("a", 4), ("b", 3))
        for n in range(count)
    ]
    await queue.send_batch(entries)


def queues(name: str = "orders.fifo") -> tuple[FakeQueueTransport, FakeQueueTransport]:
    sqs = FakeSqs()
    queue = sqs.create_queue(name, dead_letter="orders-dlq.fifo", max_receive_count=BUDGET)
    return queue, sqs.queue("orders-dlq.fifo")


def key(body: dict[str, object]) -> str:
    return f"{body['g']}{body['n']}"


async def test_poison_head_is_dead_lettered_and_its_followers_all_run_once() -> None:
    queue, dlq = queues()
    await fill(queue)
    runs: list[tuple[str, int]] = []
    sink = Collect()

    async def handle(body: dict[str, object], message: Message) -> None:
        runs.append((key(body), message.receive_count))
        if key(body) == "a0":
            raise RuntimeError("poison")

    consumer = consumer_for(
        queue, handle, dead_letter=dlq, max_receive_count=BUDGET, fifo=True, sinks=[sink]
    )
    async with asyncio.timeout(10):
        await consumer.run_until_empty()

    # The head ran BUDGET times, in place (the handler saw the count go up); the rest once each,
    # in order, with the receive count they were received with.
    assert [r for r in runs if r[0] == "a0"] == [("a0", 1), ("a0", 2)]
    assert [k for k, _ in runs if k.startswith("a")] == ["a0", "a0", "a1", "a2", "a3"]
    assert [k for k, _ in runs if k.startswith("b")] == ["b0", "b1", "b2"]
    assert all(count == 1 for k, count in runs if k != "a0")
    [dead] = dlq.messages
    assert json.loads(dead.body) == {"g": "a", "n": 0}
    assert dead.group_id == "a"
    reason = dead.message_attributes["qworker.reject_reason"].value
    assert reason == f"failed 2 times (maxReceiveCount {BUDGET}): RuntimeError: poison"
    assert queue.messages == []
    stats = consumer.statistics()
    assert (stats.acked, stats.failed, stats.released, stats.rejected) == (6, 2, 0, 0)
    assert [r.receive_count for r in sink.records if r.outcome is Outcome.FAILED] == [1, 2]


async def test_without_in_place_retries_followers_reach_the_dlq_unrun() -> None:
    """The collateral this prevents, shown with the release a canary keeps (`release_failed`)."""
    queue, dlq = queues()
    await fill(queue)
    ran: list[str] = []

    async def handle(body: dict[str, object]) -> None:
        ran.append(key(body))
        if key(body) == "a0":
            raise RuntimeError("poison")

    consumer = consumer_for(queue, handle, dead_letter=dlq, release_failed=True, fifo=True)
    async with asyncio.timeout(10):
        await consumer.run_until_empty()

    dead = sorted(key(json.loads(m.body)) for m in dlq.messages)
    assert dead == ["a0", "a1", "a2", "a3"]  # the followers never ran
    assert "a1" not in ran


async def test_retry_in_place_waits_the_asked_delay_and_keeps_the_order() -> None:
    queue, dlq = queues()
    await fill(queue)
    runs: list[tuple[str, int]] = []
    slept: list[float] = []

    async def sleep(delay: float) -> None:
        slept.append(delay)
        await asyncio.sleep(0)

    async def handle(body: dict[str, object], message: Message) -> None:
        runs.append((key(body), message.receive_count))
        if key(body) == "a1" and message.receive_count == 1:
            raise Retry(7, "not yet")

    consumer = consumer_for(
        queue, handle, dead_letter=dlq, max_receive_count=BUDGET, fifo=True, sleep=sleep
    )
    async with asyncio.timeout(10):
        await consumer.run_until_empty()

    assert [k for k, _ in runs if k.startswith("a")] == ["a0", "a1", "a1", "a2", "a3"]
    assert ("a1", 2) in runs
    assert 7 in slept
    assert dlq.messages == []
    assert consumer.statistics().retried == 1


async def test_stop_while_retrying_in_place_releases_the_head_and_its_followers() -> None:
    queue, dlq = queues()
    await fill(queue)
    failed = asyncio.Event()

    async def handle(body: dict[str, object]) -> None:
        if key(body) == "a0":
            failed.set()
            raise Retry(3600)  # a long wait in place, cut short by the stop

    consumer = consumer_for(
        queue,
        handle,
        dead_letter=dlq,
        max_receive_count=BUDGET,
        fifo=True,
        max_hold_s=43_200,
        shutdown_grace_s=5,
    )
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(10):
        await failed.wait()
        await asyncio.sleep(0)
        consumer.stop()
        await run

    left = [key(json.loads(m.body)) for m in queue.messages]
    assert left[:4] == ["a0", "a1", "a2", "a3"]  # released, in order, none lost
    assert all(m.receive_count == 1 for m in queue.messages)  # received once, as SQS counts
    # Hidden only until the long polls the stop cancelled have surely ended on the server (one
    # could take a released message, and that receive would count against its budget).
    now = time.monotonic()
    assert all(m.visible_at - now <= consumer.wait_time_s + 1 for m in queue.messages)
    assert dlq.messages == []
    assert consumer.statistics().in_flight == 0


async def test_a_wait_beyond_the_hold_limit_falls_back_to_the_release() -> None:
    queue, dlq = queues()
    await fill(queue)

    async def handle(body: dict[str, object]) -> None:
        if key(body) == "a0":
            raise Retry(120)

    consumer = consumer_for(
        queue, handle, dead_letter=dlq, max_receive_count=BUDGET, fifo=True, max_hold_s=60
    )
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(10):
        while consumer.statistics().acked < 3 or consumer.statistics().released < 3:
            await consumer.wait_idle()
            await asyncio.sleep(0)
        consumer.stop()
        await run

    # The head is hidden for its delay on the server, the followers released as before.
    [head] = queue.in_flight
    assert json.loads(head.body) == {"g": "a", "n": 0}
    assert sorted(key(json.loads(m.body)) for m in queue.visible) == ["a1", "a2", "a3"]


async def test_no_writable_dead_letter_queue_leaves_the_head_to_the_redrive_policy() -> None:
    queue, _ = queues()
    await fill(queue)
    runs: list[str] = []

    async def handle(body: dict[str, object]) -> None:
        runs.append(key(body))
        if key(body) == "a0":
            raise RuntimeError("poison")

    consumer = consumer_for(
        queue,
        handle,
        max_receive_count=BUDGET,
        fifo=True,
        retry_policy=RetryPolicy(base_s=0, max_s=0),
    )
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(10):
        while runs.count("a0") < BUDGET or consumer.statistics().released < 3:
            await consumer.wait_idle()
            await asyncio.sleep(0)
        consumer.stop()
        await run

    assert runs.count("a0") >= BUDGET
    assert consumer.statistics().rejected == 0


@pytest.mark.parametrize("outcome", [Outcome.FAILED, Outcome.RETRIED])
async def test_a_budget_of_one_dead_letters_at_the_first_failure(outcome: Outcome) -> None:
    sqs = FakeSqs()
    queue = sqs.create_queue("one.fifo", dead_letter="one-dlq.fifo", max_receive_count=1)
    dlq = sqs.queue("one-dlq.fifo")
    await fill(queue)

    async def handle(body: dict[str, object]) -> None:
        if key(body) == "a0":
            if outcome is Outcome.RETRIED:
                raise Retry(1)
            raise RuntimeError("poison")

    consumer = consumer_for(queue, handle, dead_letter=dlq, max_receive_count=1, fifo=True)
    async with asyncio.timeout(10):
        await consumer.run_until_empty()

    assert [key(json.loads(m.body)) for m in dlq.messages] == ["a0"]
    assert consumer.statistics().acked == 6


async def test_poison_head_across_a_stop_and_a_restart_takes_no_follower() -> None:
    clock = ManualClock()
    sqs = FakeSqs(clock=clock)
    queue = sqs.create_queue("orders.fifo", dead_letter="orders-dlq.fifo", max_receive_count=2)
    dlq = sqs.queue("orders-dlq.fifo")
    await fill(queue)
    runs: list[tuple[str, int]] = []
    failed_once = asyncio.Event()
    group_b_done = asyncio.Event()

    async def handle(body: dict[str, object], message: Message) -> None:
        runs.append((key(body), message.receive_count))
        if key(body) == "b2":
            group_b_done.set()
        if key(body) == "a0":
            failed_once.set()
            raise RuntimeError("poison")

    def worker(backoff_s: float) -> Consumer:
        return consumer_for(
            queue,
            handle,
            dead_letter=dlq,
            max_receive_count=BUDGET,
            fifo=True,
            clock=clock,
            retry_policy=RetryPolicy(base_s=backoff_s, max_s=backoff_s, jitter=0),
        )

    first = worker(60)  # the head waits in place when the stop comes
    run = asyncio.create_task(first.run())
    async with asyncio.timeout(10):
        await failed_once.wait()
        await group_b_done.wait()  # group b runs beside the waiting head
        first.stop()
        await run
    assert dlq.messages == []
    clock.advance(first.wait_time_s + 1)  # the stop's release delay is over
    second = worker(0)
    async with asyncio.timeout(10):
        await second.run_until_empty()

    # The head: once before the stop, once after (its second receive: its budget), dead-lettered.
    assert [r for r in runs if r[0] == "a0"] == [("a0", 1), ("a0", 2)]
    [dead] = dlq.messages
    assert "maxReceiveCount 2" in str(dead.message_attributes["qworker.reject_reason"].value)
    # Every follower ran once, in order, at the receive count the restart gave it.
    assert [r for r in runs if r[0] in {"a1", "a2", "a3"}] == [("a1", 2), ("a2", 2), ("a3", 2)]
    assert queue.messages == []
