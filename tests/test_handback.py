"""A failing canary never puts a message into the dead-letter queue: it hands it back.

On a standard queue the canary hands every delivery it did not succeed on (failed, timed out,
`Retry`, `Reject`, an undecodable body; a first delivery or one the primary failed before) back as
a fresh copy with a `qworker.hops` attribute and, when deliveries were already spent, a
`qworker.receives` count, and deletes the original once the copy is confirmed: the primary gets the
message with exactly the receive budget it had left (it counts the effective receive count and
dead-letters a copy at its end), and only the primary dead-letters. Copies never count as first
attempts. (The settler's branches and the budget arithmetic are in tests/test_settle.py.)

First on the in-memory fake (consumers in one process, exact), then on LocalStack with real worker
processes: a healthy primary and a canary that fails, rejects or retries every message, sharing one
queue with `maxReceiveCount` 2; at the end the dead-letter queue is empty and every message
succeeded on the primary. Then a primary that fails each message's first attempt beside a canary
that fails everything, `maxReceiveCount` 3: only the poison messages reach the dead-letter queue,
each after exactly three primary attempts. The copy itself is checked over the real API too
(attributes, trace header, a maximum-size message whose copy is refused).

Last, FIFO poison without collateral on LocalStack (qworker.groups; the exact cases are in
tests/test_groups_fifo.py): a poison head and its followers in one group, another group beside
them, `maxReceiveCount` 2, plain and across a SIGTERM and a restart: the head alone reaches the
dead-letter queue, every follower succeeds once and in order.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from accounting import FAULT_ID, Journal, send_tagged
from pydantic import BaseModel
from test_faults import (
    VISIBILITY_S,
    Queues,
    account_for,
    job,
    make_queues,
    scenario,
    wait_journal,
    wait_settled,
)
from worker_process import STOP_S, Launcher, WorkerProcess

from qworker.app import QWorker
from qworker.consumer import Consumer
from qworker.dispatch import Dispatcher
from qworker.emf import MetricsAggregator
from qworker.exceptions import Reject, Retry
from qworker.handler import HandlerFunc, HandlerSpec
from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.metrics import MetricName
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
from qworker.quarantine import CanaryQuarantine
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.settle import Settler
from qworker.testing import FakeQueueTransport, FakeSqs
from qworker.transport import Message, SqsTransport
from qworker.worker import Worker, _Resolved

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
        if sum(r.first_attempt for r in canary_sink.records) >= MESSAGES:
            canary.stop()

    canary_sink.then = stop_after_the_originals
    done: list[int] = []

    async def primary_handler(body: OrderV1) -> None:
        done.append(body.n)

    async with asyncio.timeout(10):
        await canary.run()
        primary = worker(queue, primary_handler, PRIMARY, primary_sink)
        await primary.run_until_empty()

    # Copies handed back may come to the canary again before it stops: handed back again.
    firsts = [r for r in canary_sink.records if r.first_attempt]
    assert len(firsts) == MESSAGES
    assert all(r.outcome not in {Outcome.SUCCEEDED, Outcome.RELEASED} for r in firsts), firsts
    again = [r for r in canary_sink.records if not r.first_attempt]
    assert all(r.hops >= 1 for r in again), again
    handed_again = sum(r.outcome is not Outcome.RELEASED for r in again)
    assert canary.statistics().handed_back == MESSAGES + handed_again
    assert sorted(done) == list(range(MESSAGES))  # each once, on the primary
    assert dlq.messages == []
    assert queue.messages == []
    assert {m.message_id for m in queue.deleted} >= set(originals)
    # The primary ran copies: never first attempts, whatever their receive count.
    succeeded = [r for r in primary_sink.records if r.outcome is Outcome.SUCCEEDED]
    assert len(succeeded) == MESSAGES
    # A copy the canary received again just before it stopped was released at the stop: the
    # primary then sees it a second time (a slot frees when the handler returns, so the canary
    # may receive its own copies before its last settlement stops it). Never more than that.
    assert all(r.hops >= 1 and not r.first_attempt for r in succeeded), succeeded
    assert all(r.receive_count <= 2 for r in succeeded), [r.receive_count for r in succeeded]


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


@pytest.mark.parametrize(
    ("attributes", "receive_count", "effective", "first"),
    [
        ({}, 1, 1, True),  # an original's first delivery
        ({}, 2, 2, False),
        ({"qworker.hops": "1"}, 1, 1, False),  # a copy of a first delivery
        ({"qworker.hops": "3", "qworker.receives": "2"}, 1, 3, False),
        ({"qworker.hops": "1", "qworker.receives": "1"}, 2, 3, False),
    ],
)
async def test_records_show_the_effective_receive_count(
    attributes: dict[str, str], receive_count: int, effective: int, *, first: bool
) -> None:
    queue = FakeSqs().create_queue("orders")

    async def handle(body: OrderV1) -> None:
        raise RuntimeError(body.n)

    spec = HandlerSpec.from_function(handle, queue="orders")
    dispatcher = Dispatcher(spec, queue="orders", identity=PRIMARY)
    await queue.send(json.dumps({"n": 1}), attributes=attributes)
    [message] = await queue.receive(1, wait_time_s=0)
    for _ in range(receive_count - 1):
        await queue.change_visibility(message.receipt_handle, 0)
        [message] = await queue.receive(1, wait_time_s=0)
    metrics = MetricsAggregator(role="primary", wall_clock=lambda: 0.0)

    record = await dispatcher(message)
    metrics.record(record)

    assert message.receive_count == receive_count
    assert (record.receive_count, record.first_attempt) == (effective, first)
    [aggregate] = metrics.snapshot().aggregates
    assert aggregate.counts[MetricName.FIRST_ATTEMPT_PROCESSED] == first


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


@pytest.mark.parametrize(
    ("role", "fifo", "hops"),
    [("canary", False, 7), ("canary", True, 0), ("primary", False, 0), ("primary", True, 0)],
)
async def test_the_worker_hands_back_only_as_a_canary_on_a_standard_queue(
    role: str, fifo: bool, hops: int
) -> None:
    name = "orders.fifo" if fifo else "orders"
    queue = FakeSqs().create_queue(name, dead_letter=dead_letter_name(name), max_receive_count=4)
    app = QWorker("svc")

    @app.handler
    async def handle(body: OrderV1) -> None: ...

    settings = QWorkerSettings(queue_name=name, deployment_role=role, canary_max_hops=7)
    worker = Worker(app, settings, identity=Identity(role=role))
    [spec] = app.handlers.values()
    attributes = await queue.get_attributes()

    consumer = worker._consumer(_Resolved(spec, queue, attributes, None))  # type: ignore[arg-type]

    assert consumer.settler.max_hops == hops
    # Any non-canary keeps the budget across copies; a canary never dead-letters.
    assert consumer.settler.max_receive_count == (None if role == "canary" else 4)
    assert consumer.settler.release_failed is (role == "canary")
    assert consumer.fifo is fifo
    # FIFO heads are retried in place with the queue's budget, except on a canary (it releases).
    retry = consumer._groups._retry
    assert (retry is None) is (role == "canary")
    assert retry is None or retry.max_receive_count == 4


# -- LocalStack: a healthy primary and a failing canary, real worker processes -------------------


VERBS = {"fail": "fails", "reject": "rejects", "retry": "retries"}


class Start(Protocol):
    def __call__(
        self, queue_name: str, journal: Path, role: str, *flags: str, defect: str = ""
    ) -> WorkerProcess: ...


@pytest.fixture
def start(localstack_server: Any, tmp_path: Path) -> Iterator[Start]:
    """Start `qworker run handback_handlers` processes; any still running at the end is killed."""
    launcher = Launcher(localstack_server.endpoint_url, tmp_path)

    def run(
        queue_name: str, journal: Path, role: str, *flags: str, defect: str = ""
    ) -> WorkerProcess:
        env = {
            "QWORKER_DEPLOYMENT_ROLE": role,
            "HANDBACK_DEFECT": defect,
            "HANDBACK_PRIMARY_DEFECT": defect if role == "primary" else "",
        }
        return launcher.start(
            "handback_handlers",
            queue_name,
            journal,
            *("--retry-base-s", "0", "--retry-max-s", "1"),
            *flags,
            label=f"{role}-{len(launcher.started) + 1}",
            env=env,
        )

    try:
        yield run
    finally:
        launcher.close()


async def wait_started(workers: list[WorkerProcess]) -> None:
    """Wait until every worker's consumer runs (its log says so)."""
    deadline = time.monotonic() + STOP_S
    while not all(w.actions("consumer_started") for w in workers):
        for worker in workers:
            assert worker.alive, worker.tail()
        assert time.monotonic() < deadline, [w.tail() for w in workers]
        # Other processes: their log file is the only way to watch them start.
        await asyncio.sleep(0.05)


