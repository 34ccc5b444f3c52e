"""DLQ peek and redrive, on the fake, on moto's server and on LocalStack (over HTTP).

Messages reach the dead-letter queue the way they do in production: a consumer rejects some (qworker
sends them with the reason) and fails the others until the queue's redrive policy moves them. Every
check counts bodies, so a lost or duplicated message fails the test.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest import Backend, _settings
from localstack_queues import delete_queues
from pydantic import BaseModel
from settled import run_until_settled

from qworker import Message, Reject
from qworker.cli import main
from qworker.dlq import (
    COPY_VISIBILITY_S,
    EXCEEDED_REASON,
    DeadLetter,
    MoveTasks,
    MoveTaskUnsupported,
    RedriveMethod,
    peek,
    redrive,
    wait_move_task,
)
from qworker.exceptions import ConfigError, QueueUnavailable
from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.producer import send_bodies
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock, consumer_for
from qworker.transport import MessageAttribute, QueueTransport, SendEntry, SqsTransport
from qworker.worker import open_sqs_client

N_ORDERS = 6
TENANT = {"tenant": "t-1"}


class Order(BaseModel):
    order_id: str


def order(i: int) -> str:
    return json.dumps({"order_id": f"o-{i}"})


def order_id(body: str) -> str:
    return str(json.loads(body)["order_id"])


async def seed(backend: Backend) -> tuple[QueueTransport, QueueTransport]:
    """A queue whose DLQ holds N_ORDERS orders: even ones rejected, odd ones failed twice.

    The queue is settled when it returns: every order is in the DLQ, none left on the queue.
    """
    queue, dlq = await backend.queue("dlq-src", max_receive_count=2)
    await send_bodies(queue, [order(i) for i in range(N_ORDERS)], attributes=TENANT)

    async def handle(o: Order) -> None:
        if int(o.order_id[2:]) % 2 == 0:
            raise Reject(f"order {o.order_id} is for a closed account")
        raise RuntimeError("payment service down")

    # Drained until a drain receives nothing (tests/settled.py): a single drain can end before a
    # failed order is visible again, so before the receive that dead-letters it.
    settled = await run_until_settled(
        queue,
        lambda: consumer_for(
            queue, handle, dead_letter=dlq, clock=backend.clock_fn or time.monotonic
        ),
        elapse=backend.elapse,
    )
    assert settled.total("rejected") == N_ORDERS // 2
    return queue, dlq


async def consume_healed(
    backend: Backend, queue: QueueTransport, *, copies: bool = True
) -> Counter[str]:
    """Run the fixed handler over `queue`; count each order it saw and check the attributes.

    Copies keep the sender's attributes and lose qworker's reject attributes.
    """
    seen: Counter[str] = Counter()

    async def handle(o: Order, message: Message) -> None:
        seen[o.order_id] += 1
        assert message.attribute("tenant") == "t-1"
        if copies:
            assert message.attribute("qworker.reject_reason") is None

    consumer = consumer_for(queue, handle, clock=backend.clock_fn or time.monotonic)
    await consumer.run_until_empty()
    return seen


def by_order(letters: list[DeadLetter]) -> dict[str, DeadLetter]:
    return {order_id(letter.body): letter for letter in letters}


def move_tasks(backend: Backend) -> MoveTasks | None:
    return MoveTasks(backend.client) if backend.real else None


# -- peek -----------------------------------------------------------------------------------------


async def test_peek_shows_reasons_and_leaves_every_message(backend: Backend) -> None:
    queue, dlq = await seed(backend)

    letters = by_order(await peek(dlq, source_queue=queue.queue_name, wait_time_s=0))

    assert sorted(letters) == [f"o-{i}" for i in range(N_ORDERS)]
    for i in range(0, N_ORDERS, 2):
        rejected = letters[f"o-{i}"]
        assert rejected.rejected
        assert rejected.reason == f"order o-{i} is for a closed account"
        assert rejected.source_receive_count == 1
        assert rejected.original_message_id is not None
    for i in range(1, N_ORDERS, 2):
        failed = letters[f"o-{i}"]
        assert not failed.rejected
        assert failed.reason == EXCEEDED_REASON
        # Two deliveries on the source carried over, plus this peek.
        assert failed.receive_count == 3
    assert all(letter.source_queue == queue.queue_name for letter in letters.values())
    assert all(letter.sent_at is not None for letter in letters.values())
    assert letters["o-1"].preview == order(1)

    # Nothing was consumed or left hidden: a second peek sees the same messages, received once more.
    again = by_order(await peek(dlq, wait_time_s=0))
    assert {k: v.message_id for k, v in again.items()} == {
        k: v.message_id for k, v in letters.items()
    }
    assert again["o-1"].receive_count == 4
    assert (await dlq.get_attributes()).approximate_visible == N_ORDERS


async def test_peek_stops_at_max(backend: Backend) -> None:
    _, dlq = await seed(backend)

    assert len(await peek(dlq, max_messages=4, wait_time_s=0)) == 4
    assert len(await peek(dlq, max_messages=50, wait_time_s=0)) == N_ORDERS


# -- redrive by copy ------------------------------------------------------------------------------


async def test_redrive_count_then_all_moves_each_message_once(backend: Backend) -> None:
    queue, dlq = await seed(backend)

    first = await redrive(dlq, queue, count=2, method=RedriveMethod.COPY, wait_time_s=0)
    assert (first.method, first.moved, first.failed) == (RedriveMethod.COPY, 2, 0)
    # Counted without receiving: a peek is a receive, and counts against maxReceiveCount.
    assert (await queue.get_attributes()).approximate_visible == 2
    assert len(await peek(dlq, wait_time_s=0)) == N_ORDERS - 2

    rest = await redrive(dlq, queue, method=RedriveMethod.COPY, wait_time_s=0)
    assert (rest.moved, rest.failed, rest.not_deleted) == (N_ORDERS - 2, 0, 0)
    assert await peek(dlq, wait_time_s=0) == []

    seen = await consume_healed(backend, queue)
    assert seen == Counter({f"o-{i}": 1 for i in range(N_ORDERS)})


async def test_redrive_fifo_keeps_groups_and_their_order(backend: Backend) -> None:
    queue, dlq = await backend.queue("dlq-fifo", fifo=True)
    reject = {"qworker.reject_reason": MessageAttribute("String", "bad")}
    entries = [
        SendEntry(
            order(i), reject if i % 3 == 0 else {}, group_id=f"g-{i % 2}", deduplication_id=f"d{i}"
        )
        for i in range(N_ORDERS)
    ]
    assert await dlq.send_batch(entries) == []

    report = await redrive(dlq, queue, method=RedriveMethod.COPY, wait_time_s=0)

    assert report.moved == N_ORDERS
    groups: dict[str, list[str]] = {}
    while batch := await queue.receive(10, wait_time_s=0):
        for message in batch:
            assert message.attribute("qworker.reject_reason") is None
            groups.setdefault(message.group_id or "", []).append(order_id(message.body))
        assert await queue.delete_batch([m.receipt_handle for m in batch]) == []
    assert groups == {"g-0": ["o-0", "o-2", "o-4"], "g-1": ["o-1", "o-3", "o-5"]}


async def test_a_redriven_copy_starts_with_a_fresh_receive_budget(backend: Backend) -> None:
    queue, dlq = await backend.queue("dlq-budget")
    spent = {
        "qworker.hops": MessageAttribute("Number", "2"),
        "qworker.receives": MessageAttribute("Number", "2"),
        "tenant": MessageAttribute("String", "t-1"),
    }
    assert await dlq.send_batch([SendEntry(order(0), spent)]) == []

    report = await redrive(dlq, queue, method=RedriveMethod.COPY, wait_time_s=0)

    assert report.moved == 1
    [message] = await queue.receive(10, wait_time_s=0)
    assert message.attribute("qworker.hops") is None
    assert message.attribute("qworker.receives") is None
    assert message.attribute("tenant") == "t-1"
    assert message.effective_receive_count == 1


async def test_dry_run_moves_nothing(backend: Backend) -> None:
    queue, dlq = await seed(backend)

    report = await redrive(dlq, queue, move_tasks=move_tasks(backend), dry_run=True)

    assert report.would_move == N_ORDERS
    assert report.moved == 0
    expected = RedriveMethod.MOVE_TASK if backend.name == "localstack" else RedriveMethod.COPY
    assert report.method is expected
    assert len(await peek(dlq, wait_time_s=0)) == N_ORDERS
    assert (await queue.get_attributes()).approximate_visible == 0


async def test_move_task_needs_a_server_and_cannot_count(backend: Backend) -> None:
    queue, dlq = await backend.queue("dlq-args")
    with pytest.raises(ConfigError, match="--count"):
        await redrive(dlq, queue, count=1, method=RedriveMethod.MOVE_TASK)
    with pytest.raises(MoveTaskUnsupported):
        await redrive(dlq, queue, method=RedriveMethod.MOVE_TASK)


async def fake_dlq_with(n: int) -> tuple[ManualClock, FakeQueueTransport, FakeQueueTransport]:
    clock = ManualClock()
    sqs = FakeSqs(clock=clock)
    queue = sqs.create_queue("src", dead_letter="src-dlq")
    dlq = sqs.queue("src-dlq")
    for i in range(n):
        await dlq.send(order(i))
    return clock, queue, dlq


async def test_a_failed_send_moves_nothing_and_hides_nothing() -> None:
    _, queue, dlq = await fake_dlq_with(3)
    queue.fail_next("send_batch", QueueUnavailable("connection refused"))

    with pytest.raises(QueueUnavailable):
        await redrive(dlq, queue, wait_time_s=0)

    assert queue.messages == []
    assert len(dlq.visible) == 3


async def test_a_failed_delete_duplicates_but_never_loses() -> None:
    clock, queue, dlq = await fake_dlq_with(3)
    dlq.fail_next("delete_batch", QueueUnavailable("connection reset"))

    with pytest.raises(QueueUnavailable):
        await redrive(dlq, queue, wait_time_s=0)

    assert sorted(m.body for m in queue.messages) == [order(i) for i in range(3)]
    clock.advance(COPY_VISIBILITY_S)  # the copied messages come back to the DLQ
    assert len(dlq.visible) == 3


# -- redrive with StartMessageMoveTask (real servers) ---------------------------------------------


@pytest.fixture(
    params=[
        pytest.param("moto", marks=[pytest.mark.integration, pytest.mark.moto]),
        pytest.param("localstack", marks=[pytest.mark.integration, pytest.mark.localstack]),
    ]
)
async def server(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """moto's server or LocalStack, as a `Backend` that removes its queues afterwards."""
    endpoint_url = request.getfixturevalue(f"{request.param}_server").endpoint_url
    async with open_sqs_client(_settings(endpoint_url), local=True) as client:
        backend = Backend(request.param, client=client, endpoint_url=endpoint_url)
        yield backend
        await delete_queues(client, backend.created, strict=True)


