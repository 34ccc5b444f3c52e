"""The transport's pure parts: error mapping at the botocore boundary (`qworker._aws`, through
the transport's re-export), and the wire shapes of `qworker.message`."""

from __future__ import annotations

import json

import pytest
from aws_errors import CONNECTION_ERRORS, client_error, error_id
from botocore.exceptions import ClientError, NoCredentialsError, SSLError

from qworker.exceptions import (
    QueueUnavailable,
    ServerError,
    Throttled,
    TransientTransportError,
    TransportError,
)
from qworker.message import (
    Message,
    MessageAttribute,
    QueueAttributes,
    RedrivePolicy,
    SendEntry,
    queue_name_from_arn,
    queue_name_from_url,
)
from qworker.transport import map_errors  # qworker._aws's (tests/test_aws.py: every code)

# -- map_errors (its table, code by code, and the re-export: tests/test_aws.py) ------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_unknown_5xx_is_a_server_error(status: int) -> None:
    with pytest.raises(ServerError) as info, map_errors("DeleteMessageBatch"):
        raise client_error("SomethingNew", status)

    assert isinstance(info.value, TransientTransportError)


def test_unknown_429_is_throttled() -> None:
    with pytest.raises(Throttled), map_errors("SendMessageBatch"):
        raise client_error("SlowDown", 429)


def test_unknown_4xx_is_a_plain_transport_error() -> None:
    with pytest.raises(TransportError) as info, map_errors("SendMessageBatch"):
        raise client_error("SomethingNew", 400, message="")

    assert type(info.value) is TransportError
    assert str(info.value) == "SendMessageBatch: SomethingNew"


def test_known_code_wins_over_the_status() -> None:
    with pytest.raises(TransportError) as info, map_errors("ReceiveMessage"):
        raise client_error("AWS.SimpleQueueService.NonExistentQueue", 500)

    assert not isinstance(info.value, TransientTransportError)


def test_client_error_without_metadata_is_mapped() -> None:
    error = ClientError({"Error": {"Code": "Mystery"}}, "ReceiveMessage")

    with pytest.raises(TransportError) as info, map_errors("ReceiveMessage"):
        raise error

    assert type(info.value) is TransportError


@pytest.mark.parametrize("error", CONNECTION_ERRORS, ids=error_id)
def test_connection_errors_are_queue_unavailable(error: Exception) -> None:
    with pytest.raises(QueueUnavailable) as info, map_errors("ReceiveMessage"):
        raise error

    assert info.value.__cause__ is error
    assert str(info.value).startswith("ReceiveMessage: ")


@pytest.mark.parametrize(
    "error",
    [
        NoCredentialsError(),
        SSLError(endpoint_url="https://sqs.eu-west-1.amazonaws.com", error=OSError("bad cert")),
    ],
    ids=error_id,
)
def test_botocore_errors_never_leave_the_transport(error: Exception) -> None:
    # Not necessarily transient (a missing credential, a bad CA bundle), but still qworker errors.
    with pytest.raises(TransportError), map_errors("ReceiveMessage"):
        raise error


def test_other_errors_pass_through_and_success_is_untouched() -> None:
    with pytest.raises(KeyError), map_errors("ReceiveMessage"):
        raise KeyError("a bug, not the queue")
    with map_errors("ReceiveMessage"):
        value = 1
    assert value == 1


# -- messages ------------------------------------------------------------------------------------


def test_message_from_sqs() -> None:
    raw = {
        "MessageId": "m-1",
        "ReceiptHandle": "r-1",
        "Body": '{"a": 1}',
        "Attributes": {
            "ApproximateReceiveCount": "3",
            "SentTimestamp": "1700000000123",
            "MessageGroupId": "g-1",
        },
        "MessageAttributes": {
            "traceparent": {"DataType": "String", "StringValue": "00-abc-def-01"},
            "blob": {"DataType": "Binary", "BinaryValue": b"\x00\x01"},
            "count": {"DataType": "Number.int", "StringValue": "7"},
        },
    }

    message = Message.from_sqs(raw)

    assert (message.message_id, message.receipt_handle, message.body) == ("m-1", "r-1", '{"a": 1}')
    assert message.receive_count == 3
    assert message.sent_timestamp_s == 1_700_000_000.123
    assert message.group_id == "g-1"
    assert message.attribute("traceparent") == "00-abc-def-01"
    assert message.attribute("count") == "7"
    assert message.attribute("blob") is None  # binary: not a string attribute
    assert message.attribute("missing") is None
    assert message.message_attributes["blob"] == MessageAttribute("Binary", b"\x00\x01")
    assert message.message_attributes["count"].data_type == "Number.int"


