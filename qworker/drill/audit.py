"""The drill's audit: where every message went, from the attempt ledger and the queues' depths."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, final

from qworker._aws import map_errors


@final
@dataclasses.dataclass(frozen=True, slots=True)
class WorkerTally:
    """What one version in one role did, from the attempt ledger."""

    role: str
    version: str
    attempts: int = 0
    first_attempts: int = 0
    first_attempt_failed: int = 0  # every first attempt that did not succeed
    succeeded: int = 0

    @property
    def first_attempt_rate(self) -> float | None:
        """First-attempt failure rate."""
        return self.first_attempt_failed / self.first_attempts if self.first_attempts else None


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Accounting:
    """Where every message the drill sent ended up."""

    sent: int
    succeeded: int  # distinct events whose handler succeeded
    lost: tuple[str, ...]  # sent but never succeeded
    succeeded_twice: int  # at-least-once: events that succeeded more than once
    left_on_queue: int
    dead_lettered: int
    canary_failed: int  # distinct events a canary did not succeed at least once (failed, rejected)
    canary_failures_recovered_by: dict[str, int]  # who then succeeded them ("primary v1": n)
    tallies: tuple[WorkerTally, ...]

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing left, nothing dead-lettered."""
        return not self.lost and self.left_on_queue == 0 and self.dead_lettered == 0


def _read_ledger(ledger: Path) -> list[dict[str, Any]]:
    try:
        lines = ledger.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def is_first_attempt(attempt: dict[str, Any]) -> bool:
    """Whether a ledger line is a true first delivery, as the worker's metrics count one.

    A canary's hand-back copy is a fresh message (receive count 1) but carries `qworker.hops`,
    and `qworker.receives` when earlier deliveries were spent (`qworker.settle`): it is the
    message tried again, never a first attempt (`OutcomeRecord.first_attempt`).
    """
    return (
        attempt["receive_count"] == 1
        and not attempt.get("hops", 0)
        and not attempt.get("prior_receives", 0)
    )


def account(
    sent: Iterable[str], ledger: Path, *, left_on_queue: int, dead_lettered: int
) -> Accounting:
    """Audit the drill from the handlers' attempt ledger and the queues' final depths.

    Args:
        sent: The ids of every event sent.
        ledger: The JSON-lines file `qworker.drill.handlers` appends each attempt to.
        left_on_queue: Messages still on the queue (visible, in flight or delayed).
        dead_lettered: Messages in the dead-letter queue.
    """
    attempts = _read_ledger(ledger)
    successes = Counter(a["event_id"] for a in attempts if a["outcome"] == "succeeded")
    sent_ids = list(sent)
    lost = tuple(i for i in sent_ids if i not in successes)
    tallies: dict[tuple[str, str], Counter[str]] = {}
    for a in attempts:
        tally = tallies.setdefault((a["role"], a["version"]), Counter())
        tally["attempts"] += 1
        tally["succeeded"] += a["outcome"] == "succeeded"
        if is_first_attempt(a):
            tally["first"] += 1
            tally["first_failed"] += a["outcome"] != "succeeded"
    canary_failed = {
        a["event_id"] for a in attempts if a["role"] == "canary" and a["outcome"] != "succeeded"
    }
    recovered = Counter(
        f"{a['role']} {a['version']}"
        for a in attempts
        if a["outcome"] == "succeeded" and a["event_id"] in canary_failed
    )
    return Accounting(
        sent=len(sent_ids),
        succeeded=len(successes),
        lost=lost,
        succeeded_twice=sum(1 for n in successes.values() if n > 1),
        left_on_queue=left_on_queue,
        dead_lettered=dead_lettered,
        canary_failed=len(canary_failed),
        canary_failures_recovered_by=dict(recovered),
        tallies=tuple(
            WorkerTally(role, version, t["attempts"], t["first"], t["first_failed"], t["succeeded"])
            for (role, version), t in sorted(
                tallies.items(), key=lambda kv: (kv[0][0] != "canary", kv[0])
            )
        ),
    )


async def queue_depth(client: Any, url: str) -> int:  # noqa: ANN401 (aiobotocore is untyped)
    """Messages on the queue: visible, in flight and delayed."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    with map_errors(f"GetQueueAttributes {url}"):
        response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    attributes = response.get("Attributes", {})
    return sum(int(attributes.get(name, 0)) for name in names)


async def drain(client: Any, url: str, timeout_s: float) -> int:  # noqa: ANN401 (aiobotocore)
    """Wait until the queue is empty (twice in a row) or `timeout_s` passed; return its depth."""
    began = time.monotonic()
    empty_looks = 0
    depth = await queue_depth(client, url)
    while time.monotonic() - began < timeout_s:
        empty_looks = empty_looks + 1 if depth == 0 else 0
        if empty_looks >= 2:  # noqa: PLR2004 (twice: the counts are approximate)
            return 0
        await asyncio.sleep(0.5)  # bounded polling of the server's queue depth
        depth = await queue_depth(client, url)
    return depth