async def test_auto_uses_the_move_task_where_the_server_has_it(server: Backend) -> None:
    queue, dlq = await seed(server)

    report = await redrive(dlq, queue, move_tasks=MoveTasks(server.client), wait=True)

    if server.name == "localstack":
        assert report.method is RedriveMethod.MOVE_TASK
        assert report.task is not None
        assert (report.task.status, report.task.moved) == ("COMPLETED", N_ORDERS)
    else:  # moto 5 lacks StartMessageMoveTask: auto copies
        assert report.method is RedriveMethod.COPY
        assert "StartMessageMoveTask" in (report.fallback_reason or "")
    assert report.moved == N_ORDERS
    assert await peek(dlq, wait_time_s=0) == []
    seen = await consume_healed(server, queue, copies=report.method is RedriveMethod.COPY)
    assert seen == Counter({f"o-{i}": 1 for i in range(N_ORDERS)})


async def test_auto_with_a_count_copies(server: Backend) -> None:
    queue, dlq = await seed(server)

    report = await redrive(dlq, queue, move_tasks=MoveTasks(server.client), count=4, wait_time_s=0)

    assert (report.method, report.moved, report.fallback_reason) == (RedriveMethod.COPY, 4, None)
    assert len(await peek(dlq, wait_time_s=0)) == N_ORDERS - 4


