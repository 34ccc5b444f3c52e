"""Lifespan and dependencies in a real `Worker` on LocalStack: resources reach the handler, and the
shutdown order is stop receiving, drain, then close the lifespan (each step an event); a message
sent after the stop is not handled, and stays in the queue."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import pytest
from localstack_queues import QueueMaker, messages_left, running_worker
from pydantic import BaseModel

from qworker import Depends, Message, QWorker

pytestmark = [pytest.mark.integration, pytest.mark.localstack]


class Order(BaseModel):
    order_id: str


class Pool:
    def __init__(self) -> None:
        self.open = True


@dataclass
class Resources:
    pool: Pool


def tenant_of(message: Message) -> str:
    return message.attribute("tenant") or "none"


async def test_a_worker_stops_receiving_drains_then_closes_the_lifespan(
    sqs_client: Any,
    localstack_server: Any,
    queue_with_dlq: QueueMaker,
) -> None:
    made = await queue_with_dlq("life")
    name, url = made.name, made.url
    events: list[str] = []
    started, release = asyncio.Event(), asyncio.Event()

    @contextlib.asynccontextmanager
    async def lifespan(app: QWorker) -> AsyncIterator[Resources]:
        pool = Pool()
        events.append(f"open ready={worker.ready.is_set()}")  # ready only once it is open
        yield Resources(pool)
        pool.open = False
        events.append("close")

    app = QWorker("lifespan-ls", lifespan=lifespan)

    @app.handler(name)
    async def handle(order: Order, pool: Pool, tenant: Annotated[str, Depends(tenant_of)]) -> None:
        events.append(f"start {order.order_id} {tenant} open={pool.open}")
        started.set()
        await release.wait()
        events.append(f"end {order.order_id} open={pool.open}")

    await sqs_client.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"order_id": "o-1"}),
        MessageAttributes={"tenant": {"DataType": "String", "StringValue": "acme"}},
    )
    # Leaving the block stops the worker again (a no-op) and waits for its run to end.
    async with running_worker(app, localstack_server.endpoint_url, "lifespan") as worker:
        try:
            async with asyncio.timeout(60):
                await started.wait()
            worker.stop()
            events.append("stop")
            # Sent after the stop: never received by this worker.
            await sqs_client.send_message(QueueUrl=url, MessageBody=json.dumps({"order_id": "o-2"}))
            await asyncio.sleep(0)
            assert "close" not in events  # the handler still runs: the resources stay open
        finally:
            release.set()
    assert events == [
        "open ready=False",
        "start o-1 acme open=True",
        "stop",
        "end o-1 open=True",
        "close",
    ]
    # o-2 was never handled (a long poll cut short by the stop may still hold it invisible
    # until its visibility timeout, as SQS does) and is still in the queue: not lost.
    assert await messages_left(sqs_client, url) == 1