@scenario
@pytest.mark.parametrize("defect", ["fail", "reject", "retry"])
async def test_a_failing_canary_leaves_the_dead_letter_queue_empty(
    sqs_client: Any,
    tmp_path: Path,
    start: Start,
    defect: str,
) -> None:
    """A primary and a canary that fails (rejects, retries) every message, maxReceiveCount 2.

    Without the hand-back, a message the canary released went straight back to the idle canary
    and used up its receive budget. With it, the canary hands each one back as a fresh copy: the
    DLQ stays empty and every message succeeds once, on the primary.
    """
    queues = await make_queues(sqs_client, f"handback-{defect}", max_receive_count=2)
    total = 60
    journal = tmp_path / "journal.txt"
    primary = start(queues.name, journal, "primary", "--concurrency", "4")
    canary = start(queues.name, journal, "canary", defect=defect)
    await wait_started([primary, canary])
    began = time.monotonic()
    sent = await send_tagged(sqs_client, queues.url, {n: job(n) for n in range(total)})
    await wait_journal(
        journal, lambda j: len(j.count("done")) >= total, "every message done", [primary, canary]
    )
    await wait_settled(queues, [primary, canary])
    settled_s = time.monotonic() - began
    codes = [(await w.stop())[0] for w in (primary, canary)]
    ran = Journal.read(journal)
    canary_runs = [e for e in ran.of("start") if e.pid == canary.pid]
    handed = canary.actions("handed_back")
    hops = Counter(e["hops"] for e in handed)
    report = await account_for(
        f"hand-back: the canary {VERBS[defect]} every message (maxReceiveCount 2)",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s},
        notes=[
            (
                f"canary ran {len(canary_runs)} deliveries of {len({e.n for e in canary_runs})} "
                f"messages; handed back {len(handed)} (by hop: {dict(sorted(hops.items()))})"
            ),
        ],
    )

    assert codes == [0, 0], (primary.tail(), canary.tail())
    assert report.balanced, report
    assert not report.dead_letters, report
    assert report.deleted_after_success == list(range(total)), report
    assert {e.pid for e in ran.of("done")} == {primary.pid}, report  # only the primary succeeds
    assert canary_runs, report  # the canary took its share: the scenario is not vacuous
    # Every delivery the canary ran was handed back, none released or dead-lettered.
    assert len(handed) == len(canary_runs), report
    assert not canary.actions("hand_back_skipped"), report
    assert not canary.actions("message_rejected") or defect == "reject", report
    # A duplicate only where a copy was sent but the original's delete failed.
    duplicated = {e["message_id"] for e in canary.actions("hand_back_duplicate")}
    assert len(report.duplicates) <= len(duplicated), report