async def test_move_task_method(server: Backend) -> None:
    queue, dlq = await seed(server)
    tasks = MoveTasks(server.client)

    if server.name == "moto":
        with pytest.raises(MoveTaskUnsupported, match="StartMessageMoveTask"):
            await redrive(dlq, queue, move_tasks=tasks, method=RedriveMethod.MOVE_TASK)
        assert len(await peek(dlq, wait_time_s=0)) == N_ORDERS
        return
    report = await redrive(dlq, queue, move_tasks=tasks, method=RedriveMethod.MOVE_TASK)
    assert report.method is RedriveMethod.MOVE_TASK
    assert report.task is not None
    assert report.task.status in {"RUNNING", "COMPLETED"}
    # The task runs on the server: poll its status (bounded) until it has finished.
    done = await wait_move_task(tasks, (await dlq.get_attributes()).arn, timeout_s=30, poll_s=0.05)
    assert done is not None
    assert (done.status, done.moved) == ("COMPLETED", N_ORDERS)
    # The move task keeps the message and its attributes, qworker's reject reason included.
    moved = by_order(await peek(queue, wait_time_s=0))
    assert sorted(moved) == [f"o-{i}" for i in range(N_ORDERS)]
    assert moved["o-0"].reason == "order o-0 is for a closed account"


