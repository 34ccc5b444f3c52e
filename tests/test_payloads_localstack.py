"""Large payloads through LocalStack's S3: a real worker, our producer, the extended clients.

Messages come from three senders: qworker's producer, a body written byte for byte the way the Java
extended client writes it (its object put with boto3), and the AWS SQS Extended Client for Python
itself. Each reaches a real `Worker`'s handler as the payload. The objects are checked in the
bucket: deleted after a confirmed success, kept after a failure, a retry or a rejection (whose
dead-letter copy points to the same object), and kept with `payload_keep`.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from pydantic import BaseModel

from qworker import Message, QWorker, Reject, Retry
from qworker.exceptions import ConfigError
from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.payloads import LEGACY_SIZE_ATTRIBUTE, POINTER_CLASS, SIZE_ATTRIBUTE
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.localstack]

BIG = 300 * 1024  # over the 256 KiB threshold


class Document(BaseModel):
    doc_id: str
    text: str


def document(doc_id: str, size: int = BIG) -> Document:
    return Document(doc_id=doc_id, text="x" * size)


@dataclass
class World:
    endpoint_url: str
    s3: Any
    sqs: Any
    bucket: str
    queue: str
    queue_url: str

    def keys(self) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.bucket)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def settings(self, **overrides: Any) -> QWorkerSettings:
        return QWorkerSettings(
            endpoint_url=self.endpoint_url,
            region="us-east-1",
            wait_time_s=1,
            retry_base_s=0,
            retry_max_s=0,
            payload_bucket=self.bucket,
            **overrides,
        )


@pytest.fixture
async def world(localstack_server: Any, sqs_client: Any) -> AsyncIterator[World]:
    endpoint = localstack_server.endpoint_url
    config = Config(s3={"addressing_style": "path"})
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config)
    sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
    bucket = f"payloads-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    name = f"payloads-{uuid.uuid4().hex[:8]}"
    url = await create_queue_with_dlq(sqs_client, name, max_receive_count=3)
    made = World(endpoint, s3, sqs, bucket, name, url)
    yield made
    for key in made.keys():  # noqa: SIM118 (a method, not a dict)
        s3.delete_object(Bucket=bucket, Key=key)
    s3.delete_bucket(Bucket=bucket)
    for queue in (name, dead_letter_name(name)):
        sqs.delete_queue(QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"])


async def run_until(
    app: QWorker, settings: QWorkerSettings, done: asyncio.Event, *, timeout_s: float = 60
) -> Worker:
    """Run a real worker until `done`, then stop it (its payload deletes finish on the way out)."""
    worker = Worker(app, settings, identity=Identity(service="payloads"), local=True)
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(timeout_s):
            await done.wait()
    finally:
        worker.stop()
        async with asyncio.timeout(60):
            await run
    return worker


def collector(app: QWorker, queue: str, expected: int) -> tuple[list[Document], asyncio.Event]:
    seen: list[Document] = []
    done = asyncio.Event()

    @app.handler(queue)
    async def handle(doc: Document) -> None:
        seen.append(doc)
        if len(seen) == expected:
            done.set()

    return seen, done


def java_pointer(bucket: str, key: str) -> str:
    """The body exactly as the Java client's PayloadS3Pointer.toJson() writes it."""
    return (
        '["software.amazon.payloadoffloading.PayloadS3Pointer",'
        f'{{"s3BucketName":"{bucket}","s3Key":"{key}"}}]'
    )


async def test_our_producer_to_our_worker_deletes_the_object_after_success(world: World) -> None:
    app = QWorker("payloads")
    seen, done = collector(app, world.queue, 2)
    async with app.producer(world.settings(), local=True):
        await app.send(world.queue, document("big"))
        await app.send(world.queue, document("small", 10))
    assert len(world.keys()) == 1  # only the large one went through S3
    worker = await run_until(app, world.settings(), done)
    assert sorted((d.doc_id, len(d.text)) for d in seen) == [("big", BIG), ("small", 10)]
    assert worker.payloads.deleted == 1
    assert world.keys() == []


