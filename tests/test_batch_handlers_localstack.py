"""Batch handlers in a real `Worker` on LocalStack: batches of at most `batch_size`, and each
message settled on its own (deleted, retried by SQS, or rejected to the dead-letter queue)."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from qworker import BatchResult, Message, QWorker, Reject, Retry
from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.localstack]


class Order(BaseModel):
    n: int


async def test_a_batch_handler_settles_each_message_on_its_own(
    sqs_client: Any,
    localstack_server: Any,
) -> None:
    name = f"batch-{uuid.uuid4().hex[:10]}"
    url = await create_queue_with_dlq(sqs_client, name)
    sizes: list[int] = []
    handled: set[int] = set()
    done = asyncio.Event()
    app = QWorker("batch-ls")

    @app.handler(name, batch_size=3, batch_wait_s=0.5)
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
        QueueUrl=url,
        Entries=[{"Id": str(n), "MessageBody": json.dumps({"n": n})} for n in range(6)],
    )
    settings = QWorkerSettings(
        endpoint_url=localstack_server.endpoint_url, region="us-east-1", wait_time_s=1
    )
    worker = Worker(app, settings, identity=Identity(service="batch"), local=True)
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(60):
            await done.wait()
    finally:
        worker.stop()
        async with asyncio.timeout(60):
            await run
    assert max(sizes) <= 3
    assert sum(sizes) == 7  # six messages, n=5 twice
    counts = (
        await sqs_client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    assert sum(int(v) for v in counts.values()) == 0  # every handled message deleted
    dlq_url = (await sqs_client.get_queue_url(QueueName=dead_letter_name(name)))["QueueUrl"]
    dead = await sqs_client.receive_message(
        QueueUrl=dlq_url, WaitTimeSeconds=2, MessageAttributeNames=["All"]
    )
    (rejected,) = dead["Messages"]
    assert json.loads(rejected["Body"]) == {"n": 4}
    reason = rejected["MessageAttributes"]["qworker.reject_reason"]["StringValue"]
    assert reason == "n=4 is refused"


async def test_a_batch_stays_invisible_past_the_visibility_timeout_while_it_runs(
    sqs_client: Any,
    localstack_server: Any,
) -> None:
    name = f"batch-hb-{uuid.uuid4().hex[:10]}"
    url = await create_queue_with_dlq(sqs_client, name, visibility_timeout_s=2)
    started, release = asyncio.Event(), asyncio.Event()
    receive_counts: list[int] = []
    app = QWorker("batch-hb")

    @app.handler(name, batch_size=2, batch_wait_s=0.2)
    async def handle(orders: list[Order], messages: list[Message]) -> None:
        receive_counts.extend(m.receive_count for m in messages)
        started.set()
        await release.wait()

    await sqs_client.send_message_batch(
        QueueUrl=url,
        Entries=[{"Id": str(n), "MessageBody": json.dumps({"n": n})} for n in range(2)],
    )
    settings = QWorkerSettings(
        endpoint_url=localstack_server.endpoint_url, region="us-east-1", wait_time_s=1
    )
    worker = Worker(app, settings, identity=Identity(service="batch"), local=True)
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(60):
            await started.wait()
        await asyncio.sleep(5)  # more than twice the queue's visibility timeout
        counts = (
            await sqs_client.get_queue_attributes(
                QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
            )
        )["Attributes"]
        assert counts["ApproximateNumberOfMessages"] == "0"  # the heartbeat kept them hidden
    finally:
        release.set()
        worker.stop()
        async with asyncio.timeout(60):
            await run
    assert sorted(receive_counts) == [1, 1]  # never redelivered while the batch ran
    counts = (
        await sqs_client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    assert sum(int(v) for v in counts.values()) == 0