POISONED = {7, 23}
"""Messages of the budget scenario that fail everywhere."""


@scenario
async def test_messages_the_primary_failed_before_keep_their_budget_on_a_failing_canary(
    sqs_client: Any,
    tmp_path: Path,
    start: Start,
) -> None:
    """maxReceiveCount 3: the primary fails each message's first counted attempt (a transient
    error) and succeeds later; the canary fails everything and takes most receives.

    A later delivery the canary gets is handed back too, with the deliveries spent before it in
    `qworker.receives`: the canary never spends the budget, so every message succeeds once on the
    primary, at its second attempt, and the DLQ holds only the poison messages, each after exactly
    maxReceiveCount primary attempts (dead-lettered by the primary at the copy's effective count,
    or moved by SQS's redrive policy when no copy carried spent deliveries).
    """
    budget = 3
    queues = await make_queues(sqs_client, "handback-budget", max_receive_count=budget)
    total = 40
    journal = tmp_path / "journal.txt"
    primary = start(queues.name, journal, "primary", "--concurrency", "4", defect="first")
    canary = start(queues.name, journal, "canary", defect="fail")
    await wait_started([primary, canary])
    began = time.monotonic()
    bodies = {n: job(n, poison=n in POISONED) for n in range(total)}
    sent = await send_tagged(sqs_client, queues.url, bodies)
    # Every message deleted or dead-lettered (a good one among the dead letters shows below).
    await wait_settled(queues, [primary, canary])
    settled_s = time.monotonic() - began
    codes = [(await w.stop())[0] for w in (primary, canary)]
    ran = Journal.read(journal)
    canary_runs = [e for e in ran.of("start") if e.pid == canary.pid]
    primary_fails = Counter(e.n for e in ran.of("fail") if e.pid == primary.pid)
    handed = canary.actions("handed_back")
    later = [e for e in handed if e.get("receives")]
    ours = primary.actions("budget_dead_lettered")
    report = await account_for(
        "hand-back keeps the budget: the primary fails first attempts, the canary everything "
        "(maxReceiveCount 3)",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s},
        notes=[
            (
                f"canary ran {len(canary_runs)} deliveries, handed back {len(handed)} "
                f"({len(later)} carrying spent deliveries)"
            ),
            (
                f"poison dead-lettered by the primary: {len(ours)}, by SQS's redrive policy: "
                f"{len(POISONED) - len(ours)}"
            ),
        ],
    )

    assert codes == [0, 0], (primary.tail(), canary.tail())
    assert report.balanced, report
    assert set(report.dead_letters) == POISONED, report  # no good message reached the DLQ
    good = [n for n in range(total) if n not in POISONED]
    assert report.deleted_after_success == good, report
    assert {e.pid for e in ran.of("done")} == {primary.pid}, report
    assert all(e.receive_count == 2 for e in ran.of("done")), report  # the second attempt
    # Each good message failed once on the primary (its first counted attempt), each poison
    # message exactly maxReceiveCount times: the canary's deliveries spent none of the budget.
    assert primary_fails == dict.fromkeys(good, 1) | dict.fromkeys(POISONED, budget), report
    assert later, report  # the canary got later deliveries: the scenario is not vacuous
    assert not canary.actions("hand_back_skipped"), report
    assert len(handed) == len(canary_runs), report
    for n in POISONED:
        [dead] = report.dead_letters[n]
        if not dead.redriven:
            assert dead.reject_reason is not None, report
            assert dead.reject_reason.startswith(f"failed {budget} times (maxReceiveCount 3)")
            assert "qworker.receives" not in dead.attributes, report
    assert not report.duplicates, report


