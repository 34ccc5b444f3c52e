"""Accounting for fault tests: where did every message sent end up?

A fault test sends messages tagged with their number (`send_tagged`: the `fault.n` message
attribute, so even a body that is not JSON can be traced), runs workers that journal what their
handlers did (tests/fault_handlers.py), then calls `account()`. It drains the source queue and its
dead-letter queue, receiving until both have stayed empty for longer than the visibility timeout
(so nothing can still be hidden; a message hidden for longer, named in `expect`, is waited for
until it shows, within a bound), and returns a `Report`. Every message sent must be in one of
these places:

- deleted after success: the journal has a `done` line for it and no queue holds it any more;
- dead-lettered with a reason: the `qworker.reject_reason` attribute (qworker sent it there), or
  the redrive policy moved it (`DeadLetterQueueSourceArn`: it exceeded `maxReceiveCount`);
- left queued: still in the source queue when the drain came (e.g. released at shutdown).

Anything else is lost. The report also counts successful handler runs per message (duplicates are
at-least-once's price after a crash) and renders as text for the test output and assertion
messages.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from qworker.transport import MAX_BATCH, Message, SqsTransport

__all__ = [
    "FAULT_ID",
    "Drained",
    "Journal",
    "JournalEntry",
    "Report",
    "account",
    "drain",
    "send_tagged",
]

FAULT_ID: Final = "fault.n"
"""The message attribute that carries a message's number through every queue."""

REJECT_REASON: Final = "qworker.reject_reason"
SOURCE_ARN: Final = "DeadLetterQueueSourceArn"
"""System attribute SQS sets on a message its redrive policy moved to the dead-letter queue."""

BIG_BODY: Final = 64 * 1024
"""Bodies at least this big are sent one per call (a batch may carry 256 KiB in all)."""

DRAIN_POLL_S: Final = 1
DRAIN_TIMEOUT_S: Final = 120.0


# -- sending --------------------------------------------------------------------------------------


async def send_tagged(client: Any, queue_url: str, bodies: Mapping[int, str]) -> dict[int, str]:
    """Send `bodies` (by number), each tagged with `FAULT_ID`; return number -> MessageId."""
    ids: dict[int, str] = {}
    small = [(n, body) for n, body in bodies.items() if len(body.encode()) < BIG_BODY]
    for n, body in bodies.items():
        if len(body.encode()) >= BIG_BODY:
            response = await client.send_message(
                QueueUrl=queue_url, MessageBody=body, MessageAttributes=_tag(n)
            )
            ids[n] = str(response["MessageId"])
    for start in range(0, len(small), MAX_BATCH):
        chunk = small[start : start + MAX_BATCH]
        entries = [
            {"Id": str(n), "MessageBody": body, "MessageAttributes": _tag(n)} for n, body in chunk
        ]
        response = await client.send_message_batch(QueueUrl=queue_url, Entries=entries)
        assert not response.get("Failed"), response["Failed"]
        ids.update({int(e["Id"]): str(e["MessageId"]) for e in response["Successful"]})
    assert sorted(ids) == sorted(bodies)
    return ids


def _tag(n: int) -> dict[str, dict[str, str]]:
    return {FAULT_ID: {"DataType": "String", "StringValue": str(n)}}


def tag_size(n: int) -> int:
    """Bytes the `FAULT_ID` attribute adds to a message's size (name, type and value)."""
    return len(FAULT_ID) + len("String") + len(str(n))


# -- the journal ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """One line of a fault handler's journal."""

    event: str
    n: int
    receive_count: int
    message_id: str
    pid: int
    at: float


@dataclass(frozen=True, slots=True)
class Journal:
    """Everything the handlers of one test did, in order."""

    entries: tuple[JournalEntry, ...] = ()

    @classmethod
    def read(cls, path: Path) -> Journal:
        """Parse a journal file (a missing file is an empty journal)."""
        if not path.exists():
            return cls()
        entries = []
        # Another process may be writing: a last line without its newline is not there yet.
        for line in path.read_text(encoding="utf-8").split("\n")[:-1]:
            event, n, count, message_id, pid, at = line.split()
            entries.append(JournalEntry(event, int(n), int(count), message_id, int(pid), float(at)))
        return cls(tuple(entries))

    def count(self, event: str) -> Counter[int]:
        """How many `event` lines each message number has."""
        return Counter(e.n for e in self.entries if e.event == event)

    def of(self, event: str) -> list[JournalEntry]:
        """The `event` lines."""
        return [e for e in self.entries if e.event == event]

    def running(self) -> int:
        """Handlers started and not yet ended (done, failed, rejected or cancelled)."""
        ends = sum(1 for e in self.entries if e.event in {"done", "fail", "reject", "cancel"})
        return len(self.of("start")) - ends


