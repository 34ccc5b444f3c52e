"""Large payloads, unit level: the pointer format, sizes, the producer's offload and the consumer's
fetch and delete, on the fake queue with an in-memory S3 that raises botocore's own errors.

The LocalStack tests (tests/test_payloads_localstack.py) run the same paths against a real bucket
and the extended clients.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, Self

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from pydantic import BaseModel

from qworker.consumer import Consumer
from qworker.dispatch import Dispatcher
from qworker.exceptions import BadRequest, MessageDecodeError
from qworker.handler import HandlerSpec
from qworker.message import Message, MessageAttribute
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
from qworker.payload_resolver import PayloadResolver
from qworker.payloads import (
    LEGACY_SIZE_ATTRIBUTE,
    SIZE_ATTRIBUTE,
    PayloadNotFound,
    PayloadStore,
    PayloadUnavailable,
    S3Pointer,
    message_size,
    pointer_of,
)
from qworker.producer import Producer, SendError, deduplication_id
from qworker.role import Identity
from qworker.settle import Settler
from qworker.testing import FakeQueueTransport, FakeSqs
from qworker.transport import QueueTransport

JAVA_BODY = (
    '["software.amazon.payloadoffloading.PayloadS3Pointer",'
    '{"s3BucketName":"my-bucket","s3Key":"1f2e3d4c-aaaa-bbbb-cccc-000011112222"}]'
)


class Doc(BaseModel):
    text: str


class Body:
    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    async def read(self) -> bytes:
        return self.data


class MemoryS3:
    """The few S3 calls the store makes, failing as botocore fails."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.down = False

    def _check(self, operation: str) -> None:
        if self.down:
            raise EndpointConnectionError(endpoint_url=f"http://s3.invalid/{operation}")

    async def put_object(self, *, Bucket: str, Key: str, Body: bytes) -> None:  # noqa: N803
        self._check("PutObject")
        self.objects[Bucket, Key] = Body

    async def get_object(self, *, Bucket: str, Key: str) -> dict[str, Any]:  # noqa: N803
        self._check("GetObject")
        if (Bucket, Key) not in self.objects:
            error = {"Error": {"Code": "NoSuchKey", "Message": "The specified key does not exist."}}
            raise ClientError(error, "GetObject")
        return {"Body": Body(self.objects[Bucket, Key])}

    async def delete_object(self, *, Bucket: str, Key: str) -> None:  # noqa: N803
        self._check("DeleteObject")
        self.objects.pop((Bucket, Key), None)


def store_over(s3: MemoryS3, **options: Any) -> PayloadStore:
    @contextlib.asynccontextmanager
    async def open_client() -> AsyncIterator[MemoryS3]:
        yield s3

    return PayloadStore(open_client, **options)


def producer_for(queue: QueueTransport, store: PayloadStore) -> Producer:
    async def lookup(_: str) -> QueueTransport:
        return queue

    return Producer(lookup, payloads=store)


# -- the format ------------------------------------------------------------------------------------


def test_the_pointer_body_is_exactly_the_java_clients() -> None:
    pointer = S3Pointer("my-bucket", "1f2e3d4c-aaaa-bbbb-cccc-000011112222")
    assert pointer.to_body() == JAVA_BODY
    assert S3Pointer.from_body(JAVA_BODY) == pointer
    assert str(pointer) == "s3://my-bucket/1f2e3d4c-aaaa-bbbb-cccc-000011112222"


def test_pointers_of_the_python_client_and_the_legacy_class_parse() -> None:
    spaced = json.dumps(
        ["software.amazon.payloadoffloading.PayloadS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]
    )
    legacy = json.dumps(
        ["com.amazon.sqs.javamessaging.MessageS3Pointer", {"s3BucketName": "b", "s3Key": "k"}]
    )
    assert S3Pointer.from_body(spaced) == S3Pointer("b", "k")
    assert S3Pointer.from_body(legacy) == S3Pointer("b", "k")


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "{}",
        '["software.amazon.payloadoffloading.PayloadS3Pointer"]',
        '["some.other.Class",{"s3BucketName":"b","s3Key":"k"}]',
        '["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b"}]',
        '["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"","s3Key":"k"}]',
    ],
)
def test_a_marked_message_whose_body_is_no_pointer_cannot_be_decoded(body: str) -> None:
    with pytest.raises(MessageDecodeError, match="not an S3 pointer"):
        S3Pointer.from_body(body)