@scenario
async def test_a_flaky_primary_gets_exactly_its_budget_beside_a_failing_canary(
    sqs_client: Any,
    tmp_path: Path,
    start: Start,
) -> None:
    """maxReceiveCount 3: the primary fails a random 30 % of its attempts, the canary fails
    everything. Whatever the dice say, a message reaches the DLQ exactly when the primary failed
    it three times, and every other message succeeded once, on the primary, after at most two
    primary failures: the canary's deliveries never count."""
    budget = 3
    queues = await make_queues(sqs_client, "handback-flaky", max_receive_count=budget)
    total = 60
    journal = tmp_path / "journal.txt"
    primary = start(queues.name, journal, "primary", "--concurrency", "4", defect="flaky")
    canary = start(queues.name, journal, "canary", defect="fail")
    await wait_started([primary, canary])
    began = time.monotonic()
    sent = await send_tagged(sqs_client, queues.url, {n: job(n) for n in range(total)})
    await wait_settled(queues, [primary, canary])
    settled_s = time.monotonic() - began
    codes = [(await w.stop())[0] for w in (primary, canary)]
    ran = Journal.read(journal)
    primary_fails = Counter(e.n for e in ran.of("fail") if e.pid == primary.pid)
    failures = [primary_fails[n] for n in range(total)]
    handed = canary.actions("handed_back")
    report = await account_for(
        "hand-back keeps the budget: a flaky primary (30 %), a failing canary (maxReceiveCount 3)",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s},
        notes=[
            f"messages by primary failures: {dict(sorted(Counter(failures).items()))}",
            (
                f"canary handed back {len(handed)}, {sum(1 for e in handed if e['receives'])} "
                "carrying spent deliveries"
            ),
        ],
    )

    assert codes == [0, 0], (primary.tail(), canary.tail())
    assert report.balanced, report
    spent = {n for n in range(total) if primary_fails[n] == budget}
    assert set(report.dead_letters) == spent, report
    assert report.deleted_after_success == sorted(set(range(total)) - spent), report
    assert {e.pid for e in ran.of("done")} == {primary.pid}, report
    assert max(primary_fails.values(), default=0) <= budget, report
    # A message succeeds at the attempt after its failures: the canary's runs never counted.
    assert all(e.receive_count == primary_fails[e.n] + 1 for e in ran.of("done")), report
    assert not canary.actions("hand_back_skipped"), report
    assert not report.duplicates, report