# -- the command line -----------------------------------------------------------------------------


async def _cli_queues(endpoint_url: str, name: str) -> None:
    async with open_sqs_client(_settings(endpoint_url), local=True) as client:
        await create_queue_with_dlq(client, name)
        dlq = await SqsTransport.open(client, name=dead_letter_name(name))
        reject = {
            "qworker.reject_reason": MessageAttribute("String", "unsupported currency XYZ"),
            "qworker.source_queue": MessageAttribute("String", name),
        }
        entries = [SendEntry(order(i), reject if i < 2 else {}) for i in range(5)]
        assert await dlq.send_batch(entries) == []


async def _cli_bodies(endpoint_url: str, name: str) -> tuple[list[str], int]:
    async with open_sqs_client(_settings(endpoint_url), local=True) as client:
        source = await SqsTransport.open(client, name=name)
        dlq = await SqsTransport.open(client, name=dead_letter_name(name))
        bodies = [letter.body for letter in await peek(source, wait_time_s=0)]
        left = len(await peek(dlq, wait_time_s=0))
        await delete_queues(client, [name], strict=True)
        return bodies, left


@pytest.mark.parametrize(
    "server_name",
    [
        pytest.param("moto", marks=[pytest.mark.integration, pytest.mark.moto]),
        pytest.param("localstack", marks=[pytest.mark.integration, pytest.mark.localstack]),
    ],
)
def test_cli_peek_then_redrive(
    server_name: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    url = request.getfixturevalue(f"{server_name}_server").endpoint_url
    name = f"cli-{uuid.uuid4().hex[:8]}"
    asyncio.run(_cli_queues(url, name))
    where = ["--endpoint-url", url, "--queue-name", name]

    assert main(["dlq", "peek", *where, "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted(order_id(line["body"]) for line in lines) == [f"o-{i}" for i in range(5)]
    assert Counter(line["reason"] for line in lines) == {
        "unsupported currency XYZ": 2,
        EXCEEDED_REASON: 3,
    }
    assert main(["dlq", "peek", *where]) == 0
    out = capsys.readouterr().out
    assert f"{dead_letter_name(name)}: 5 message(s)" in out
    assert "reason: unsupported currency XYZ" in out

    assert main(["dlq", "redrive", *where, "--count", "2"]) == 0
    assert "moved 2 message(s)" in capsys.readouterr().out
    assert main(["dlq", "redrive", *where, "--all", "--dry-run"]) == 0
    assert "dry run: would move 3 message(s)" in capsys.readouterr().out
    # The DLQ alone is enough: its source comes from ListDeadLetterSourceQueues.
    by_dlq = ["--endpoint-url", url, "--dlq-name", dead_letter_name(name)]
    assert main(["dlq", "redrive", *by_dlq, "--all", "--wait"]) == 0
    out = capsys.readouterr().out
    if server_name == "localstack":
        assert "COMPLETED, 3 of ~3 moved" in out
    else:
        assert "move task unavailable" in out
        assert "moved 3 message(s)" in out

    bodies, left = asyncio.run(_cli_bodies(url, name))
    assert sorted(map(order_id, bodies)) == [f"o-{i}" for i in range(5)]
    assert left == 0


@pytest.mark.integration
@pytest.mark.moto
def test_cli_queue_without_a_dead_letter_queue(
    moto_server: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"plain-{uuid.uuid4().hex[:8]}"

    async def create() -> None:
        async with open_sqs_client(_settings(moto_server.endpoint_url), local=True) as client:
            await client.create_queue(QueueName=name)

    asyncio.run(create())
    code = main(["dlq", "peek", "--endpoint-url", moto_server.endpoint_url, "--queue-name", name])
    assert code == 2
    assert "has no RedrivePolicy" in capsys.readouterr().err
