"""Envelopes on hand-built bodies: SNS notifications, EventBridge events, S3 notifications.

The unwrapping step (`qworker.envelopes.unwrapper`) turns the message as received into the one the
handler's spec decodes; these tests run both steps, as the dispatcher does, and check the payload,
the metadata on `Message.envelope`, what is left alone (a plain body, a body the handler's model
takes as it is) and what is rejected (an explicit mode the body does not match). The bodies are
shaped as AWS documents them; `test_envelopes_localstack.py` receives real ones.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from qworker.envelopes import (
    S3Event,
    check_mode,
    unwrap,
    unwrapper,
)
from qworker.exceptions import HandlerSignatureError, MessageDecodeError
from qworker.handler import HandlerSpec
from qworker.message import Message, MessageAttribute

TOPIC = "arn:aws:sns:us-east-1:000000000000:orders"


class Order(BaseModel):
    order_id: str
    cents: int


class Loose(BaseModel):
    """A model every JSON object validates: auto must leave an envelope-shaped body to it."""

    Type: str | None = None


def sns_body(message: str, **extra: Any) -> str:
    body = {
        "Type": "Notification",
        "MessageId": "6f0e5a4c-0000-4000-8000-000000000001",
        "TopicArn": TOPIC,
        "Message": message,
        "Timestamp": "2026-12-05T06:30:00.123Z",
        "SignatureVersion": "1",
        "Signature": "EXAMPLEpH+..",
        "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem",
        "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe",
    }
    body.update(extra)
    return json.dumps(body)


def event_body(detail: object, detail_type: str = "OrderPlaced") -> str:
    return json.dumps(
        {
            "version": "0",
            "id": "ev-1",
            "detail-type": detail_type,
            "source": "com.example.orders",
            "account": "000000000000",
            "time": "2026-12-05T06:31:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:example:us-east-1:000000000000:thing/1"],
            "detail": detail,
        }
    )


def s3_body(key: str = "in/a+b%2Bc.csv", event: str = "ObjectCreated:Put") -> str:
    return json.dumps(
        {
            "Records": [
                {
                    "eventVersion": "2.1",
                    "eventSource": "aws:s3",
                    "awsRegion": "us-east-1",
                    "eventTime": "2026-12-05T06:32:00.000Z",
                    "eventName": event,
                    "s3": {
                        "s3SchemaVersion": "1.0",
                        "configurationId": "uploads",
                        "bucket": {"name": "uploads", "arn": "arn:aws:s3:::uploads"},
                        "object": {"key": key, "size": 42, "eTag": "abc123", "sequencer": "0A"},
                    },
                }
            ]
        }
    )


def message(body: str) -> Message:
    return Message("m-1", "rh-1", body, {"ApproximateReceiveCount": "1"})


def handler_for(body_type: Any) -> HandlerSpec:
    async def handle(body: object) -> None:
        del body

    handle.__annotations__ = {"body": body_type, "return": None}
    return HandlerSpec.from_function(handle)


def decode(body_type: Any, received: Message, mode: Any = "auto") -> tuple[Message, object]:
    step = unwrapper(body_type, mode)
    seen = step(received) if step is not None else received
    return seen, handler_for(body_type).decode(seen)


ORDER = '{"order_id": "o-1", "cents": 250}'


def test_a_plain_body_is_left_as_it_is() -> None:
    received = message(ORDER)
    seen, order = decode(Order, received)
    assert seen is received
    assert seen.envelope is None
    assert order == Order(order_id="o-1", cents=250)


def test_an_sns_notification_gives_the_model_and_its_metadata() -> None:
    attrs = {
        "type": {"Type": "String", "Value": "OrderPlaced"},
        "blob": {"Type": "Binary", "Value": base64.b64encode(b"\x00\x01").decode()},
    }
    received = message(sns_body(ORDER, Subject="new order", MessageAttributes=attrs))
    seen, order = decode(Order, received)
    assert order == Order(order_id="o-1", cents=250)
    assert seen.body == ORDER
    assert seen.message_id == received.message_id
    assert seen.receipt_handle == received.receipt_handle
    assert seen.envelope is not None
    assert seen.envelope.raw_body == received.body
    sns = seen.envelope.sns
    assert sns is not None
    assert sns.topic_arn == TOPIC
    assert sns.message_id == "6f0e5a4c-0000-4000-8000-000000000001"
    assert sns.subject == "new order"
    assert sns.timestamp == datetime(2026, 12, 5, 6, 30, 0, 123000, tzinfo=UTC)
    assert sns.attribute("type") == "OrderPlaced"
    assert sns.message_attributes["blob"] == MessageAttribute("Binary", b"\x00\x01")
    assert seen.envelope.eventbridge is None


def test_an_eventbridge_event_gives_its_detail() -> None:
    received = message(event_body({"order_id": "o-2", "cents": 5}))
    seen, order = decode(Order, received)
    assert order == Order(order_id="o-2", cents=5)
    assert seen.envelope is not None
    event = seen.envelope.eventbridge
    assert event is not None
    assert (event.id, event.source, event.detail_type) == (
        "ev-1",
        "com.example.orders",
        "OrderPlaced",
    )
    assert event.time == datetime(2026, 12, 5, 6, 31, tzinfo=UTC)
    assert event.resources == ("arn:aws:example:us-east-1:000000000000:thing/1",)
    assert (event.account, event.region, event.version) == ("000000000000", "us-east-1", "0")


def test_an_eventbridge_event_through_sns_is_unwrapped_twice() -> None:
    received = message(sns_body(event_body({"order_id": "o-3", "cents": 1})))
    seen, order = decode(Order, received)
    assert order == Order(order_id="o-3", cents=1)
    assert seen.envelope is not None
    assert seen.envelope.sns is not None
    assert seen.envelope.eventbridge is not None
    assert seen.envelope.eventbridge.detail_type == "OrderPlaced"


def test_auto_leaves_a_body_the_model_takes_as_it_is() -> None:
    received = message(sns_body(ORDER))
    seen, loose = decode(Loose, received)
    assert seen is received
    assert loose == Loose(Type="Notification")


def test_auto_leaves_raw_types_alone() -> None:
    for body_type in (str, bytes, Message):
        assert unwrapper(body_type, "auto") is None
    assert unwrapper(Order, "none") is None


def test_auto_needs_the_whole_sns_shape() -> None:
    # No Signature: not unambiguous, so auto does not unwrap; the model then rejects it.
    no_signature = json.loads(sns_body(ORDER))
    del no_signature["Signature"]
    received = message(json.dumps(no_signature))
    step = unwrapper(Order, "auto")
    assert step is not None
    assert step(received) is received
    with pytest.raises(MessageDecodeError, match="order_id"):
        handler_for(Order).decode(received)
    # Explicitly asked for, the same body is unwrapped.
    _, order = decode(Order, received, "sns")
    assert order == Order(order_id="o-1", cents=250)


def test_a_fifo_topics_notification_is_recognised_by_its_sequence_number() -> None:
    fifo = json.loads(sns_body(ORDER, SequenceNumber="10000000000000003000"))
    del fifo["Signature"]
    seen, order = decode(Order, message(json.dumps(fifo)))
    assert order == Order(order_id="o-1", cents=250)
    assert seen.envelope is not None
    assert seen.envelope.sns is not None
    assert seen.envelope.sns.sequence_number == "10000000000000003000"


def test_auto_needs_every_eventbridge_key() -> None:
    partial = json.loads(event_body({"order_id": "o-2", "cents": 5}))
    del partial["account"]
    received = message(json.dumps(partial))
    assert unwrap(received) is received


def test_explicit_sns_gives_a_str_handler_the_inner_text() -> None:
    seen, text = decode(str, message(sns_body("hello")), "sns")
    assert text == "hello"
    assert seen.envelope is not None
    assert seen.envelope.sns is not None


def test_explicit_sns_even_when_the_model_would_take_the_notification() -> None:
    _, loose = decode(Loose, message(sns_body('{"Type": "inner"}')), "sns")
    assert loose == Loose(Type="inner")


def test_explicit_mode_rejects_a_body_of_another_shape() -> None:
    with pytest.raises(MessageDecodeError, match="not an SNS notification"):
        decode(Order, message(ORDER), "sns")
    with pytest.raises(MessageDecodeError, match="not an EventBridge event"):
        decode(Order, message(sns_body(ORDER)), "eventbridge")


def test_explicit_eventbridge_gives_a_dict_handler_the_detail() -> None:
    _, detail = decode(dict[str, Any], message(event_body({"a": [1, "é"]})), "eventbridge")
    assert detail == {"a": [1, "é"]}


def test_unwrapping_is_idempotent() -> None:
    step = unwrapper(Order, "auto")
    assert step is not None
    once = step(message(sns_body(ORDER)))
    assert step(once) is once
    sns = unwrapper(Order, "sns")
    assert sns is not None
    assert sns(once) is once


def test_malformed_bodies_are_left_to_the_model() -> None:
    for body in ('{"TopicArn": ', '["TopicArn"]', '"detail-type"', ""):
        received = message(body)
        assert unwrap(received) is received


def test_modes_are_checked() -> None:
    assert check_mode("sns", "handler x") == "sns"
    with pytest.raises(HandlerSignatureError, match=r"handler x: envelope='SNS' is not one of"):
        check_mode("SNS", "handler x")
    with pytest.raises(HandlerSignatureError):
        unwrapper(Order, "raw")  # type: ignore[arg-type]


def test_s3_event_records() -> None:
    event = S3Event.model_validate_json(s3_body())
    assert not event.test_event
    (record,) = event.records
    assert record.bucket == "uploads"
    assert record.key == "in/a b+c.csv"
    assert (record.size, record.etag, record.sequencer) == (42, "abc123", "0A")
    assert record.event_name == "ObjectCreated:Put"
    assert record.event_time == datetime(2026, 12, 5, 6, 32, tzinfo=UTC)
    assert record.configuration_id == "uploads"


def test_s3_removal_has_no_size() -> None:
    body = json.loads(s3_body(event="ObjectRemoved:Delete"))
    del body["Records"][0]["s3"]["object"]["size"]
    del body["Records"][0]["s3"]["object"]["eTag"]
    (record,) = S3Event.model_validate(body).records
    assert (record.size, record.etag) == (0, None)


def test_s3_test_event() -> None:
    body = json.dumps(
        {
            "Service": "Amazon S3",
            "Event": "s3:TestEvent",
            "Time": "2026-12-05T06:33:00.000Z",
            "Bucket": "uploads",
            "RequestId": "r",
            "HostId": "h",
        }
    )
    event = S3Event.model_validate_json(body)
    assert event.test_event
    assert event.test_bucket == "uploads"
    assert event.records == ()


def test_s3_event_refuses_other_bodies() -> None:
    with pytest.raises(ValidationError):
        S3Event.model_validate_json(ORDER)
    not_s3 = json.loads(s3_body())
    not_s3["Records"][0]["eventSource"] = "aws:sqs"
    with pytest.raises(ValidationError, match="aws:s3"):
        S3Event.model_validate(not_s3)


def test_s3_event_through_sns_is_unwrapped_for_an_s3_handler() -> None:
    seen, event = decode(S3Event, message(sns_body(s3_body(), Subject="Amazon S3 Notification")))
    assert isinstance(event, S3Event)
    assert event.records[0].key == "in/a b+c.csv"
    assert seen.envelope is not None
    assert seen.envelope.sns is not None
    assert seen.envelope.sns.subject == "Amazon S3 Notification"


def test_a_direct_s3_notification_is_its_own_payload() -> None:
    received = message(s3_body())
    seen, event = decode(S3Event, received)
    assert seen is received
    assert isinstance(event, S3Event)


def test_message_keeps_its_api_and_defaults_to_no_envelope() -> None:
    plain = Message("m", "rh", "b")
    assert plain.envelope is None
    raw = {"MessageId": "m", "ReceiptHandle": "rh", "Body": "b"}
    assert Message.from_sqs(raw) == plain