# -- draining -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drained:
    """A message the drain received (and deleted)."""

    n: int | None
    message_id: str
    receive_count: int
    body_bytes: int
    attributes: Mapping[str, str]
    system: Mapping[str, str]

    @classmethod
    def of(cls, message: Message) -> Drained:
        """Describe a received message."""
        tag = message.attribute(FAULT_ID)
        strings = {k: str(v.value) for k, v in message.message_attributes.items()}
        return cls(
            n=int(tag) if tag is not None else None,
            message_id=message.message_id,
            receive_count=message.receive_count,
            body_bytes=len(message.body.encode()),
            attributes=strings,
            system=dict(message.attributes),
        )

    @property
    def reject_reason(self) -> str | None:
        """The reason qworker gave when it dead-lettered the message itself."""
        return self.attributes.get(REJECT_REASON)

    @property
    def redriven(self) -> bool:
        """Whether SQS's redrive policy moved it (it exceeded maxReceiveCount)."""
        return SOURCE_ARN in self.system

    def reason(self, max_receive_count: int) -> str:
        """Why it is in the dead-letter queue."""
        if self.reject_reason is not None:
            return f"rejected: {self.reject_reason}"
        if self.redriven:
            return (
                f"exceeded maxReceiveCount={max_receive_count} "
                f"(ApproximateReceiveCount {self.receive_count} in the DLQ)"
            )
        return "NO REASON"


@dataclass(frozen=True, slots=True)
class Drain:
    """What the drain found in each queue."""

    source: tuple[Drained, ...]
    dead_letters: tuple[Drained, ...]
    seconds: float


async def drain(
    client: Any,
    queue_url: str,
    dlq_url: str,
    *,
    quiet_s: float,
    timeout_s: float = DRAIN_TIMEOUT_S,
    expect: Collection[int] = (),
) -> Drain:
    """Receive and delete from both queues until neither gave a message for `quiet_s`.

    Each queue has its own receive loop (a long poll on an empty dead-letter queue must not slow
    the source queue's drain), and both stop only after `quiet_s` without a message from either:
    receiving from the source queue may move messages into the dead-letter queue (redrive).

    Args:
        client: An aiobotocore SQS client.
        queue_url: The source queue.
        dlq_url: Its dead-letter queue.
        quiet_s: Longer than any message can stay hidden (the visibility timeout, a backoff).
        timeout_s: Fail if messages still come after this long.
        expect: Message numbers hidden for longer than `quiet_s` (a rejected message left for the
            redrive policy stays hidden for the longest backoff): the drain does not end before
            it found each of them, in either queue, or `timeout_s` passed (the report then shows
            them lost).
    """
    began = time.monotonic()
    last_seen = [began]
    awaited = set(expect)

    def done() -> bool:
        if awaited and time.monotonic() - began < timeout_s:
            return False
        return time.monotonic() - last_seen[0] >= quiet_s

    async def empty(url: str) -> list[Drained]:
        queue = SqsTransport(client, url)
        found: list[Drained] = []
        while not done():
            assert time.monotonic() - began < timeout_s, f"{url} still gives messages: {found}"
            batch = await queue.receive(MAX_BATCH, wait_time_s=DRAIN_POLL_S)
            if not batch:
                continue
            last_seen[0] = time.monotonic()
            drained = [Drained.of(m) for m in batch]
            found.extend(drained)
            awaited.difference_update(d.n for d in drained if d.n is not None)
            failures = await queue.delete_batch([m.receipt_handle for m in batch])
            assert not failures, failures
        return found

    source, dead = await asyncio.gather(empty(queue_url), empty(dlq_url))
    return Drain(tuple(source), tuple(dead), time.monotonic() - began)


