"""A failing canary never puts a message into the dead-letter queue: it hands it back.

On a standard queue the canary hands every delivery it did not succeed on (failed, timed out,
`Retry`, `Reject`, an undecodable body) back as a fresh copy with a `qworker.hops` attribute, and
deletes the original once the copy is confirmed: the primary gets the message with its full receive
budget, and only the primary dead-letters. Copies never count as first attempts.

First on the in-memory fake (consumers in one process, exact), then on LocalStack with real worker
processes: a healthy primary and a canary that fails, rejects or retries every message, sharing one
queue with `maxReceiveCount` 2; at the end the dead-letter queue is empty and every message
succeeded on the primary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from pydantic import BaseModel

from qworker.consumer import Consumer
from qworker.dispatch import Dispatcher
from qworker.emf import MetricsAggregator
from qworker.exceptions import Reject, Retry
from qworker.handler import HandlerFunc, HandlerSpec
from qworker.metrics import MetricName
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
from qworker.quarantine import CanaryQuarantine
from qworker.role import Identity
from qworker.settle import Settler
from qworker.testing import FakeQueueTransport, FakeSqs
from qworker.transport import Message

CANARY = Identity(service="orders", role="canary", version="v2")
PRIMARY = Identity(service="orders", role="primary", version="v1")
MESSAGES = 10


class Collect:
    """An outcome sink; `then` runs after each record."""

    def __init__(self) -> None:
        self.records: list[OutcomeRecord] = []
        self.then: Callable[[], None] = lambda: None

    def record(self, record: OutcomeRecord) -> None:
        self.records.append(record)
        self.then()


class OrderV1(BaseModel):
    n: int


class OrderV2(BaseModel):
    """The canary's stricter schema: the messages on the queue lack `currency`."""

    n: int
    currency: str


def worker(
    queue: FakeQueueTransport,
    handler: HandlerFunc,
    identity: Identity,
    sink: Collect,
    *,
    max_hops: int = 0,
    timeout_s: float | None = None,
) -> Consumer:
    spec = HandlerSpec.from_function(handler, queue=queue.queue_name)
    dispatcher = Dispatcher(spec, queue=queue.queue_name, identity=identity, timeout_s=timeout_s)
    settler = Settler(
        queue,
        retry_policy=RetryPolicy(base_s=0, max_s=0),
        release_failed=identity.is_canary,
        max_hops=max_hops,
        batch_wait_s=0,
    )
    return Consumer(
        queue,
        dispatcher,
        visibility_timeout_s=30,
        wait_time_s=0,
        pollers=1,
        concurrency=MESSAGES,
        settler=settler,
        sinks=[sink],
    )


async def fail(body: OrderV1) -> None:
    raise RuntimeError(f"canary bug on {body.n}")


async def retry(body: OrderV1) -> None:
    raise Retry(0, f"canary wants {body.n} again")


async def reject(body: OrderV1) -> None:
    raise Reject(f"canary rejects {body.n}")


async def strict(body: OrderV2) -> None:
    """Never runs: every body on the queue is invalid for the canary's schema."""
    raise AssertionError(body)


async def hang(body: OrderV1) -> None:
    await asyncio.Event().wait()  # past the handler timeout


CANARY_DEFECTS: dict[str, HandlerFunc] = {
    "fail": fail,
    "retry": retry,
    "reject": reject,
    "invalid": strict,
    "timeout": hang,
}