# -- LocalStack: FIFO poison without collateral, real worker processes ---------------------------

FIFO_GROUPS = {"g1": range(5), "g2": range(5, 10)}
"""Group g1: the poison head 0 and its followers 1-4; group g2: 5-9, all good."""
POISON = 0


async def fifo_queues(client: Any, prefix: str) -> Queues:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}.fifo"
    url = await create_queue_with_dlq(
        client, name, max_receive_count=2, visibility_timeout_s=VISIBILITY_S
    )
    dlq_url = str((await client.get_queue_url(QueueName=dead_letter_name(name)))["QueueUrl"])
    attributes = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    return Queues(client, name, url, dlq_url, str(attributes["Attributes"]["QueueArn"]), 2)


async def send_groups(client: Any, queues: Queues) -> dict[int, str]:
    """Send each group's messages in order, tagged for the accounting; return n -> MessageId."""
    ids: dict[int, str] = {}
    for group, numbers in FIFO_GROUPS.items():
        entries = [
            {
                "Id": str(n),
                "MessageBody": job(n, poison=n == POISON),
                "MessageGroupId": group,
                "MessageDeduplicationId": f"{queues.name}-{n}",
                "MessageAttributes": {FAULT_ID: {"DataType": "String", "StringValue": str(n)}},
            }
            for n in numbers
        ]
        response = await client.send_message_batch(QueueUrl=queues.url, Entries=entries)
        assert not response.get("Failed"), response
        ids.update({int(e["Id"]): str(e["MessageId"]) for e in response["Successful"]})
    return ids


def followers_done(journal: Journal) -> bool:
    done = journal.count("done")
    return all(done[n] for numbers in FIFO_GROUPS.values() for n in numbers if n != POISON)


