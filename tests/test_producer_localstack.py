"""The producer against LocalStack: `qworker send` processes, and `app.send` from a running worker.

The FIFO test runs `qworker send` twice, as two processes with different hash seeds, with the same
body: SQS must deduplicate the second send, which it only can when the deduplication id is the
same in both processes.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from localstack_queues import QueueMaker, running_worker, worker_settings
from pydantic import BaseModel

from qworker import Message, QWorker
from qworker.payloads import pointer_of
from qworker.producer import SendError
from qworker.settings import QWorkerSettings
from qworker.transport import SqsTransport

pytestmark = [pytest.mark.integration, pytest.mark.localstack]


class OrderPlaced(BaseModel):
    order_id: str


class Invoice(BaseModel):
    order_id: str
    total: int


def qworker_send(endpoint_url: str, *args: str, seed: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PYTHONHASHSEED": seed,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    command = [sys.executable, "-m", "qworker", "send", "--endpoint-url", endpoint_url]
    command += ["--region", "us-east-1", *args]
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=120, check=False
    )


async def test_qworker_send_to_fifo_deduplicates_across_processes(
    localstack_server: Any, sqs_client: Any, queue_with_dlq: QueueMaker
) -> None:
    made = await queue_with_dlq("send", fifo=True)
    body = '{"order_id": "o-1"}'
    for seed in ("1", "2"):
        done = await asyncio.to_thread(
            qworker_send,
            localstack_server.endpoint_url,
            "--queue-name",
            made.name,
            "--type",
            "OrderPlaced",
            "--group",
            "customer-7",
            body,
            seed=seed,
        )
        assert done.returncode == 0, done.stderr
    queue = SqsTransport(sqs_client, made.url)
    received = await queue.receive(10, wait_time_s=1)
    assert [m.body for m in received] == [body]
    (message,) = received
    assert message.attribute("type") == "OrderPlaced"
    assert message.group_id == "customer-7"
    assert (await queue.receive(10, wait_time_s=1)) == []


async def test_a_handler_sends_on_with_app_send(
    localstack_server: Any, queue_with_dlq: QueueMaker
) -> None:
    orders = (await queue_with_dlq("orders")).name
    invoices = (await queue_with_dlq("invoices")).name
    app = QWorker("shop")
    seen: list[tuple[Invoice, str | None]] = []
    done = asyncio.Event()

    @app.handler(orders)
    async def place(order: OrderPlaced) -> None:
        await app.send(invoices, Invoice(order_id=order.order_id, total=42), message_type="Invoice")

    @app.handler(invoices)
    async def invoice(inv: Invoice, message: Message) -> None:
        seen.append((inv, message.attribute("type")))
        done.set()

    async with app.producer(worker_settings(localstack_server.endpoint_url), local=True):
        await app.send(orders, OrderPlaced(order_id="o-9"))
    async with running_worker(app, localstack_server.endpoint_url, "shop"), asyncio.timeout(60):
        await done.wait()
    assert seen == [(Invoice(order_id="o-9", total=42), "Invoice")]
    with pytest.raises(RuntimeError, match="no producer"):
        await app.send(invoices, "after the worker stopped")


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_send_example() -> str:
    section = README.read_text().split("## Sending messages", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(# send_orders.py\n.*?)```", section, flags=re.DOTALL)
    assert match is not None, "the Sending messages section has no send_orders.py block"
    return match.group(1)


async def test_the_readme_send_example_runs(
    localstack_server: Any, sqs_client: Any, queue_with_dlq: QueueMaker, tmp_path: Path
) -> None:
    made = await queue_with_dlq("orders")
    script = tmp_path / "send_orders.py"
    script.write_text(readme_send_example().replace('"orders"', f'"{made.name}"'))
    env = {
        **os.environ,
        "QWORKER_ENDPOINT_URL": localstack_server.endpoint_url,
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
    }
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sent 39"
    attributes = await sqs_client.get_queue_attributes(
        QueueUrl=made.url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"],
    )
    counts = attributes["Attributes"]
    total = int(counts["ApproximateNumberOfMessages"])
    total += int(counts["ApproximateNumberOfMessagesDelayed"])
    assert total == 39


async def test_qworker_send_offloads_to_s3_and_refuses_bad_options(
    localstack_server: Any, sqs_client: Any, queue_with_dlq: QueueMaker
) -> None:
    made = await queue_with_dlq("send")
    fifo = (await queue_with_dlq("send", fifo=True)).name
    bucket = f"send-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client(
        "s3",
        endpoint_url=localstack_server.endpoint_url,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.create_bucket(Bucket=bucket)
    endpoint = localstack_server.endpoint_url
    args = ["--queue-name", made.name, "--payload-bucket", bucket, "--payload-always", "hello"]
    done = await asyncio.to_thread(qworker_send, endpoint, *args, seed="0")
    assert done.returncode == 0, done.stderr
    (message,) = await SqsTransport(sqs_client, made.url).receive(10, wait_time_s=1)
    pointer = pointer_of(message)
    assert pointer is not None
    assert pointer.bucket == bucket
    assert s3.get_object(Bucket=bucket, Key=pointer.key)["Body"].read() == b"hello"
    s3.delete_object(Bucket=bucket, Key=pointer.key)
    s3.delete_bucket(Bucket=bucket)

    refused = await asyncio.to_thread(
        qworker_send, endpoint, "--queue-name", fifo, "--delay-s", "5", "x", seed="0"
    )
    assert refused.returncode == 2
    assert "nothing sent: FIFO queues take no per-message delay" in refused.stderr


async def test_an_entry_the_server_refuses_is_listed_and_the_rest_sent(
    localstack_server: Any, sqs_client: Any, queue_with_dlq: QueueMaker
) -> None:
    made = await queue_with_dlq("send")
    app = QWorker("shop")
    settings = QWorkerSettings(endpoint_url=localstack_server.endpoint_url, region="us-east-1")
    async with app.producer(settings, local=True):
        with pytest.raises(SendError) as caught:
            await app.send_batch(made.name, ["first", "bad \x00 char", "third"])
    error = caught.value
    assert [(f.index, f.code) for f in error.failed] == [(1, "InvalidMessageContents")]
    assert (error.sent, error.total) == (2, 3)
    queue = SqsTransport(sqs_client, made.url)
    bodies: list[str] = []
    async with asyncio.timeout(30):
        while len(bodies) < 2:
            bodies += [m.body for m in await queue.receive(10, wait_time_s=1)]
    assert sorted(bodies) == ["first", "third"]
