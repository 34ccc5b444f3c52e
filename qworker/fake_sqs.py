"""An in-memory SQS: queues that honour the SQS behaviours qworker relies on.

`FakeSqs` holds queues; `FakeQueueTransport` implements `QueueTransport` for one of them and honours
visibility timeouts and redelivery, a new receipt handle per delivery (a stale one deletes nothing,
as on SQS), at most 10 messages per receive, `ApproximateReceiveCount`, redrive to a dead-letter
queue after `maxReceiveCount` receives, and FIFO group order (no message of a group is handed out
while another of that group is in flight). Time comes from an injectable clock (`ManualClock`).

The public names are `qworker.testing`'s (re-exported there); see that module for the test kit.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Final, final

from qworker.exceptions import QueueDoesNotExist, TransportError
from qworker.fake_message import ManualClock, StoredMessage
from qworker.local import dead_letter_name
from qworker.message import (
    BatchFailure,
    Message,
    MessageAttribute,
    QueueAttributes,
    RedrivePolicy,
    SendEntry,
)
from qworker.outcome import SQS_MAX_VISIBILITY_S
from qworker.transport import MAX_BATCH

__all__ = [
    "FAKE_ACCOUNT",
    "FAKE_REGION",
    "FakeQueueTransport",
    "FakeSqs",
    "ManualClock",
    "StoredMessage",
]

FAKE_ACCOUNT: Final = "000000000000"
FAKE_REGION: Final = "us-east-1"


@final
class FakeSqs:
    """A set of in-memory queues sharing one clock."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        """Create an empty fake SQS.

        Args:
            clock: Monotonic time in seconds, used for visibility timeouts and delays.
        """
        self.clock = clock
        self._queues: dict[str, FakeQueueTransport] = {}

    def create_queue(
        self,
        name: str,
        *,
        visibility_timeout_s: int = 30,
        dead_letter: str | None = None,
        max_receive_count: int = 3,
    ) -> FakeQueueTransport:
        """Create a queue (a `.fifo` name makes a FIFO one) and its dead-letter queue if named."""
        redrive: RedrivePolicy | None = None
        if dead_letter is not None:
            dlq = self._queues.get(dead_letter) or self.create_queue(dead_letter)
            redrive = RedrivePolicy(dlq.arn, max_receive_count)
        queue = FakeQueueTransport(self, name, visibility_timeout_s, redrive)
        self._queues[name] = queue
        return queue

    def advance(self, seconds: float) -> None:
        """Move the queues' clock (a `ManualClock`) forward: hidden messages whose time came show.

        Raises:
            TypeError: The fake runs on a real clock, which cannot be moved.
        """
        if not isinstance(self.clock, ManualClock):
            raise TypeError("FakeSqs.advance() needs FakeSqs(clock=ManualClock())")
        self.clock.advance(seconds)

    def queue_or_create(
        self, name: str, *, dead_letter: str | None = None, max_receive_count: int = 3
    ) -> FakeQueueTransport:
        """Return the queue `name`; create it if new, with `dead_letter` (default `<name>-dlq`)."""
        found = self._queues.get(name)
        if found is not None:
            return found
        return self.create_queue(
            name,
            dead_letter=dead_letter or dead_letter_name(name),
            max_receive_count=max_receive_count,
        )

    def dead_letter_of(self, queue: FakeQueueTransport) -> FakeQueueTransport | None:
        """The queue's dead-letter queue, from its redrive policy (None: it has none)."""
        return None if queue.redrive is None else self.queue(queue.redrive.dead_letter_arn)

    def queue(self, name_or_arn: str) -> FakeQueueTransport:
        """Return a queue by name or ARN.

        Raises:
            QueueDoesNotExist: There is no such queue.
        """
        name = name_or_arn.rsplit(":", 1)[-1]
        try:
            return self._queues[name]
        except KeyError:
            raise QueueDoesNotExist(f"no queue named {name!r}") from None


