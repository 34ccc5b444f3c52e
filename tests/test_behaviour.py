"""The consumer's promises, each run on the fake, on moto's server and on LocalStack (over HTTP)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable

from conftest import Backend
from pydantic import BaseModel
from settled import run_until_settled

from qworker import Message, Reject, Retry
from qworker.exceptions import QueueUnavailable
from qworker.producer import send_bodies
from qworker.testing import FakeSqs, ManualClock, consumer_for
from qworker.transport import QueueTransport, SendEntry


class Order(BaseModel):
    order_id: str
    amount_cents: int


def order(i: int) -> str:
    return json.dumps({"order_id": f"o-{i}", "amount_cents": 100 + i})


async def drain(queue: QueueTransport, *, wait_time_s: float = 0) -> list[Message]:
    """Receive (and delete) everything visible on `queue`."""
    found: list[Message] = []
    while True:
        batch = await queue.receive(10, wait_time_s=wait_time_s)
        if not batch:
            return found
        found.extend(batch)
        await queue.delete_batch([m.receipt_handle for m in batch])


async def test_success_deletes_every_message(backend: Backend) -> None:
    queue, _ = await backend.queue("ok")
    await send(queue, [order(i) for i in range(25)])
    seen: list[str] = []

    async def handle(o: Order) -> None:
        seen.append(o.order_id)

    consumer = consumer_for(queue, handle, clock=backend.clock_fn or _monotonic())
    await consumer.run_until_empty()

    stats = consumer.statistics()
    assert stats.acked == 25
    assert sorted(seen) == sorted(f"o-{i}" for i in range(25))
    assert stats.in_flight == 0
    assert await drain(queue) == []


async def test_failure_retries_then_dead_letters(backend: Backend) -> None:
    queue, dlq = await backend.queue("fail", max_receive_count=2)
    await send(queue, [order(1)])
    attempts: Counter[str] = Counter()

    async def handle(o: Order) -> None:
        attempts[o.order_id] += 1
        raise RuntimeError("payment service down")

    # Drained until a drain receives nothing (tests/settled.py): a single drain can end before the
    # last failure's message is visible again, so before the receive that dead-letters it.
    settled = await run_until_settled(
        queue,
        lambda: consumer_for(
            queue, handle, dead_letter=dlq, clock=backend.clock_fn or _monotonic()
        ),
        elapse=backend.elapse,
    )

    assert attempts["o-1"] == 2
    assert settled.total("failed") == 2
    dead = await drain(dlq, wait_time_s=1 if backend.real else 0)
    assert [json.loads(m.body)["order_id"] for m in dead] == ["o-1"]
    assert await drain(queue) == []


async def test_a_failure_left_unsettled_comes_back_after_the_visibility_timeout() -> None:
    """A failed ChangeMessageVisibility leaves the message hidden, not lost: it comes back after the
    visibility timeout, fails again and is dead-lettered (the fake: the failure is injected)."""
    clock = ManualClock()
    sqs = FakeSqs(clock=clock)
    queue = sqs.create_queue("unsettled", dead_letter="unsettled-dlq", max_receive_count=2)
    dlq = sqs.queue("unsettled-dlq")
    await send(queue, [order(1)])
    queue.fail_next("change_visibility", QueueUnavailable("connection reset"))
    attempts: Counter[str] = Counter()

    async def handle(o: Order) -> None:
        attempts[o.order_id] += 1
        raise RuntimeError("payment service down")

    async def elapse(seconds: float) -> None:
        clock.advance(seconds)

    settled = await run_until_settled(
        queue, lambda: consumer_for(queue, handle, dead_letter=dlq, clock=clock), elapse=elapse
    )

    assert [(run.failed, run.unsettled) for run in settled.runs] == [(1, 1), (1, 0), (0, 0)]
    assert attempts["o-1"] == 2
    assert [json.loads(m.body)["order_id"] for m in await drain(dlq)] == ["o-1"]
    assert await drain(queue) == []


async def test_invalid_body_is_rejected_to_the_dead_letter_queue(backend: Backend) -> None:
    queue, dlq = await backend.queue("bad")
    await send(queue, ["{not json", json.dumps({"order_id": "o-2"})])
    called = 0

    async def handle(o: Order) -> None:
        nonlocal called
        called += 1

    consumer = consumer_for(queue, handle, dead_letter=dlq, clock=backend.clock_fn or _monotonic())
    await consumer.run_until_empty()

    assert called == 0
    assert consumer.statistics().rejected == 2
    dead = await drain(dlq, wait_time_s=1 if backend.real else 0)
    reasons = sorted(m.attribute("qworker.reject_reason") or "" for m in dead)
    assert reasons[0].startswith("invalid body: amount_cents: Field required")
    assert reasons[1].startswith("invalid body: body: Invalid JSON")
    assert all(m.attribute("qworker.source_queue") == queue.queue_name for m in dead)
    assert await drain(queue) == []


async def test_handler_reject_goes_to_the_dead_letter_queue_with_its_reason(
    backend: Backend,
) -> None:
    queue, dlq = await backend.queue("reject")
    await send(queue, [order(3)])

    async def handle(o: Order) -> None:
        raise Reject(f"order {o.order_id} is for a closed account")

    consumer = consumer_for(queue, handle, dead_letter=dlq, clock=backend.clock_fn or _monotonic())
    await consumer.run_until_empty()

    dead = await drain(dlq, wait_time_s=1 if backend.real else 0)
    assert [m.attribute("qworker.reject_reason") for m in dead] == [
        "order o-3 is for a closed account"
    ]
    assert dead[0].attribute("qworker.receive_count") == "1"


async def test_retry_comes_back_after_the_asked_delay(backend: Backend) -> None:
    queue, _ = await backend.queue("retry")
    await send(queue, [order(4)])
    attempts = 0
    done = asyncio.Event()

    async def handle(o: Order, message: Message) -> None:
        nonlocal attempts
        attempts += 1
        if message.receive_count == 1:
            raise Retry(delay_s=2, reason="rate limited upstream")
        done.set()

    consumer = consumer_for(queue, handle, clock=backend.clock_fn or _monotonic())
    await consumer.run_until_empty()
    assert (attempts, consumer.statistics().retried) == (1, 1)
    assert await queue.receive(10, wait_time_s=0) == []  # hidden for the delay

    await backend.elapse(2)
    again = consumer_for(queue, handle, clock=backend.clock_fn or _monotonic(), wait_time_s=1)
    run = asyncio.create_task(again.run())
    async with asyncio.timeout(20):
        await done.wait()
    again.stop()
    await run
    assert (attempts, again.statistics().acked) == (2, 1)


async def test_heartbeat_keeps_a_long_handler_invisible(backend: Backend) -> None:
    visibility = 2 if backend.real else 30
    queue, _ = await backend.queue("slow", visibility_timeout_s=visibility)
    await send(queue, [order(5)])
    release = asyncio.Event()
    started = asyncio.Event()
    runs = 0

    async def handle(o: Order) -> None:
        nonlocal runs
        runs += 1
        started.set()
        await release.wait()

    consumer = consumer_for(
        queue, handle, visibility_timeout_s=visibility, clock=backend.clock_fn or _monotonic()
    )
    run = asyncio.create_task(consumer.run_until_empty())
    async with asyncio.timeout(30):
        await started.wait()
    # Hold the message for three visibility timeouts while another receiver keeps asking for it.
    for _ in range(6):
        await backend.elapse(visibility / 2)
        if not backend.real:
            await consumer.heartbeat.beat()
        assert await queue.receive(10, wait_time_s=0) == []
    release.set()
    async with asyncio.timeout(30):
        await run
    assert runs == 1
    assert consumer.statistics().acked == 1
    assert consumer.heartbeat.calls >= 2


async def test_fifo_groups_run_in_order_and_a_failure_holds_its_group(backend: Backend) -> None:
    queue, _ = await backend.queue("fifo", fifo=True)
    for group in ("a", "b", "c"):
        for seq in range(5):
            await queue.send_batch([fifo_entry(group, seq)])
    order_seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}
    failed_once = False

    async def handle(body: dict[str, object]) -> None:
        nonlocal failed_once
        group, seq = str(body["group"]), int(str(body["seq"]))
        order_seen[group].append(seq)
        if group == "a" and seq == 2 and not failed_once:
            failed_once = True
            raise RuntimeError("transient")

    # moto can answer two concurrent receives out of group order (one response carrying a group's
    # later messages before another carrying its earlier ones): no client can fix that, so moto
    # gets one poller. SQS and LocalStack never hand out a group's messages while one is held.
    pollers = 1 if backend.name == "moto" else 2
    consumer = consumer_for(
        queue, handle, clock=backend.clock_fn or _monotonic(), fifo=True, pollers=pollers
    )
    await consumer.run_until_empty()

    assert order_seen["a"] == [0, 1, 2, 2, 3, 4]
    assert order_seen["b"] == [0, 1, 2, 3, 4]
    assert order_seen["c"] == [0, 1, 2, 3, 4]
    assert consumer.statistics().acked == 15


def fifo_entry(group: str, seq: int) -> SendEntry:
    return SendEntry(
        json.dumps({"group": group, "seq": seq}),
        group_id=group,
        deduplication_id=f"{group}-{seq}",
    )


async def send(queue: QueueTransport, bodies: list[str]) -> None:
    await send_bodies(queue, bodies)


def _monotonic() -> Callable[[], float]:
    return time.monotonic
