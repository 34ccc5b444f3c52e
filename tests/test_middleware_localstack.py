"""Public middleware in a real `Worker` on LocalStack: around each handler call, a context
variable reaches the handler, a skipped message is deleted without its handler, and a `Retry`
raised by a middleware comes back as SQS redelivers it."""

from __future__ import annotations

import asyncio
import contextvars
import json
import uuid
from typing import Any

import pytest
from pydantic import BaseModel

from qworker import Message, QWorker, Retry
from qworker.local import create_queue_with_dlq
from qworker.middleware import CallNext, MessageHooks
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.localstack]

tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")


class Order(BaseModel):
    order_id: str


class Hooks(MessageHooks):
    def __init__(self, events: list[str]) -> None:
        self.events = events

    async def before(self, message: Message) -> None:
        self.events.append(f"before {json.loads(message.body)['order_id']}")

    async def after(self, message: Message) -> None:
        self.events.append(f"after {json.loads(message.body)['order_id']}")

    async def on_error(self, message: Message, error: Exception) -> None:
        self.events.append(f"error {json.loads(message.body)['order_id']} {type(error).__name__}")


async def test_middleware_wraps_each_handler_call_of_a_real_worker(
    sqs_client: Any,
    localstack_server: Any,
) -> None:
    name = f"mw-{uuid.uuid4().hex[:10]}"
    url = await create_queue_with_dlq(sqs_client, name)
    events: list[str] = []
    done = asyncio.Event()

    async def context(message: Message, call_next: CallNext) -> None:
        token = tenant.set(message.attribute("tenant") or "-")
        try:
            await call_next()
        finally:
            tenant.reset(token)

    async def gate(message: Message, call_next: CallNext) -> None:
        if message.attribute("skip") == "yes":
            events.append("skipped")
            return
        if message.attribute("later") == "yes" and message.receive_count == 1:
            raise Retry(delay_s=0)  # the middleware's Retry: redelivered by SQS
        await call_next()

    app = QWorker("mw-ls", middleware=[context, Hooks(events), gate])

    @app.handler(name)
    async def handle(order: Order, message: Message) -> None:
        events.append(f"handle {order.order_id} {tenant.get()} {message.receive_count}")
        if order.order_id == "o-3":
            done.set()

    def attributes(**values: str) -> dict[str, Any]:
        return {k: {"DataType": "String", "StringValue": v} for k, v in values.items()}

    await sqs_client.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"order_id": "o-1"}),
        MessageAttributes=attributes(tenant="acme"),
    )
    await sqs_client.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"order_id": "o-2"}),
        MessageAttributes=attributes(skip="yes"),
    )
    await sqs_client.send_message(
        QueueUrl=url,
        MessageBody=json.dumps({"order_id": "o-3"}),
        MessageAttributes=attributes(tenant="globex", later="yes"),
    )
    settings = QWorkerSettings(
        endpoint_url=localstack_server.endpoint_url, region="us-east-1", wait_time_s=1
    )
    worker = Worker(app, settings, identity=Identity(service="mw"), local=True)
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(60):
            await done.wait()
    finally:
        worker.stop()
        async with asyncio.timeout(60):
            await run
    assert "handle o-1 acme 1" in events
    assert (
        events.index("before o-1") < events.index("handle o-1 acme 1") < events.index("after o-1")
    )
    assert "skipped" in events
    assert not any(e.startswith("handle o-2") for e in events)  # skipped: never handled
    assert "error o-3 Retry" in events  # the hooks saw the inner middleware's Retry
    assert "handle o-3 globex 2" in events
    attributes_now = (
        await sqs_client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    assert sum(int(v) for v in attributes_now.values()) == 0  # all three deleted