@final
class FakeQueueTransport:
    """`QueueTransport` for one in-memory queue, with inspection helpers for tests.

    `fail_next(operation, error)` makes the next calls of an operation raise, to test outages;
    `calls` counts calls per operation, to measure API calls per message.
    """

    def __init__(
        self,
        sqs: FakeSqs,
        name: str,
        visibility_timeout_s: int,
        redrive: RedrivePolicy | None,
    ) -> None:
        """Create the queue; use `FakeSqs.create_queue`."""
        self._sqs = sqs
        self._name = name
        self.visibility_timeout_s = visibility_timeout_s
        self.redrive = redrive
        self.fifo = name.endswith(".fifo")
        self.arn = f"arn:aws:sqs:{FAKE_REGION}:{FAKE_ACCOUNT}:{name}"
        self._messages: dict[str, StoredMessage] = {}
        self._by_receipt: dict[str, StoredMessage] = {}
        self._deleted: list[StoredMessage] = []
        self._ids = itertools.count(1)
        self._arrived = asyncio.Event()
        self._failures: dict[str, list[TransportError]] = {}
        self.calls: Counter[str] = Counter()

    def __repr__(self) -> str:
        """Show the queue and its counts."""
        return (
            f"FakeQueueTransport({self._name!r}, visible={len(self.visible)}, "
            f"in_flight={len(self.in_flight)}, deleted={len(self._deleted)})"
        )

    @property
    def queue_name(self) -> str:
        """The queue's name."""
        return self._name

    # -- inspection ------------------------------------------------------------------------------

    @property
    def messages(self) -> list[StoredMessage]:
        """Every message still in the queue, in send order."""
        return list(self._messages.values())

    @property
    def visible(self) -> list[StoredMessage]:
        """Messages a receive could return now."""
        now = self._sqs.clock()
        return [m for m in self._messages.values() if m.visible_at <= now]

    @property
    def in_flight(self) -> list[StoredMessage]:
        """Messages received and not yet visible again."""
        now = self._sqs.clock()
        return [m for m in self._messages.values() if m.visible_at > now and m.receipt_handle]

    @property
    def deleted(self) -> list[StoredMessage]:
        """Messages deleted by a receiver, in delete order."""
        return list(self._deleted)

    def reset(self) -> None:
        """Forget every message, failure and call count."""
        self._messages.clear()
        self._by_receipt.clear()
        self._deleted.clear()
        self._failures.clear()
        self.calls.clear()

    def fail_next(self, operation: str, error: TransportError, times: int = 1) -> None:
        """Make the next `times` calls of `operation` (e.g. `"receive"`) raise `error`."""
        self._failures.setdefault(operation, []).extend([error] * times)

    def _call(self, operation: str) -> None:
        self.calls[operation] += 1
        pending = self._failures.get(operation)
        if pending:
            raise pending.pop(0)

    # -- sending ---------------------------------------------------------------------------------

    async def send(
        self,
        body: str,
        *,
        attributes: Mapping[str, str] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
    ) -> str:
        """Send one message with string attributes; return its id."""
        return self.put(body, attributes=attributes, delay_s=delay_s, group_id=group_id)

    def put(
        self,
        body: str,
        *,
        attributes: Mapping[str, str] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
    ) -> str:
        """Send one message from plain (sync) code; the same as `send()`. Return its id."""
        attrs = {k: MessageAttribute("String", v) for k, v in (attributes or {}).items()}
        return self._store(SendEntry(body, attrs, delay_s, group_id))

    def _store(self, entry: SendEntry) -> str:
        if self.fifo and entry.group_id is None:
            raise TransportError("SendMessage: MissingParameter: FIFO queues need a group id")
        message_id = str(uuid.UUID(int=next(self._ids) + (hash(self._name) & 0xFFFF) * 2**64))
        self._messages[message_id] = StoredMessage(
            message_id=message_id,
            body=entry.body,
            message_attributes=dict(entry.attributes),
            sent_timestamp_ms=int(time.time() * 1000),
            group_id=entry.group_id,
            deduplication_id=entry.deduplication_id,
            visible_at=self._sqs.clock() + entry.delay_s,
            trace_header=entry.trace_header,
        )
        self._arrived.set()
        return message_id

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        """Send up to 10 messages."""
        self._check_batch(entries)
        self._call("send_batch")
        for entry in entries:
            self._store(entry)
        return []

    # -- receiving -------------------------------------------------------------------------------

    async def receive(
        self, max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        """Receive up to `max_messages`, waiting up to `wait_time_s` (real time) for the first.

        Like a receive over the network, it takes at least one turn of the event loop: what was
        scheduled before it (a handler just started) runs before it looks at the queue.
        """
        await asyncio.sleep(0)
        self._call("receive")
        batch = self._take(max(1, min(max_messages, MAX_BATCH)), visibility_timeout_s)
        if batch or wait_time_s <= 0:
            return batch
        self._arrived.clear()
        try:
            async with asyncio.timeout(wait_time_s):
                await self._arrived.wait()
        except TimeoutError:
            return []
        return self._take(max(1, min(max_messages, MAX_BATCH)), visibility_timeout_s)

    def _take(self, limit: int, visibility_timeout_s: int | None) -> list[Message]:
        now = self._sqs.clock()
        hidden_for = (
            self.visibility_timeout_s if visibility_timeout_s is None else visibility_timeout_s
        )
        blocked_groups = (
            {m.group_id for m in self._messages.values() if m.visible_at > now and m.receipt_handle}
            if self.fifo
            else set()
        )
        taken: list[Message] = []
        dead: list[StoredMessage] = []
        for stored in self._messages.values():  # no copy: the queue may hold many thousands
            if len(taken) >= limit:
                break
            if stored.visible_at > now or (self.fifo and stored.group_id in blocked_groups):
                if self.fifo and stored.visible_at > now:
                    # A delayed message still holds its place: later ones of its group wait.
                    blocked_groups.add(stored.group_id)
                continue
            if self.redrive is not None and stored.receive_count >= self.redrive.max_receive_count:
                dead.append(stored)  # moved after the loop: the dict cannot change while iterated
                continue
            stored.receive_count += 1
            if stored.receipt_handle is not None:
                self._by_receipt.pop(stored.receipt_handle, None)
            stored.receipt_handle = uuid.uuid4().hex
            self._by_receipt[stored.receipt_handle] = stored
            stored.visible_at = now + hidden_for
            taken.append(stored.to_message())
        for stored in dead:
            self._move_to_dead_letter(stored)
        return taken

    def _move_to_dead_letter(self, stored: StoredMessage) -> None:
        assert self.redrive is not None  # noqa: S101 (checked by the caller)
        self._forget(stored)
        dlq = self._sqs.queue(self.redrive.dead_letter_arn)
        stored.visible_at = 0.0
        stored.receipt_handle = None
        dlq._messages[stored.message_id] = stored  # noqa: SLF001 (queues of one FakeSqs cooperate)
        dlq._arrived.set()  # noqa: SLF001

    def _find(self, receipt_handle: str) -> StoredMessage | None:
        return self._by_receipt.get(receipt_handle)

    def _forget(self, stored: StoredMessage) -> None:
        del self._messages[stored.message_id]
        if stored.receipt_handle is not None:
            self._by_receipt.pop(stored.receipt_handle, None)

    # -- acknowledging ---------------------------------------------------------------------------

    @staticmethod
    def _check_batch(entries: Sequence[object]) -> None:
        if not 0 < len(entries) <= MAX_BATCH:
            raise TransportError(f"batch of {len(entries)} entries: SQS takes 1 to {MAX_BATCH}")

    async def delete_batch(self, receipt_handles: Sequence[str]) -> list[BatchFailure]:
        """Delete by receipt handle; a stale handle deletes nothing and does not fail, as on SQS."""
        self._check_batch(receipt_handles)
        self._call("delete_batch")
        for handle in receipt_handles:
            stored = self._find(handle)
            if stored is not None:
                self._forget(stored)
                self._deleted.append(stored)
        return []

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """Hide one in-flight message for `timeout_s` from now."""
        self._call("change_visibility")
        failure = self._change(0, receipt_handle, timeout_s)
        if failure is not None:
            raise TransportError(f"ChangeMessageVisibility: {failure.code}")

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        """Change the visibility of several in-flight messages."""
        self._check_batch(entries)
        self._call("change_visibility_batch")
        failures = [self._change(i, handle, timeout) for i, (handle, timeout) in enumerate(entries)]
        return [f for f in failures if f is not None]

    def _change(self, index: int, receipt_handle: str, timeout_s: int) -> BatchFailure | None:
        if not 0 <= timeout_s <= SQS_MAX_VISIBILITY_S:
            return BatchFailure(
                index, "InvalidParameterValue", "visibility timeout out of range", sender_fault=True
            )
        stored = self._find(receipt_handle)
        now = self._sqs.clock()
        if stored is None or stored.visible_at <= now:
            return BatchFailure(
                index, "MessageNotInflight", "message not in flight", sender_fault=True
            )
        stored.visible_at = now + timeout_s
        if timeout_s == 0:
            self._arrived.set()
        return None

    async def get_attributes(self) -> QueueAttributes:
        """Describe the queue."""
        self._call("get_attributes")
        return QueueAttributes(
            arn=self.arn,
            visibility_timeout_s=self.visibility_timeout_s,
            fifo=self.fifo,
            redrive_policy=self.redrive,
            approximate_visible=len(self.visible),
            approximate_in_flight=len(self.in_flight),
        )