def test_only_a_marked_message_is_a_pointer() -> None:
    size = MessageAttribute("Number", "10")
    plain = Message("m", "r", JAVA_BODY)
    assert pointer_of(plain) is None  # a body that merely looks like one is left alone
    for name in (SIZE_ATTRIBUTE, LEGACY_SIZE_ATTRIBUTE):
        marked = Message("m", "r", JAVA_BODY, message_attributes={name: size})
        assert pointer_of(marked) == S3Pointer.from_body(JAVA_BODY)


def test_message_size_counts_body_and_attributes_in_bytes() -> None:
    attributes = {
        "tenant": MessageAttribute("String", "t-1"),
        "b": MessageAttribute("Binary", b"12"),
    }
    assert message_size("ü", attributes) == 2 + len("tenantStringt-1") + len("bBinary") + 2


def test_offload_decision() -> None:
    s3 = MemoryS3()
    assert not store_over(s3).offloads(10**9)  # no bucket: never
    store = store_over(s3, bucket="b", threshold_bytes=100)
    assert not store.offloads(100)
    assert store.offloads(101)
    assert store_over(s3, bucket="b", always=True).offloads(1)


# -- the producer ----------------------------------------------------------------------------------


async def test_the_producer_offloads_what_is_over_the_threshold() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    producer = producer_for(queue, store_over(s3, bucket="docs-bucket", threshold_bytes=1000))
    big, small = Doc(text="é" * 1000), Doc(text="short")
    await producer.send_batch("docs", [big, small])
    offloaded, inline = queue.messages
    pointer = S3Pointer.from_body(offloaded.body)
    payload = big.model_dump_json().encode()
    assert s3.objects == {("docs-bucket", pointer.key): payload}
    assert offloaded.message_attributes[SIZE_ATTRIBUTE] == MessageAttribute(
        "Number", str(len(payload))
    )
    assert inline.body == small.model_dump_json()
    assert SIZE_ATTRIBUTE not in inline.message_attributes


async def test_fifo_deduplication_follows_the_payload_not_its_pointer() -> None:
    s3 = MemoryS3()
    fifo = FakeSqs().create_queue("docs.fifo")
    producer = producer_for(fifo, store_over(s3, bucket="b", always=True))
    await producer.send("docs.fifo", "the payload")
    (stored,) = fifo.messages
    assert stored.deduplication_id == deduplication_id("the payload")


async def test_a_message_with_no_attribute_left_for_the_size_is_refused() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    producer = producer_for(queue, store_over(s3, bucket="b", always=True))
    with pytest.raises(ValueError, match="at most 9"):
        await producer.send("docs", "x", attributes={f"a{i}": "v" for i in range(10)})
    assert s3.objects == {}
    assert queue.messages == []


@pytest.mark.parametrize("name", [SIZE_ATTRIBUTE, LEGACY_SIZE_ATTRIBUTE])
async def test_the_marking_attributes_are_reserved(name: str) -> None:
    queue = FakeSqs().create_queue("docs")
    producer = producer_for(queue, store_over(MemoryS3()))
    with pytest.raises(ValueError, match=f"{name} is reserved"):
        await producer.send("docs", "x", attributes={name: 10})
    assert queue.messages == []


async def test_an_s3_outage_while_offloading_sends_nothing_and_leaves_nothing() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    producer = producer_for(queue, store_over(s3, bucket="b", always=True))
    puts = 0
    put = s3.put_object

    async def put_twice_then_fail(**kwargs: Any) -> None:
        nonlocal puts
        puts += 1
        s3.down = puts > 2  # the third put fails
        try:
            await put(**kwargs)
        finally:
            s3.down = False

    s3.put_object = put_twice_then_fail  # type: ignore[method-assign]
    with pytest.raises(PayloadUnavailable, match="PutObject"):
        await producer.send_batch("docs", ["a", "b", "c", "d"])
    assert puts == 3
    assert s3.objects == {}
    assert queue.messages == []


