"""What a rejected message carries into the dead-letter queue: its attributes and the reason."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from qworker.handback import SQS_MAX_MESSAGE_ATTRIBUTES
from qworker.message import ORIGINAL_ID_ATTRIBUTE, RECEIVES_ATTRIBUTE, Message, MessageAttribute
from qworker.outcome import OutcomeRecord

__all__ = ["REJECT_ATTRIBUTES", "dead_letter_attributes"]

REJECT_ATTRIBUTES: Final = (
    "qworker.reject_reason",
    "qworker.source_queue",
    "qworker.original_message_id",
    "qworker.receive_count",
)
"""Attributes a rejected message carries into the dead-letter queue, most important first."""


def dead_letter_attributes(
    message: Message, record: OutcomeRecord
) -> Mapping[str, MessageAttribute]:
    """The attributes a rejected message carries: its own, then the reason, within SQS's 10."""
    # A message rejected before (redriven, then rejected again) carries our old attributes: the
    # new ones replace them.
    original = message.attribute(ORIGINAL_ID_ATTRIBUTE) or message.message_id
    # The budget spent on the source does not follow the message: a redrive starts afresh.
    attributes = {
        k: v
        for k, v in message.message_attributes.items()
        if k not in REJECT_ATTRIBUTES and k != RECEIVES_ATTRIBUTE
    }
    ours = {
        "qworker.reject_reason": record.error or "rejected",
        "qworker.source_queue": record.queue,
        ORIGINAL_ID_ATTRIBUTE: original,
        "qworker.receive_count": str(message.effective_receive_count),
    }
    for name, value in ours.items():
        if len(attributes) >= SQS_MAX_MESSAGE_ATTRIBUTES:
            break
        attributes[name] = MessageAttribute("String", value)
    return attributes
