"""Envelopes: a body that came through SNS or EventBridge, unwrapped to the handler's model.

A queue subscribed to an SNS topic (without raw delivery) receives each publication inside an SNS
notification (`{"Type": "Notification", "TopicArn": ..., "Message": "<the body>", ...}`); a queue
that is an EventBridge rule's target receives the whole event (`{"version": "0", "id": ...,
"detail-type": ..., "source": ..., "detail": {<the body>}}`). `unwrapper(body_type, mode)` returns
the step that takes the payload out (the SNS `Message`, the EventBridge `detail`; both in turn for
an EventBridge event delivered through SNS) and puts what the envelope said on `Message.envelope`
(`SnsEnvelope`: topic ARN, message id, subject, timestamp, message attributes;
`EventBridgeEnvelope`: source, detail-type, id, time, resources).

The mode is explicit where it must be:

- `"auto"` (the default): unwrap only what is unambiguous: a body that is exactly an SNS
  notification (`Type` "Notification", `TopicArn`, `Message`, `MessageId`, `Timestamp` and
  `Signature`, or a FIFO topic's `SequenceNumber`) or an EventBridge event (all of its top-level
  keys), and that the handler's type itself does not validate. A handler asking for `str`,
  `bytes` or `Message` gets the body as received, and a plain body costs two substring searches.
- `"sns"` / `"eventbridge"`: the body must be that envelope (anything else is rejected as
  undecodable); the payload inside is unwrapped whatever the handler's type.
- `"none"`: the body as received.

S3 bucket notifications are a payload, not an envelope: ask for `S3Event` (records with the bucket,
the URL-decoded key, size, ETag, event name and time; `s3:TestEvent` too). Through an SNS topic,
`"auto"` unwraps the notification around them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import json
import urllib.parse
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final, Literal, cast, final, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from qworker.exceptions import HandlerSignatureError, MessageDecodeError
from qworker.message import (
    Envelope,
    EventBridgeEnvelope,
    Message,
    MessageAttribute,
    SnsEnvelope,
)

__all__ = [
    "DEFAULT_ENVELOPE",
    "ENVELOPE_MODES",
    "Envelope",
    "EnvelopeMode",
    "EventBridgeEnvelope",
    "S3Event",
    "S3Record",
    "SnsEnvelope",
    "Unwrap",
    "check_mode",
    "eventbridge_envelope",
    "sns_envelope",
    "unwrap",
    "unwrapper",
]

EnvelopeMode = Literal["auto", "sns", "eventbridge", "none"]
"""How a handler takes its body out of an envelope (see the module's docstring)."""

ENVELOPE_MODES: Final[tuple[str, ...]] = get_args(EnvelopeMode)
DEFAULT_ENVELOPE: Final[EnvelopeMode] = "auto"

Unwrap = Callable[[Message], Message]
"""Turns a received message into the one the handler decodes; raises `MessageDecodeError`."""

_RAW_TYPES: Final[tuple[type, ...]] = (str, bytes, Message)

_SNS_MARK: Final = '"TopicArn"'
_EVENTBRIDGE_MARK: Final = '"detail-type"'
_SNS_KEYS: Final = ("Type", "MessageId", "TopicArn", "Message", "Timestamp")
_EVENTBRIDGE_KEYS: Final = (
    "version",
    "id",
    "detail-type",
    "source",
    "account",
    "time",
    "region",
    "resources",
    "detail",
)


def check_mode(value: object, where: str) -> EnvelopeMode:
    """Return `value` as an envelope mode.

    Raises:
        HandlerSignatureError: It is not one; the message names `where` (e.g. the handler).
    """
    if isinstance(value, str) and value in ENVELOPE_MODES:
        return cast("EnvelopeMode", value)
    raise HandlerSignatureError(
        f"{where}: envelope={value!r} is not one of {', '.join(map(repr, ENVELOPE_MODES))}"
    )


def unwrapper(body_type: Any, mode: EnvelopeMode = DEFAULT_ENVELOPE) -> Unwrap | None:  # noqa: ANN401
    """The unwrapping step for a handler asking for `body_type`, or None when it has nothing to do.

    None (`"none"`, and `"auto"` for a handler asking for `str`, `bytes` or `Message`) means the
    caller adds no step at all: the single-message path stays as it was.
    """
    check_mode(mode, "envelope")
    if mode == "none":
        return None
    if mode == "sns":
        return _explicit_sns
    if mode == "eventbridge":
        return _explicit_eventbridge
    if body_type in _RAW_TYPES:
        return None
    validates = _validator(body_type)

    def auto(message: Message) -> Message:
        body = message.body
        if _SNS_MARK not in body and _EVENTBRIDGE_MARK not in body:
            return message  # a plain body's whole cost: two substring searches
        return unwrap(message, validates=validates)

    return auto


def unwrap(message: Message, *, validates: Callable[[str], bool] | None = None) -> Message:
    """Take the payload out of an unambiguous SNS / EventBridge envelope (`"auto"`).

    Args:
        message: The message as received.
        validates: Whether a text validates as the handler's type: a body that does is the
            payload already, envelope-shaped or not. None: every envelope is unwrapped.
    """
    body = message.body
    if _SNS_MARK not in body and _EVENTBRIDGE_MARK not in body:
        return message  # the plain body's whole cost
    if message.envelope is not None:
        return message  # unwrapped already
    parsed = _json_object(body)
    if parsed is None:
        return message
    sns: SnsEnvelope | None = None
    eventbridge: EventBridgeEnvelope | None = None
    payload = body
    if _is_sns(parsed, strict=True) and not (validates is not None and validates(body)):
        sns = sns_envelope(parsed)
        payload = parsed["Message"]
        parsed = _json_object(payload) if _EVENTBRIDGE_MARK in payload else None
    if (
        parsed is not None
        and _is_eventbridge(parsed)
        and not (validates is not None and validates(payload))
    ):
        eventbridge = eventbridge_envelope(parsed)
        payload = _dumps(parsed["detail"])
    if sns is None and eventbridge is None:
        return message
    return dataclasses.replace(
        message, body=payload, envelope=Envelope(sns=sns, eventbridge=eventbridge, raw_body=body)
    )


def _explicit_sns(message: Message) -> Message:
    if message.envelope is not None and message.envelope.sns is not None:
        return message
    parsed = _json_object(message.body)
    if parsed is None or not _is_sns(parsed, strict=False):
        raise MessageDecodeError(
            "invalid body: envelope='sns' but the body is not an SNS notification "
            "(a subscription with raw message delivery needs envelope='none')"
        )
    return dataclasses.replace(
        message,
        body=parsed["Message"],
        envelope=Envelope(sns=sns_envelope(parsed), raw_body=message.body),
    )


def _explicit_eventbridge(message: Message) -> Message:
    if message.envelope is not None and message.envelope.eventbridge is not None:
        return message
    parsed = _json_object(message.body)
    if parsed is None or not _is_eventbridge(parsed):
        raise MessageDecodeError(
            "invalid body: envelope='eventbridge' but the body is not an EventBridge event "
            f"(it needs {', '.join(_EVENTBRIDGE_KEYS)})"
        )
    return dataclasses.replace(
        message,
        body=_dumps(parsed["detail"]),
        envelope=Envelope(eventbridge=eventbridge_envelope(parsed), raw_body=message.body),
    )


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.lstrip().startswith("{"):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _is_sns(parsed: Mapping[str, Any], *, strict: bool) -> bool:
    """Whether `parsed` is an SNS notification.

    `strict` (auto) also wants its `Signature` (a FIFO topic's notification: its `SequenceNumber`).
    """
    return (
        parsed.get("Type") == "Notification"
        and all(isinstance(parsed.get(k), str) for k in _SNS_KEYS)
        and str(parsed["TopicArn"]).startswith("arn:")
        and (
            not strict
            or isinstance(parsed.get("Signature"), str)
            or isinstance(parsed.get("SequenceNumber"), str)
        )
    )


def _is_eventbridge(parsed: Mapping[str, Any]) -> bool:
    """Whether `parsed` has every top-level key of an EventBridge event."""
    return (
        all(k in parsed for k in _EVENTBRIDGE_KEYS)
        and isinstance(parsed["detail-type"], str)
        and isinstance(parsed["source"], str)
        and isinstance(parsed["resources"], list)
    )


def sns_envelope(parsed: Mapping[str, Any]) -> SnsEnvelope:
    """The metadata of a parsed SNS notification."""
    subject = parsed.get("Subject")
    sequence = parsed.get("SequenceNumber")
    return SnsEnvelope(
        topic_arn=str(parsed["TopicArn"]),
        message_id=str(parsed["MessageId"]),
        timestamp=_time(parsed.get("Timestamp")),
        subject=subject if isinstance(subject, str) else None,
        message_attributes=_sns_attributes(parsed.get("MessageAttributes")),
        sequence_number=sequence if isinstance(sequence, str) else None,
    )


def eventbridge_envelope(parsed: Mapping[str, Any]) -> EventBridgeEnvelope:
    """The metadata of a parsed EventBridge event."""
    return EventBridgeEnvelope(
        id=str(parsed["id"]),
        source=str(parsed["source"]),
        detail_type=str(parsed["detail-type"]),
        time=_time(parsed.get("time")),
        resources=tuple(str(r) for r in parsed.get("resources") or ()),
        account=str(parsed.get("account", "")),
        region=str(parsed.get("region", "")),
        version=str(parsed.get("version", "0")),
    )


def _sns_attributes(raw: object) -> dict[str, MessageAttribute]:
    """SNS's `{"name": {"Type": "String", "Value": "v"}}`, as message attributes."""
    if not isinstance(raw, dict):
        return {}
    found: dict[str, MessageAttribute] = {}
    for name, attr in raw.items():
        if not isinstance(attr, dict):
            continue
        data_type = str(attr.get("Type", "String"))
        value = str(attr.get("Value", ""))
        if data_type.startswith("Binary"):
            try:
                found[str(name)] = MessageAttribute(data_type, base64.b64decode(value))
            except binascii.Error:
                found[str(name)] = MessageAttribute(data_type, value)
        else:
            found[str(name)] = MessageAttribute(data_type, value)
    return found


def _time(raw: object) -> datetime | None:
    if not isinstance(raw, str):
        return None
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:  # noqa: ANN401 (any type pydantic can validate)
    return TypeAdapter(tp)


def _validator(body_type: Any) -> Callable[[str], bool]:  # noqa: ANN401
    adapter = _adapter(body_type)

    def validates(text: str) -> bool:
        try:
            adapter.validate_json(text)
        except ValidationError:
            return False
        return True

    return validates


# -- S3 event notifications -----------------------------------------------------------------------


@final
class S3Record(BaseModel):
    """One record of an S3 event notification.

    Attributes:
        event_name: What happened, e.g. `ObjectCreated:Put`, `ObjectRemoved:Delete`.
        event_time: When.
        region: The bucket's region.
        bucket: The bucket's name.
        bucket_arn: The bucket's ARN.
        key: The object's key, URL-decoded (S3 sends it form-encoded: `a+b%2Bc` is `a b+c`).
        size: The object's size in bytes (0 for a removal, which has none).
        etag: The object's ETag, if S3 sent one.
        version_id: The object's version, on a versioned bucket.
        sequencer: Orders events of the same key.
        configuration_id: The notification configuration's id.
    """

    model_config = ConfigDict(frozen=True)

    event_name: str
    event_time: datetime
    region: str = ""
    bucket: str
    bucket_arn: str = ""
    key: str
    size: int = 0
    etag: str | None = None
    version_id: str | None = None
    sequencer: str | None = None
    configuration_id: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_wire(cls, data: Any) -> Any:  # noqa: ANN401 (pydantic hands over the raw value)
        """Flatten S3's record (`eventName`, `s3.bucket.name`, `s3.object.key`, ...)."""
        if not isinstance(data, dict) or "s3" not in data:
            return data
        if data.get("eventSource") != "aws:s3":
            raise ValueError(f"eventSource is {data.get('eventSource')!r}, not 'aws:s3'")
        s3 = data["s3"] if isinstance(data["s3"], dict) else {}
        bucket = s3.get("bucket") or {}
        obj = s3.get("object") or {}
        key = obj.get("key")
        return {
            "event_name": data.get("eventName"),
            "event_time": data.get("eventTime"),
            "region": data.get("awsRegion", ""),
            "bucket": bucket.get("name"),
            "bucket_arn": bucket.get("arn", ""),
            "key": urllib.parse.unquote_plus(key) if isinstance(key, str) else key,
            "size": obj.get("size", 0),
            "etag": obj.get("eTag") or obj.get("etag"),
            "version_id": obj.get("versionId"),
            "sequencer": obj.get("sequencer"),
            "configuration_id": s3.get("configurationId"),
        }


@final
class S3Event(BaseModel):
    """An S3 bucket notification: `async def handle(event: S3Event)`.

    Attributes:
        records: The events (S3 sends one per notification today).
        test_event: Whether this is the `s3:TestEvent` S3 sends when a notification is configured
            (it has no records: a handler usually returns at once).
        test_bucket: The bucket a test event was sent for.
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    records: tuple[S3Record, ...] = Field(alias="Records")
    test_event: bool = False
    test_bucket: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _test_event(cls, data: Any) -> Any:  # noqa: ANN401 (pydantic hands over the raw value)
        """`{"Service": "Amazon S3", "Event": "s3:TestEvent", "Bucket": ...}`: no records."""
        if isinstance(data, dict) and data.get("Event") == "s3:TestEvent":
            return {"Records": [], "test_event": True, "test_bucket": data.get("Bucket")}
        return data