async def test_a_message_not_sent_leaves_no_object_behind() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    queue.fail_next("send_batch", BadRequest("SendMessageBatch: InvalidParameterValue"))
    producer = producer_for(queue, store_over(s3, bucket="b", always=True))
    with pytest.raises(SendError):
        await producer.send("docs", "x")
    assert s3.objects == {}


# -- the consumer ----------------------------------------------------------------------------------


def consumer_with(
    queue: FakeQueueTransport, resolver: PayloadResolver, handler: Any, records: list[OutcomeRecord]
) -> Consumer:
    class Sink:
        def record(self, record: OutcomeRecord) -> None:
            records.append(record)

    spec = HandlerSpec.from_function(handler, queue=queue.queue_name)
    dispatcher = Dispatcher(
        spec, queue=queue.queue_name, identity=Identity(service="t"), body=resolver.resolve
    )
    settler = Settler(queue, retry_policy=RetryPolicy(base_s=0, max_s=0))
    return Consumer(
        queue, dispatcher, visibility_timeout_s=30, settler=settler, sinks=[Sink(), resolver]
    )


def put_pointer(s3: MemoryS3, queue: FakeQueueTransport, key: str, payload: str) -> None:
    s3.objects["b", key] = payload.encode()
    queue.put(S3Pointer("b", key).to_body(), attributes={SIZE_ATTRIBUTE: str(len(payload))})


async def test_the_handler_sees_the_payload_and_the_object_goes_after_success() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    put_pointer(s3, queue, "k1", Doc(text="big").model_dump_json())
    resolver = PayloadResolver(store_over(s3))
    seen: list[tuple[Doc, str]] = []
    records: list[OutcomeRecord] = []

    async def handle(doc: Doc, message: Message) -> None:
        seen.append((doc, message.body))

    await consumer_with(queue, resolver, handle, records).run_until_empty()
    await resolver.wait_deletes()
    assert seen == [(Doc(text="big"), '{"text":"big"}')]
    assert [r.outcome for r in records] == [Outcome.SUCCEEDED]
    assert s3.objects == {}
    assert resolver.deleted == 1


async def test_failures_keep_the_object_for_the_next_delivery() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    put_pointer(s3, queue, "k1", '{"text": "x"}')
    resolver = PayloadResolver(store_over(s3))
    calls: list[int] = []
    records: list[OutcomeRecord] = []

    async def handle(doc: Doc, message: Message) -> None:
        calls.append(message.receive_count)
        if message.receive_count < 3:
            raise RuntimeError("not yet")

    await consumer_with(queue, resolver, handle, records).run_until_empty()
    await resolver.wait_deletes()
    assert calls == [1, 2, 3]
    assert [r.outcome for r in records] == [Outcome.FAILED, Outcome.FAILED, Outcome.SUCCEEDED]
    assert s3.objects == {}


async def test_keep_never_deletes() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    put_pointer(s3, queue, "k1", '{"text": "x"}')
    resolver = PayloadResolver(store_over(s3), keep=True)

    async def handle(doc: Doc) -> None:
        pass

    await consumer_with(queue, resolver, handle, []).run_until_empty()
    await resolver.wait_deletes()
    assert set(s3.objects) == {("b", "k1")}


async def test_an_s3_outage_fails_the_message_and_a_missing_object_rejects_it() -> None:
    s3 = MemoryS3()
    queue = FakeSqs().create_queue("docs")
    put_pointer(s3, queue, "k1", '{"text": "x"}')
    resolver = PayloadResolver(store_over(s3))
    message = (await queue.receive(1, wait_time_s=0))[0]
    calls: list[Doc] = []

    async def handle(doc: Doc) -> None:
        calls.append(doc)

    dispatcher = Dispatcher(
        HandlerSpec.from_function(handle, queue="docs"),
        queue="docs",
        identity=Identity(service="t"),
        body=resolver.resolve,
    )
    s3.down = True
    failed = await dispatcher(message)
    assert failed.outcome is Outcome.FAILED
    assert str(failed.error).startswith("PayloadUnavailable: GetObject s3://b/k1")
    s3.down = False
    s3.objects.clear()
    rejected = await dispatcher(message)
    assert rejected.outcome is Outcome.REJECTED
    assert "large payload s3://b/k1 not found" in str(rejected.error)
    assert calls == []
    with pytest.raises(PayloadNotFound):
        await resolver.store.get(S3Pointer("b", "k1"))
