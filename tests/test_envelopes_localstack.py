"""Envelopes from the real services on LocalStack: SNS, EventBridge and S3 deliver to SQS.

Each test wires a real route into a fresh queue (an SNS topic with a subscription without raw
delivery, an EventBridge rule on a custom bus with the queue as target, a bucket notification),
makes the service deliver (`Publish` with message attributes, `PutEvents`, `PutObject`), receives
the body with a real SQS client and runs the unwrapping and decoding steps a handler's message goes
through: the handler's model and the envelope's metadata come out. The last test runs a real
`Worker` on a queue an SNS topic delivers several message types to, routed by their `type`
attribute; an unknown type is rejected to the dead-letter queue as it was received.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from botocore.config import Config
from pydantic import BaseModel

from qworker import QWorker
from qworker.envelopes import S3Event, unwrapper
from qworker.handler import HandlerSpec
from qworker.local import dead_letter_name
from qworker.message import Message
from qworker.role import Identity
from qworker.routing import TypeRouter, by_attribute, by_detail_type
from qworker.settings import QWorkerSettings
from qworker.worker import Worker

pytestmark = [pytest.mark.integration, pytest.mark.localstack]

REGION = "us-east-1"


class Order(BaseModel):
    order_id: str
    cents: int


@dataclass
class Aws:
    endpoint_url: str
    sqs: Any
    sns: Any
    events: Any
    s3: Any
    created: list[tuple[str, str]]

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION)

    def queue(self, *, dead_letter: bool = False) -> tuple[str, str]:
        """A fresh queue (with a dead-letter queue and a redrive policy): its URL and ARN."""
        name = f"env-{uuid.uuid4().hex[:10]}"
        attributes: dict[str, str] = {}
        if dead_letter:
            dlq_url = self.sqs.create_queue(QueueName=dead_letter_name(name))["QueueUrl"]
            self.created.append(("queue", dlq_url))
            dlq_arn = self.sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
                "Attributes"
            ]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}
            )
        url = self.sqs.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"]
        self.created.append(("queue", url))
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        return url, arn

    def receive(self, url: str, count: int = 1) -> list[Message]:
        """Long-poll until `count` messages arrived (each returned with every attribute)."""
        found: list[Message] = []
        for _ in range(15):  # 15 long polls of up to 2 s: the deliveries are asynchronous
            response = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=2,
                AttributeNames=["All"],
                MessageAttributeNames=["All"],
            )
            found.extend(Message.from_sqs(raw) for raw in response.get("Messages", []))
            if len(found) >= count:
                return found
        raise AssertionError(f"{len(found)} of {count} messages arrived on {url}")


@pytest.fixture
def aws(localstack_server: Any) -> Iterator[Aws]:
    endpoint = localstack_server.endpoint_url

    def client(service: str, **kwargs: Any) -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **kwargs)

    world = Aws(
        endpoint,
        sqs=client("sqs"),
        sns=client("sns"),
        events=client("events"),
        s3=client("s3", config=Config(s3={"addressing_style": "path"})),
        created=[],
    )
    yield world
    for kind, name in reversed(world.created):
        try:
            if kind == "queue":
                world.sqs.delete_queue(QueueUrl=name)
            elif kind == "topic":
                world.sns.delete_topic(TopicArn=name)
        except Exception:  # noqa: BLE001, S110 (clean-up is best effort)
            pass


def allow_to_send(aws: Aws, url: str, arn: str, service: str) -> None:
    """The queue policy a real account needs for the service to deliver (LocalStack too)."""
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": f"{service}.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": arn,
            }
        ],
    }
    aws.sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})


def topic_to_queue(aws: Aws, url: str, arn: str) -> str:
    topic = aws.sns.create_topic(Name=f"orders-{uuid.uuid4().hex[:10]}")["TopicArn"]
    aws.created.append(("topic", topic))
    allow_to_send(aws, url, arn, "sns")
    aws.sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)  # raw delivery off
    return str(topic)


def bus_to_queue(aws: Aws, url: str, arn: str) -> str:
    bus = f"orders-{uuid.uuid4().hex[:10]}"
    aws.events.create_event_bus(Name=bus)
    allow_to_send(aws, url, arn, "events")
    aws.events.put_rule(
        Name="to-queue",
        EventBusName=bus,
        EventPattern=json.dumps({"source": ["com.example.orders"]}),
    )
    aws.events.put_targets(Rule="to-queue", EventBusName=bus, Targets=[{"Id": "q", "Arn": arn}])
    return bus


def handle_spec(body_type: Any) -> HandlerSpec:
    async def handle(body: object, message: Message) -> None:
        del body, message

    handle.__annotations__ = {"body": body_type, "message": Message, "return": None}
    return HandlerSpec.from_function(handle)


def as_handler_sees(body_type: Any, received: Message, mode: Any = "auto") -> tuple[Message, Any]:
    """The message and argument the handler gets: unwrapped, then decoded."""
    step = unwrapper(body_type, mode)
    seen = step(received) if step is not None else received
    return seen, handle_spec(body_type).decode(seen)


def publish_order(aws: Aws, topic: str, order: Order, order_type: str) -> str:
    response = aws.sns.publish(
        TopicArn=topic,
        Message=order.model_dump_json(),
        Subject="order",
        MessageAttributes={
            "type": {"DataType": "String", "StringValue": order_type},
            "tenant": {"DataType": "String", "StringValue": "acme"},
        },
    )
    return str(response["MessageId"])


def put_order_event(aws: Aws, bus: str, order: Order, detail_type: str) -> None:
    response = aws.events.put_events(
        Entries=[
            {
                "EventBusName": bus,
                "Source": "com.example.orders",
                "DetailType": detail_type,
                "Detail": order.model_dump_json(),
                "Resources": ["arn:aws:example:us-east-1:000000000000:shop/1"],
            }
        ]
    )
    assert response["FailedEntryCount"] == 0, response


def test_sns_notification_unwraps_to_the_model_with_its_metadata(aws: Aws) -> None:
    url, arn = aws.queue()
    topic = topic_to_queue(aws, url, arn)
    order = Order(order_id="o-sns", cents=1250)
    sns_id = publish_order(aws, topic, order, "OrderPlaced")

    (received,) = aws.receive(url)
    assert json.loads(received.body)["Type"] == "Notification"  # the real, wrapped body
    seen, decoded = as_handler_sees(Order, received)

    assert decoded == order
    assert seen.envelope is not None
    sns = seen.envelope.sns
    assert sns is not None
    assert sns.topic_arn == topic
    assert sns.message_id == sns_id
    assert sns.subject == "order"
    assert sns.timestamp is not None
    assert sns.attribute("type") == "OrderPlaced"
    assert sns.attribute("tenant") == "acme"
    assert seen.message_id == received.message_id
    assert seen.receipt_handle == received.receipt_handle
    assert seen.envelope.raw_body == received.body


def test_eventbridge_event_unwraps_its_detail_with_its_metadata(aws: Aws) -> None:
    url, arn = aws.queue()
    bus = bus_to_queue(aws, url, arn)
    order = Order(order_id="o-eb", cents=99)
    put_order_event(aws, bus, order, "OrderPlaced")

    (received,) = aws.receive(url)
    assert json.loads(received.body)["detail-type"] == "OrderPlaced"
    seen, decoded = as_handler_sees(Order, received)

    assert decoded == order
    assert seen.envelope is not None
    event = seen.envelope.eventbridge
    assert event is not None
    assert event.source == "com.example.orders"
    assert event.detail_type == "OrderPlaced"
    assert event.resources == ("arn:aws:example:us-east-1:000000000000:shop/1",)
    assert event.time is not None
    assert event.id == json.loads(received.body)["id"]
    assert seen.envelope.sns is None


def test_s3_notification_of_a_put_object_is_an_s3_event(aws: Aws) -> None:
    url, arn = aws.queue()
    bucket = f"uploads-{uuid.uuid4().hex[:10]}"
    aws.s3.create_bucket(Bucket=bucket)
    allow_to_send(aws, url, arn, "s3")
    aws.s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    key = "in/report 2026+v1.csv"
    content = b"a,b\n1,2\n"
    etag = aws.s3.put_object(Bucket=bucket, Key=key, Body=content)["ETag"].strip('"')

    events: list[S3Event] = []
    while not any(e.records for e in events):
        for received in aws.receive(url):
            _, event = as_handler_sees(S3Event, received)
            assert isinstance(event, S3Event)
            events.append(event)
    tests = [e for e in events if e.test_event]
    assert all(e.test_bucket == bucket for e in tests)  # S3 may send s3:TestEvent first
    (record,) = next(e for e in events if e.records).records
    assert record.bucket == bucket
    assert record.key == key  # URL-decoded
    assert record.size == len(content)
    assert record.etag == etag
    assert record.event_name.startswith("ObjectCreated:")
    aws.s3.delete_object(Bucket=bucket, Key=key)
    aws.s3.delete_bucket(Bucket=bucket)


def test_eventbridge_events_are_routed_by_detail_type(aws: Aws) -> None:
    url, arn = aws.queue()
    bus = bus_to_queue(aws, url, arn)
    router = TypeRouter(by_detail_type())
    seen: list[tuple[str, Order, str]] = []

    @router.route("OrderPlaced")
    async def placed(order: Order, message: Message) -> None:
        assert message.envelope is not None
        assert message.envelope.eventbridge is not None
        seen.append(("placed", order, message.envelope.eventbridge.source))

    @router.route("OrderShipped")
    def shipped(order: Order) -> None:  # a sync route runs in a worker thread
        seen.append(("shipped", order, ""))

    put_order_event(aws, bus, Order(order_id="o-1", cents=1), "OrderPlaced")
    put_order_event(aws, bus, Order(order_id="o-2", cents=2), "OrderShipped")
    received = aws.receive(url, 2)
    assert sorted(router.message_type(m) for m in received) == ["OrderPlaced", "OrderShipped"]

    async def run_all() -> None:
        for message in received:
            await router.dispatch(message)

    asyncio.run(run_all())
    assert sorted(seen, key=lambda s: s[0]) == [
        ("placed", Order(order_id="o-1", cents=1), "com.example.orders"),
        ("shipped", Order(order_id="o-2", cents=2), ""),
    ]


async def test_a_worker_routes_sns_notifications_by_their_type_attribute(aws: Aws) -> None:
    url, arn = aws.queue(dead_letter=True)
    topic = topic_to_queue(aws, url, arn)
    seen: dict[str, tuple[Order, str | None]] = {}
    done = asyncio.Event()
    router = TypeRouter(by_attribute("type"))

    @router.route("OrderPlaced")
    async def placed(order: Order, message: Message) -> None:
        assert message.envelope is not None
        assert message.envelope.sns is not None
        seen["placed"] = (order, message.envelope.sns.attribute("tenant"))
        if len(seen) == 2:
            done.set()

    @router.route("OrderCancelled")
    async def cancelled(order: Order) -> None:
        seen["cancelled"] = (order, None)
        if len(seen) == 2:
            done.set()

    app = QWorker("envelopes")
    app.handler(queue_name(url))(router.handle)
    publish_order(aws, topic, Order(order_id="o-0", cents=0), "Refunded")  # no route
    publish_order(aws, topic, Order(order_id="o-1", cents=1), "OrderPlaced")
    publish_order(aws, topic, Order(order_id="o-2", cents=2), "OrderCancelled")

    settings = QWorkerSettings(endpoint_url=aws.endpoint_url, region=REGION, wait_time_s=1)
    worker = Worker(app, settings, identity=Identity(service="envelopes"), local=True)
    run = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(60):
            await done.wait()
        # The unknown type is rejected: its dead-letter copy is the body as received.
        (dead,) = await asyncio.to_thread(aws.receive, dead_letter_url(aws, url))
    finally:
        worker.stop()
        async with asyncio.timeout(60):
            await run
    assert seen == {
        "placed": (Order(order_id="o-1", cents=1), "acme"),
        "cancelled": (Order(order_id="o-2", cents=2), None),
    }
    assert json.loads(dead.body)["Type"] == "Notification"
    assert json.loads(json.loads(dead.body)["Message"])["order_id"] == "o-0"
    reason = dead.attribute("qworker.reject_reason") or ""
    assert "unknown message type 'Refunded'" in reason
    assert "OrderPlaced, OrderCancelled" in reason
    attributes = aws.sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }  # deleted after their handlers succeeded (and the rejected one after its copy)


def queue_name(url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


def dead_letter_url(aws: Aws, url: str) -> str:
    return str(aws.sqs.get_queue_url(QueueName=dead_letter_name(queue_name(url)))["QueueUrl"])