def assert_no_collateral(report: Any, ran: Journal) -> None:
    """The poison head alone is dead-lettered; every follower ran once, in its group's order."""
    assert report.balanced, report
    assert set(report.dead_letters) == {POISON}, report
    [dead] = report.dead_letters[POISON]
    assert dead.reject_reason is not None, report  # the worker sent it, with its reason
    assert "maxReceiveCount 2" in dead.reject_reason, report
    assert report.deleted_after_success == [n for n in range(10) if n != POISON], report
    assert not report.duplicates, report
    for numbers in FIFO_GROUPS.values():
        order = [e.n for e in ran.of("done") if e.n in numbers]
        assert order == [n for n in numbers if n != POISON], report


@scenario
async def test_fifo_poison_head_takes_no_follower_with_it(
    sqs_client: Any,
    tmp_path: Path,
    start: Start,
) -> None:
    """maxReceiveCount 2: the poison head fails twice in place and is dead-lettered; its four
    followers and the other group all succeed once, each with the receive count it came with."""
    queues = await fifo_queues(sqs_client, "fifo-poison")
    journal = tmp_path / "journal.txt"
    sent = await send_groups(sqs_client, queues)
    worker = start(queues.name, journal, "primary")
    began = time.monotonic()
    await wait_journal(journal, followers_done, "every follower done", [worker])
    await wait_settled(queues, [worker])
    settled_s = time.monotonic() - began
    code, _ = await worker.stop()
    ran = Journal.read(journal)
    report = await account_for(
        "FIFO poison head, maxReceiveCount 2", queues, sent=sent, journal=journal,
        timings={"queue empty": settled_s},
        notes=[f"in-place retries logged: {len(worker.actions('group_retry_in_place'))}"],
    )  # fmt: skip

    assert code == 0, worker.tail()
    assert_no_collateral(report, ran)
    assert [e.receive_count for e in ran.of("fail")] == [1, 2], report  # attempts, in place
    assert all(e.receive_count == 1 for e in ran.of("done")), report
    assert len(worker.actions("group_dead_lettered")) == 1, worker.tail()


@scenario
async def test_fifo_poison_head_across_sigterm_and_restart_takes_no_follower_with_it(
    sqs_client: Any,
    tmp_path: Path,
    start: Start,
) -> None:
    """SIGTERM while the head waits in place: the worker releases the head and its held
    followers (SQS counts that receive, nothing can undo it) and exits 0; a new worker finds the
    head at its second receive, dead-letters it at the second failure, and runs the followers."""
    queues = await fifo_queues(sqs_client, "fifo-poison-restart")
    journal = tmp_path / "journal.txt"
    sent = await send_groups(sqs_client, queues)
    slow = ("--retry-base-s", "60", "--retry-max-s", "60")  # the head waits in place
    first_worker = start(queues.name, journal, "primary", *slow)
    await wait_journal(
        journal,
        lambda j: bool(j.count("fail")[POISON]) and all(j.count("done")[n] for n in range(5, 10)),
        "the head's first failure, group g2 done",
        [first_worker],
    )
    await wait_logged(first_worker, "group_retry_in_place")
    code, shutdown_s = await first_worker.stop()
    at_stop = Journal.read(journal)
    second_worker = start(queues.name, journal, "primary")
    began = time.monotonic()
    await wait_journal(journal, followers_done, "every follower done", [second_worker])
    await wait_settled(queues, [second_worker])
    settled_s = time.monotonic() - began
    second_code, _ = await second_worker.stop()
    ran = Journal.read(journal)
    report = await account_for(
        "FIFO poison head across SIGTERM and restart, maxReceiveCount 2", queues, sent=sent,
        journal=journal, timings={"first shutdown": shutdown_s, "restart to empty": settled_s},
        notes=[f"followers run before the SIGTERM: {sorted(at_stop.count('done'))}"],
    )  # fmt: skip

    assert (code, second_code) == (0, 0), (first_worker.tail(), second_worker.tail())
    assert_no_collateral(report, ran)
    assert [(e.pid, e.receive_count) for e in ran.of("fail")] == [
        (first_worker.pid, 1),
        (second_worker.pid, 2),
    ], report
    g1_followers = [e for e in ran.of("done") if e.n in FIFO_GROUPS["g1"]]
    assert {e.pid for e in g1_followers} == {second_worker.pid}, report
    assert len(second_worker.actions("group_dead_lettered")) == 1, second_worker.tail()