# -- the report -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Where every message sent ended up, and how often its handler succeeded."""

    scenario: str
    sent: Mapping[int, str]
    journal: Journal
    drained: Drain
    max_receive_count: int
    timings: Mapping[str, float] = field(default_factory=dict)
    notes: Sequence[str] = ()

    @property
    def successes(self) -> Counter[int]:
        """Successful handler runs per message number."""
        return self.journal.count("done")

    @property
    def dead_letters(self) -> dict[int, list[Drained]]:
        """Dead-lettered copies per message number."""
        found: dict[int, list[Drained]] = {}
        for d in self.drained.dead_letters:
            if d.n is not None:
                found.setdefault(d.n, []).append(d)
        return found

    @property
    def left_queued(self) -> list[int]:
        """Message numbers the drain found in the source queue."""
        return sorted(d.n for d in self.drained.source if d.n is not None)

    @property
    def deleted_after_success(self) -> list[int]:
        """Succeeded, and in neither queue any more."""
        elsewhere = set(self.left_queued) | set(self.dead_letters)
        return sorted(n for n in self.sent if self.successes[n] and n not in elsewhere)

    @property
    def lost(self) -> list[int]:
        """Sent, never succeeded, in neither queue: the one thing that must never happen."""
        found = set(self.successes) | set(self.dead_letters) | set(self.left_queued)
        return sorted(n for n in self.sent if n not in found)

    @property
    def unknown(self) -> list[Drained]:
        """Drained messages that are not among those sent (untagged, or a stranger's)."""
        return [
            d
            for d in (*self.drained.source, *self.drained.dead_letters)
            if d.n is None or d.n not in self.sent
        ]

    @property
    def duplicates(self) -> dict[int, int]:
        """Message numbers whose handler succeeded more than once, with the count."""
        return {n: c for n, c in sorted(self.successes.items()) if c > 1}

    @property
    def runs_per_message_id(self) -> dict[str, int]:
        """Successful handler runs per SQS message id (as the handlers saw it)."""
        return dict(Counter(e.message_id for e in self.journal.of("done")))

    @property
    def dead_lettered_twice(self) -> list[int]:
        """Messages with more than one dead-letter copy."""
        return sorted(n for n, copies in self.dead_letters.items() if len(copies) > 1)

    @property
    def succeeded_and_dead_lettered(self) -> list[int]:
        """Messages that succeeded and are in the dead-letter queue too."""
        return sorted(n for n in self.dead_letters if self.successes[n])

    @property
    def without_reason(self) -> list[int]:
        """Dead-lettered messages with neither a reject reason nor a redrive source."""
        return sorted(
            n
            for n, copies in self.dead_letters.items()
            if any(c.reject_reason is None and not c.redriven for c in copies)
        )

    @property
    def balanced(self) -> bool:
        """Nothing lost, no stranger, every dead letter with a reason."""
        return not (self.lost or self.unknown or self.without_reason)

    def render(self) -> str:
        """The report as text."""
        histogram = Counter(self.successes[n] for n in self.sent)
        runs = ", ".join(f"{k}x: {v}" for k, v in sorted(histogram.items()))
        lines = [
            f"== accounting: {self.scenario} ==",
            (
                f"sent {len(self.sent)} | deleted after success "
                f"{len(self.deleted_after_success)} | dead-lettered {len(self.dead_letters)} | "
                f"left queued {len(self.left_queued)} | LOST {len(self.lost)} | "
                f"unknown {len(self.unknown)}"
            ),
            (
                f"successful handler runs per message: {runs} "
                f"({sum(self.successes.values())} runs in all)"
            ),
        ]
        if self.duplicates:
            dups = ", ".join(f"n={n} ({self.sent[n]}) x{c}" for n, c in self.duplicates.items())
            lines.append(f"duplicate successes: {dups}")
        else:
            lines.append("duplicate successes: none")
        reasons = Counter(
            c.reason(self.max_receive_count)
            for copies in self.dead_letters.values()
            for c in copies
        )
        lines.extend(f"dead letter x{k}: {reason}" for reason, k in sorted(reasons.items()))
        if self.left_queued:
            lines.append(f"left queued: {_ranges(self.left_queued)}")
        problems = {
            "LOST": self.lost,
            "dead-lettered twice": self.dead_lettered_twice,
            "succeeded AND dead-lettered": self.succeeded_and_dead_lettered,
            "dead letter without reason": self.without_reason,
        }
        lines.extend(f"{what}: {_ranges(ns)}" for what, ns in problems.items() if ns)
        if self.unknown:
            lines.append(f"unknown messages: {self.unknown}")
        events = Counter(e.event for e in self.journal.entries)
        lines.append("journal: " + ", ".join(f"{k} {v}" for k, v in sorted(events.items())))
        timing = {**self.timings, "drain": self.drained.seconds}
        lines.append("timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timing.items()))
        lines.extend(f"note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        """Render the report."""
        return self.render()


def _ranges(numbers: Sequence[int]) -> str:
    return json.dumps(list(numbers)) if len(numbers) <= 40 else f"{len(numbers)} messages"


async def account(
    scenario: str,
    client: Any,
    *,
    queue_url: str,
    dlq_url: str,
    sent: Mapping[int, str],
    journal: Path,
    max_receive_count: int,
    quiet_s: float,
    timings: Mapping[str, float] | None = None,
    notes: Sequence[str] = (),
    expect: Collection[int] = (),
) -> Report:
    """Drain both queues and account for every message sent; print the report and return it.

    `expect`: message numbers hidden for longer than `quiet_s`, which the drain waits for.
    """
    drained = await drain(client, queue_url, dlq_url, quiet_s=quiet_s, expect=expect)
    report = Report(
        scenario=scenario,
        sent=dict(sent),
        journal=Journal.read(journal),
        drained=drained,
        max_receive_count=max_receive_count,
        timings=dict(timings or {}),
        notes=tuple(notes),
    )
    print(f"\n{report}")  # noqa: T201 (pytest -s shows the report)
    return report