@pytest.mark.parametrize("defect", ["fail", "retry", "reject", "invalid", "timeout"])
async def test_canary_hands_every_unsucceeded_message_back_to_the_primary(defect: str) -> None:
    sqs = FakeSqs()
    queue = sqs.create_queue("orders", dead_letter="orders-dlq", max_receive_count=2)
    dlq = sqs.queue("orders-dlq")
    originals = [await queue.send(json.dumps({"n": n})) for n in range(MESSAGES)]
    canary_sink, primary_sink = Collect(), Collect()
    canary = worker(queue, CANARY_DEFECTS[defect], CANARY, canary_sink, max_hops=10, timeout_s=0.05)
    # The canary stops once it settled every original (copies it took by then are released).

    def stop_after_the_originals() -> None:
        if len(canary_sink.records) >= MESSAGES:
            canary.stop()

    canary_sink.then = stop_after_the_originals
    done: list[int] = []

    async def primary_handler(body: OrderV1) -> None:
        done.append(body.n)

    async with asyncio.timeout(10):
        await canary.run()
        primary = worker(queue, primary_handler, PRIMARY, primary_sink)
        await primary.run_until_empty()

    handed = canary_sink.records[:MESSAGES]
    assert all(r.outcome is not Outcome.SUCCEEDED and r.first_attempt for r in handed), handed
    assert all(r.outcome is Outcome.RELEASED for r in canary_sink.records[MESSAGES:])
    assert canary.statistics().handed_back == MESSAGES
    assert sorted(done) == list(range(MESSAGES))  # each once, on the primary
    assert dlq.messages == []
    assert queue.messages == []
    assert {m.message_id for m in queue.deleted} >= set(originals)
    # The primary ran copies: never first attempts, whatever their receive count.
    succeeded = [r for r in primary_sink.records if r.outcome is Outcome.SUCCEEDED]
    assert len(succeeded) == MESSAGES
    assert all(r.hops == 1 and r.receive_count == 1 and not r.first_attempt for r in succeeded)


async def test_hand_back_is_bounded_by_the_hop_limit() -> None:
    """A canary alone with a poison message: two hops, then the redrive policy as before."""
    sqs = FakeSqs()
    queue = sqs.create_queue("orders", dead_letter="orders-dlq", max_receive_count=3)
    dlq = sqs.queue("orders-dlq")
    await queue.send(json.dumps({"n": 1}))
    runs: list[tuple[int, int]] = []
    sink = Collect()

    async def handle(body: OrderV1, message: Message) -> None:
        runs.append((message.hops, message.receive_count))
        raise Reject("poison")

    canary = worker(queue, handle, CANARY, sink, max_hops=2)
    async with asyncio.timeout(10):
        await canary.run_until_empty()

    assert runs == [(0, 1), (1, 1), (2, 1), (2, 2), (2, 3)]
    assert canary.statistics().handed_back == 2
    [dead] = dlq.messages  # moved by the redrive policy, never sent there by the canary
    assert "qworker.reject_reason" not in dead.message_attributes
    assert dead.message_attributes["qworker.hops"].value == "2"


def test_a_copy_is_never_a_first_attempt() -> None:
    first = OutcomeRecord(Outcome.FAILED, "orders", "h", "canary", "v2", "m", 1)
    copy = OutcomeRecord(Outcome.FAILED, "orders", "h", "primary", "v1", "c", 1, hops=1)
    retry = OutcomeRecord(Outcome.FAILED, "orders", "h", "canary", "v2", "m", 2)

    assert first.first_attempt
    assert not copy.first_attempt
    assert not retry.first_attempt


def test_metrics_and_quarantine_do_not_count_copies_as_first_attempts() -> None:
    metrics = MetricsAggregator(role="canary", wall_clock=lambda: 0.0)
    quarantine = CanaryQuarantine(failure_rate=0.5, min_messages=2, window_s=60)
    outcomes = [
        OutcomeRecord(Outcome.SUCCEEDED, "orders", "h", "canary", "v2", "a", 1),
        OutcomeRecord(Outcome.REJECTED, "orders", "h", "canary", "v2", "b", 1),
        OutcomeRecord(Outcome.RETRIED, "orders", "h", "canary", "v2", "c", 1, hops=1),
        OutcomeRecord(Outcome.FAILED, "orders", "h", "canary", "v2", "d", 1, hops=2),
    ]
    for record in outcomes:
        metrics.record(record)
        quarantine.record(record)

    [aggregate] = metrics.snapshot().aggregates
    assert aggregate.counts[MetricName.FIRST_ATTEMPT_PROCESSED] == 2
    assert aggregate.counts[MetricName.FIRST_ATTEMPT_UNSUCCEEDED] == 1
    assert aggregate.counts[MetricName.FIRST_ATTEMPT_FAILED] == 0
    assert quarantine.counts == (1, 2)  # the reject counts; the copies do not
    assert not quarantine.quarantined  # 1 of 2 is not above 50 %