async def wait_logged(worker: WorkerProcess, action: str) -> None:
    """Wait until the worker logged `action`."""
    deadline = time.monotonic() + STOP_S
    while not worker.actions(action):
        assert worker.alive, worker.tail()
        assert time.monotonic() < deadline, worker.tail()
        # Another process: its log file is the only way to watch it.
        await asyncio.sleep(0.05)


# -- LocalStack: the copy itself, over the real API ----------------------------------------------


async def settle_on(
    client: Any,
    url: str,
    message: Message,
    outcome: Outcome,
) -> tuple[bool, Settler]:
    settler = Settler(SqsTransport(client, url), release_failed=True, max_hops=3, batch_wait_s=0)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(settler.run())
        settled = await settler.settle(
            message,
            OutcomeRecord(outcome, "q", "h", "canary", "v2", message.message_id, 1, error="bad"),
        )
        task.cancel()
    return settled, settler


@pytest.mark.integration
@pytest.mark.localstack
async def test_copy_keeps_body_attributes_and_trace_header_on_localstack(
    sqs_client: Any,
) -> None:
    name = f"handback-copy-{uuid.uuid4().hex[:8]}"
    url = await create_queue_with_dlq(sqs_client, name, max_receive_count=2)
    trace = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"
    response = await sqs_client.send_message(
        QueueUrl=url,
        MessageBody='{"n": 1}',
        MessageAttributes={"traceparent": {"DataType": "String", "StringValue": "00-a-b-01"}},
        MessageSystemAttributes={"AWSTraceHeader": {"DataType": "String", "StringValue": trace}},
    )
    queue = SqsTransport(sqs_client, url)
    [message] = await queue.receive(1, wait_time_s=1)
    assert message.attributes.get("AWSTraceHeader") == trace

    settled, settler = await settle_on(sqs_client, url, message, Outcome.REJECTED)

    assert settled
    assert settler.handed_back == 1
    [copy] = await queue.receive(10, wait_time_s=1)
    assert copy.message_id != response["MessageId"]
    assert copy.body == '{"n": 1}'
    assert copy.receive_count == 1
    assert copy.attributes.get("AWSTraceHeader") == trace
    assert {k: v.value for k, v in copy.message_attributes.items()} == {
        "traceparent": "00-a-b-01",
        "qworker.hops": "1",
        "qworker.original_message_id": response["MessageId"],
    }
    assert await queue.delete_batch([copy.receipt_handle]) == []
    assert await queue.receive(10, wait_time_s=0) == []  # the original was deleted


@pytest.mark.integration
@pytest.mark.localstack
async def test_copy_over_the_size_limit_falls_back_to_release_on_localstack(
    sqs_client: Any,
) -> None:
    """A message of exactly the maximum size has no room for `qworker.hops`: SQS refuses the
    copy, and the canary releases the original instead (nothing lost, nothing duplicated)."""
    name = f"handback-big-{uuid.uuid4().hex[:8]}"
    url = await create_queue_with_dlq(sqs_client, name, max_receive_count=2)
    limit = 262_144  # SQS's classic maximum, set explicitly (a server may allow more)
    await sqs_client.set_queue_attributes(
        QueueUrl=url, Attributes={"MaximumMessageSize": str(limit)}
    )
    await sqs_client.send_message(QueueUrl=url, MessageBody="x" * limit)
    queue = SqsTransport(sqs_client, url)
    [message] = await queue.receive(1, wait_time_s=1)

    settled, settler = await settle_on(sqs_client, url, message, Outcome.FAILED)

    assert settled
    assert settler.handed_back == 0
    [again] = await queue.receive(10, wait_time_s=1)  # released at once: the same message
    assert again.message_id == message.message_id
    assert again.receive_count == 2
    assert "qworker.hops" not in again.message_attributes
