"""The in-memory SQS's parts: the manual clock and a message as a fake queue stores it.

Re-exported by `qworker.testing` (and used by `qworker.fake_sqs`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import final

from qworker.message import Message, MessageAttribute

__all__ = ["ManualClock", "StoredMessage"]


@final
class ManualClock:
    """A clock that only moves when told to."""

    def __init__(self, start: float = 1_000.0) -> None:
        """Start at `start` seconds."""
        self._now = start

    def __call__(self) -> float:
        """Return the current time."""
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        self._now += seconds


@dataclass(slots=True)
class StoredMessage:
    """A message as the fake queue keeps it."""

    message_id: str
    body: str
    message_attributes: Mapping[str, MessageAttribute]
    sent_timestamp_ms: int
    group_id: str | None = None
    deduplication_id: str | None = None
    receive_count: int = 0
    visible_at: float = 0.0
    receipt_handle: str | None = None
    trace_header: str | None = None

    def attribute(self, name: str) -> str | None:
        """A string message attribute (e.g. `qworker.reject_reason` on a dead-lettered message)."""
        found = self.message_attributes.get(name)
        return found.value if found is not None and isinstance(found.value, str) else None

    def to_message(self) -> Message:
        """Return the message as a receiver sees it."""
        assert self.receipt_handle is not None  # noqa: S101 (only in-flight messages are handed out)
        attributes = {
            "ApproximateReceiveCount": str(self.receive_count),
            "SentTimestamp": str(self.sent_timestamp_ms),
        }
        if self.group_id is not None:
            attributes["MessageGroupId"] = self.group_id
        if self.trace_header is not None:
            attributes["AWSTraceHeader"] = self.trace_header
        return Message(
            message_id=self.message_id,
            receipt_handle=self.receipt_handle,
            body=self.body,
            attributes=attributes,
            message_attributes=dict(self.message_attributes),
        )
