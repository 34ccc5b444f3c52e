"""Public middleware in a real `Worker` on LocalStack: around each handler call, a context
variable reaches the handler, a skipped message is deleted without its handler, and a `Retry`
raised by a middleware comes back as SQS redelivers it."""

from __future__ import annotations

import asyncio
import contextvars
import json
from typing import Any

import pytest
from localstack_queues import QueueMaker, messages_left, running_worker
from pydantic import BaseModel

from qworker import Message, QWorker, Retry
from qworker.middleware import CallNext, MessageHooks

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
    queue_with_dlq: QueueMaker,
) -> None:
    queue = await queue_with_dlq("mw")
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

    @app.handler(queue.name)
    async def handle(order: Order, message: Message) -> None:
        events.append(f"handle {order.order_id} {tenant.get()} {message.receive_count}")
        if order.order_id == "o-3":
            done.set()

    def attributes(**values: str) -> dict[str, Any]:
        return {k: {"DataType": "String", "StringValue": v} for k, v in values.items()}

    await sqs_client.send_message(
        QueueUrl=queue.url,
        MessageBody=json.dumps({"order_id": "o-1"}),
        MessageAttributes=attributes(tenant="acme"),
    )
    await sqs_client.send_message(
        QueueUrl=queue.url,
        MessageBody=json.dumps({"order_id": "o-2"}),
        MessageAttributes=attributes(skip="yes"),
    )
    await sqs_client.send_message(
        QueueUrl=queue.url,
        MessageBody=json.dumps({"order_id": "o-3"}),
        MessageAttributes=attributes(tenant="globex", later="yes"),
    )
    async with running_worker(app, localstack_server.endpoint_url, "mw"), asyncio.timeout(60):
        await done.wait()
    assert "handle o-1 acme 1" in events
    assert (
        events.index("before o-1") < events.index("handle o-1 acme 1") < events.index("after o-1")
    )
    assert "skipped" in events
    assert not any(e.startswith("handle o-2") for e in events)  # skipped: never handled
    assert "error o-3 Retry" in events  # the hooks saw the inner middleware's Retry
    assert "handle o-3 globex 2" in events
    assert await messages_left(sqs_client, queue.url) == 0  # all three deleted