def test_message_from_sqs_minimal() -> None:
    message = Message.from_sqs({"MessageId": "m-1", "ReceiptHandle": "r-1"})

    assert message.body == ""
    assert message.receive_count == 1
    assert message.sent_timestamp_s is None
    assert message.group_id is None
    assert dict(message.message_attributes) == {}


def test_message_attribute_round_trips() -> None:
    for attribute in (MessageAttribute("String", "x"), MessageAttribute("Binary", b"\xff")):
        assert MessageAttribute.from_sqs(attribute.to_sqs()) == attribute
    assert MessageAttribute("String", "x").to_sqs() == {"DataType": "String", "StringValue": "x"}
    assert MessageAttribute("Binary", b"y").to_sqs() == {"DataType": "Binary", "BinaryValue": b"y"}


# -- queue attributes ----------------------------------------------------------------------------


def test_queue_attributes_with_redrive_policy() -> None:
    dlq_arn = "arn:aws:sqs:eu-west-1:123456789012:orders-dlq"
    raw = {
        "QueueArn": "arn:aws:sqs:eu-west-1:123456789012:orders",
        "VisibilityTimeout": "45",
        "RedrivePolicy": json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "5"}),
        "ApproximateNumberOfMessages": "12",
        "ApproximateNumberOfMessagesNotVisible": "3",
    }

    attributes = QueueAttributes.from_sqs(raw)

    assert attributes.arn == "arn:aws:sqs:eu-west-1:123456789012:orders"
    assert attributes.visibility_timeout_s == 45
    assert attributes.fifo is False
    assert attributes.redrive_policy == RedrivePolicy(dlq_arn, 5)
    assert attributes.redrive_policy.dead_letter_name == "orders-dlq"
    assert (attributes.approximate_visible, attributes.approximate_in_flight) == (12, 3)


def test_queue_attributes_without_redrive_policy() -> None:
    attributes = QueueAttributes.from_sqs(
        {"QueueArn": "arn:aws:sqs:us-east-1:1:jobs.fifo", "FifoQueue": "true"}
    )

    assert attributes.redrive_policy is None
    assert attributes.fifo is True
    assert attributes.visibility_timeout_s == 30
    assert (attributes.approximate_visible, attributes.approximate_in_flight) == (0, 0)


def test_queue_attributes_with_numeric_max_receive_count() -> None:
    policy = json.dumps({"deadLetterTargetArn": "arn:aws:sqs:r:1:d", "maxReceiveCount": 4})

    attributes = QueueAttributes.from_sqs({"RedrivePolicy": policy})

    assert attributes.redrive_policy == RedrivePolicy("arn:aws:sqs:r:1:d", 4)


# -- send entries and names ----------------------------------------------------------------------


def test_send_entry_minimal() -> None:
    assert SendEntry("hello").to_sqs() == {"MessageBody": "hello"}


def test_send_entry_full_batch_entry() -> None:
    entry = SendEntry(
        "hello",
        attributes={"k": MessageAttribute("String", "v")},
        delay_s=5,
        group_id="g",
        deduplication_id="d",
    )

    assert entry.to_sqs("3") == {
        "Id": "3",
        "MessageBody": "hello",
        "MessageAttributes": {"k": {"DataType": "String", "StringValue": "v"}},
        "DelaySeconds": 5,
        "MessageGroupId": "g",
        "MessageDeduplicationId": "d",
    }


@pytest.mark.parametrize(
    ("arn", "name"),
    [
        ("arn:aws:sqs:eu-west-1:123456789012:orders", "orders"),
        ("arn:aws:sqs:eu-west-1:123456789012:jobs.fifo", "jobs.fifo"),
        ("orders", "orders"),
    ],
)
def test_queue_name_from_arn(arn: str, name: str) -> None:
    assert queue_name_from_arn(arn) == name


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://sqs.eu-west-1.amazonaws.com/123456789012/orders", "orders"),
        ("http://127.0.0.1:4566/000000000000/jobs.fifo", "jobs.fifo"),
        ("http://localhost:9324/000000000000/orders/", "orders"),
        ("http://sqs.us-east-1.localhost.localstack.cloud:4566/000000000000/q", "q"),
    ],
)
def test_queue_name_from_url(url: str, name: str) -> None:
    assert queue_name_from_url(url) == name
