"""What reads a message's type for a `qworker.routing.TypeRouter`: the `Discriminator`s.

`by_attribute` reads a string message attribute (SQS's, or the SNS publisher's when the message
came through a topic), `by_field` a top-level string field of the JSON body, `by_detail_type` an
EventBridge event's `detail-type`. Each returns None when the message carries no type.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol, final

from qworker.exceptions import HandlerSignatureError
from qworker.message import Message

__all__ = ["Discriminator", "by_attribute", "by_detail_type", "by_field"]


class Discriminator(Protocol):
    """Reads a message's type; None when the message has none."""

    @property
    def description(self) -> str:
        """What it reads, for messages: `attribute 'type'`."""
        ...

    @property
    def field(self) -> str | None:
        """The body field it reads, if it reads one (route names come from its `Literal`)."""
        ...

    def __call__(self, message: Message) -> str | None:
        """The message's type, or None."""
        ...


@final
@dataclass(frozen=True, slots=True)
class _Attribute:
    name: str

    @property
    def description(self) -> str:
        return f"attribute {self.name!r}"

    @property
    def field(self) -> str | None:
        return None

    def __call__(self, message: Message) -> str | None:
        value = message.attribute(self.name)
        if value is None and message.envelope is not None and message.envelope.sns is not None:
            value = message.envelope.sns.attribute(self.name)
        return value


@final
@dataclass(frozen=True, slots=True)
class _Field:
    name: str

    @property
    def description(self) -> str:
        return f"body field {self.name!r}"

    @property
    def field(self) -> str | None:
        return self.name

    def __call__(self, message: Message) -> str | None:
        body = message.body
        if f'"{self.name}"' not in body:
            return None
        try:
            parsed = json.loads(body)
        except ValueError:
            return None
        value = parsed.get(self.name) if isinstance(parsed, dict) else None
        return value if isinstance(value, str) else None


@final
@dataclass(frozen=True, slots=True)
class _DetailType:
    @property
    def description(self) -> str:
        return "EventBridge detail-type"

    @property
    def field(self) -> str | None:
        return None

    def __call__(self, message: Message) -> str | None:
        envelope = message.envelope
        if envelope is None or envelope.eventbridge is None:
            return None
        return envelope.eventbridge.detail_type


def by_attribute(name: str = "type") -> Discriminator:
    """Route by a string message attribute (the SNS publisher's, through a topic)."""
    if not name:
        raise HandlerSignatureError("by_attribute: the attribute's name must not be empty")
    return _Attribute(name)


def by_field(name: str) -> Discriminator:
    """Route by a top-level string field of the JSON body (a discriminated union's tag)."""
    if not name:
        raise HandlerSignatureError("by_field: the field's name must not be empty")
    return _Field(name)


def by_detail_type() -> Discriminator:
    """Route by an EventBridge event's `detail-type` (the route gets its `detail`)."""
    return _DetailType()