async def test_a_body_written_as_the_java_client_writes_it_reaches_the_handler(
    world: World,
) -> None:
    payloads = {"java": document("java"), "legacy": document("legacy", 1000)}
    java_key, legacy_key = str(uuid.uuid4()), str(uuid.uuid4())
    for key, doc in ((java_key, payloads["java"]), (legacy_key, payloads["legacy"])):
        world.s3.put_object(Bucket=world.bucket, Key=key, Body=doc.model_dump_json().encode())
    java_size = len(payloads["java"].model_dump_json().encode())
    world.sqs.send_message(
        QueueUrl=world.queue_url,
        MessageBody=java_pointer(world.bucket, java_key),
        MessageAttributes={
            "ExtendedPayloadSize": {"DataType": "Number", "StringValue": str(java_size)}
        },
    )
    # An older client: the legacy class and attribute, and Python's json.dumps spacing.
    legacy_body = json.dumps(
        [
            "com.amazon.sqs.javamessaging.MessageS3Pointer",
            {"s3BucketName": world.bucket, "s3Key": legacy_key},
        ]
    )
    world.sqs.send_message(
        QueueUrl=world.queue_url,
        MessageBody=legacy_body,
        MessageAttributes={LEGACY_SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": "1"}},
    )
    app = QWorker("payloads")
    seen, done = collector(app, world.queue, 2)
    await run_until(app, world.settings(), done)
    assert sorted(seen, key=lambda d: d.doc_id) == [payloads["java"], payloads["legacy"]]
    assert world.keys() == []


EXTENDED_CLIENT = """
import sys

import boto3
from botocore.config import Config
from sqs_extended_client import SQSExtendedClientSession  # replaces boto3's Session: own process

mode, endpoint, queue_url, bucket = sys.argv[1:5]
client = SQSExtendedClientSession(region_name="us-east-1").client("sqs", endpoint_url=endpoint)
# It builds its S3 client without the endpoint: point it at the same server.
client.s3_client = boto3.client(
    "s3", endpoint_url=endpoint, region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}),
)
client.large_payload_support = bucket
client.delete_payload_from_s3 = True
if mode == "send":
    client.send_message(QueueUrl=queue_url, MessageBody=sys.stdin.read())
else:
    message = client.receive_message(
        QueueUrl=queue_url, MessageAttributeNames=["All"], WaitTimeSeconds=10
    )["Messages"][0]
    client.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    sys.stdout.write(message["Body"])
"""


async def extended_client(
    world: World, mode: str, body: str = "", *, queue_url: str | None = None
) -> str:
    """Run the AWS SQS Extended Client for Python (in its own process: importing it patches boto3).

    `send` sends `body` with large-payload support on; `receive` receives one message, deletes
    it (and, as configured, its S3 object) and returns the body the client returns.
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        EXTENDED_CLIENT,
        mode,
        world.endpoint_url,
        queue_url or world.queue_url,
        world.bucket,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
    )
    async with asyncio.timeout(120):
        out, err = await process.communicate(body.encode())
    assert process.returncode == 0, err.decode()
    return out.decode()


async def test_the_python_extended_client_and_qworker_read_each_others_messages(
    world: World,
) -> None:
    theirs = document("theirs")
    await extended_client(world, "send", theirs.model_dump_json())
    assert len(world.keys()) == 1
    app = QWorker("payloads")
    seen, done = collector(app, world.queue, 1)
    await run_until(app, world.settings(), done)
    assert seen == [theirs]
    assert world.keys() == []

    # A queue no stopped worker's long poll may still be waiting on.
    other = f"{world.queue}-other"
    other_url = world.sqs.create_queue(QueueName=other)["QueueUrl"]
    ours = document("ours")
    async with app.producer(world.settings(), local=True) as producer:
        await producer.send(other, ours)
    (key,) = world.keys()
    raw = world.sqs.receive_message(
        QueueUrl=other_url,
        MessageAttributeNames=["All"],
        VisibilityTimeout=0,
        WaitTimeSeconds=5,
    )["Messages"][0]
    pointer = json.loads(raw["Body"])
    assert pointer == [POINTER_CLASS, {"s3BucketName": world.bucket, "s3Key": key}]
    size = raw["MessageAttributes"][SIZE_ATTRIBUTE]
    assert size == {"DataType": "Number", "StringValue": str(len(ours.model_dump_json()))}
    body = await extended_client(world, "receive", queue_url=other_url)
    world.sqs.delete_queue(QueueUrl=other_url)
    assert Document.model_validate_json(body) == ours
    assert world.keys() == []  # the extended client deleted it, following our pointer


async def test_objects_are_kept_until_success_and_for_a_dead_letter_copy(world: World) -> None:
    app = QWorker("payloads")
    attempts: dict[str, int] = {}
    done = asyncio.Event()
    settled: list[str] = []

    @app.handler(world.queue)
    async def handle(doc: Document, message: Message) -> None:
        attempts[doc.doc_id] = message.receive_count
        if doc.doc_id == "fails-once" and message.receive_count == 1:
            raise RuntimeError("downstream busy")
        if doc.doc_id == "retried" and message.receive_count == 1:
            raise Retry(delay_s=0)
        if doc.doc_id == "rejected":
            settled.append("rejected")
            raise Reject("not ours")
        settled.append(doc.doc_id)
        if len(settled) == 3:
            done.set()

    async with app.producer(world.settings(), local=True) as producer:
        await producer.send_batch(
            world.queue, [document("fails-once"), document("retried"), document("rejected")]
        )
    assert len(world.keys()) == 3
    await run_until(app, world.settings(), done)
    assert attempts == {"fails-once": 2, "retried": 2, "rejected": 1}
    # The rejected message's copy in the dead-letter queue still points to its object.
    (key,) = world.keys()
    dlq_url = world.sqs.get_queue_url(QueueName=dead_letter_name(world.queue))["QueueUrl"]
    dead = world.sqs.receive_message(
        QueueUrl=dlq_url, MessageAttributeNames=["All"], WaitTimeSeconds=5
    )["Messages"]
    assert json.loads(dead[0]["Body"])[1]["s3Key"] == key
    assert SIZE_ATTRIBUTE in dead[0]["MessageAttributes"]  # a redrive fetches it again
    body = world.s3.get_object(Bucket=world.bucket, Key=key)["Body"].read()
    assert Document.model_validate_json(body).doc_id == "rejected"


async def test_payload_keep_leaves_the_objects(world: World) -> None:
    app = QWorker("payloads")
    seen, done = collector(app, world.queue, 2)
    async with app.producer(world.settings(), local=True) as producer:
        await producer.send_batch(world.queue, [document("a"), document("b")])
    keys = world.keys()
    worker = await run_until(app, world.settings(payload_keep=True), done)
    assert len(seen) == 2
    assert worker.payloads.deleted == 0
    assert world.keys() == keys


async def test_a_pointer_to_a_missing_object_is_rejected_naming_it(world: World) -> None:
    key = f"gone-{uuid.uuid4()}"
    world.sqs.send_message(
        QueueUrl=world.queue_url,
        MessageBody=java_pointer(world.bucket, key),
        MessageAttributes={SIZE_ATTRIBUTE: {"DataType": "Number", "StringValue": "10"}},
    )
    app = QWorker("payloads")
    collector(app, world.queue, 1)
    worker = Worker(app, world.settings(), identity=Identity(service="payloads"), local=True)
    run = asyncio.create_task(worker.run())
    dlq_url = world.sqs.get_queue_url(QueueName=dead_letter_name(world.queue))["QueueUrl"]
    try:
        dead: list[dict[str, Any]] = []
        async with asyncio.timeout(60):
            while not dead:
                response = await asyncio.to_thread(
                    world.sqs.receive_message,
                    QueueUrl=dlq_url,
                    MessageAttributeNames=["All"],
                    WaitTimeSeconds=1,
                )
                dead = response.get("Messages", [])
    finally:
        worker.stop()
        async with asyncio.timeout(60):
            await run
    reason = dead[0]["MessageAttributes"]["qworker.reject_reason"]["StringValue"]
    assert f"s3://{world.bucket}/{key} not found" in reason
    assert worker.statistics()[world.queue].rejected == 1


async def test_a_payload_bucket_that_does_not_exist_stops_the_start_naming_it(
    world: World,
) -> None:
    app = QWorker("payloads")
    collector(app, world.queue, 1)
    settings = world.settings().model_copy(update={"payload_bucket": "no-such-bucket-here"})
    worker = Worker(app, settings, identity=Identity(service="payloads"), local=True)
    with pytest.raises(ConfigError, match="QWORKER_PAYLOAD_BUCKET") as caught:
        async with asyncio.timeout(60):
            await worker.run()
    assert "'no-such-bucket-here'" in str(caught.value)
    assert not worker.ready.is_set()
