"""Batch handlers in a real `Worker` on LocalStack: batches of at most `batch_size`, and each
message settled on its own (deleted, retried by SQS, or rejected to the dead-letter queue)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from localstack_queues import QueueMaker, messages_left, running_worker
from pydantic import BaseModel

from qworker import BatchResult, Message, QWorker, Reject, Retry

pytestmark = [pytest.mark.integration, pytest.mark.localstack]


class Order(BaseModel):
    n: int


async def test_a_batch_handler_settles_each_message_on_its_own(
    sqs_client: Any,
    localstack_server: Any,
    queue_with_dlq: QueueMaker,
) -> None:
    queue = await queue_with_dlq("batch")
    sizes: list[int] = []
    handled: set[int] = set()
    done = asyncio.Event()
    app = QWorker("batch-ls")

    @app.handler(queue.name, batch_size=3, batch_wait_s=0.5)
    async def handle(orders: list[Order], messages: list[Message]) -> BatchResult:
        sizes.append(len(orders))
        result = BatchResult()
        for index, (order, message) in enumerate(zip(orders, messages, strict=True)):
            if order.n == 4:
                result.fail(index, Reject("n=4 is refused"))
            elif order.n == 5 and message.receive_count == 1:
                result.fail(index, Retry(delay_s=0))
            else:
                handled.add(order.n)
        if handled == {0, 1, 2, 3, 5}:
            done.set()
        return result

    await sqs_client.send_message_batch(
        QueueUrl=queue.url,
        Entries=[{"Id": str(n), "MessageBody": json.dumps({"n": n})} for n in range(6)],
    )
    async with running_worker(app, localstack_server.endpoint_url, "batch"), asyncio.timeout(60):
        await done.wait()
    assert max(sizes) <= 3
    assert sum(sizes) == 7  # six messages, n=5 twice
    assert await messages_left(sqs_client, queue.url) == 0  # every handled message deleted
    dead = await sqs_client.receive_message(
        QueueUrl=queue.dlq_url, WaitTimeSeconds=2, MessageAttributeNames=["All"]
    )
    (rejected,) = dead["Messages"]
    assert json.loads(rejected["Body"]) == {"n": 4}
    reason = rejected["MessageAttributes"]["qworker.reject_reason"]["StringValue"]
    assert reason == "n=4 is refused"


async def test_a_batch_stays_invisible_past_the_visibility_timeout_while_it_runs(
    sqs_client: Any,
    localstack_server: Any,
    queue_with_dlq: QueueMaker,
) -> None:
    queue = await queue_with_dlq("batch-hb", visibility_timeout_s=2)
    started, release = asyncio.Event(), asyncio.Event()
    receive_counts: list[int] = []
    app = QWorker("batch-hb")

    @app.handler(queue.name, batch_size=2, batch_wait_s=0.2)
    async def handle(orders: list[Order], messages: list[Message]) -> None:
        receive_counts.extend(m.receive_count for m in messages)
        started.set()
        await release.wait()

    await sqs_client.send_message_batch(
        QueueUrl=queue.url,
        Entries=[{"Id": str(n), "MessageBody": json.dumps({"n": n})} for n in range(2)],
    )
    async with running_worker(app, localstack_server.endpoint_url, "batch"):
        try:
            async with asyncio.timeout(60):
                await started.wait()
            await asyncio.sleep(5)  # more than twice the queue's visibility timeout
            counts = (
                await sqs_client.get_queue_attributes(
                    QueueUrl=queue.url, AttributeNames=["ApproximateNumberOfMessages"]
                )
            )["Attributes"]
            assert counts["ApproximateNumberOfMessages"] == "0"  # the heartbeat kept them hidden
        finally:
            release.set()
    assert sorted(receive_counts) == [1, 1]  # never redelivered while the batch ran
    assert await messages_left(sqs_client, queue.url) == 0
