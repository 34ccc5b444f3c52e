"""Fault suite (issue 5): real `qworker run` subprocesses, real signals, LocalStack, and accounting.

Each scenario starts a worker process on the handlers of tests/fault_handlers.py (they journal
every start, success, failure and hang), injects one fault, and ends with `accounting.account()`:
both queues are drained until they stayed empty for longer than the visibility timeout, and every
message sent must have been deleted after a success, be in the dead-letter queue with a reason, or
(after a SIGTERM) still wait in the queue. None may be lost. Successful runs per message are
counted and printed (`pytest -s`); duplicates are allowed only where a crash or outage explains
them, and each such test says which messages may have them.

Scenarios: 1. SIGTERM with 200 handlers in flight; 2. SIGKILL, then a new worker; 3. the server
down mid-run (through tests/proxy.py: see that test for why not a real LocalStack restart);
4. throttling, then 503s; 5. poison messages; 6. maximum-size bodies;
7. malformed and schema-invalid bodies; 8. a handler hanging past its timeout.

The queues have a 3 s visibility timeout and small `maxReceiveCount`s, and failures retry at once
(`--retry-base-s 0`), so messages come back fast; message counts are small except in the SIGTERM
scenario. LocalStack rather than moto: moto is slow and may hand one message to two receivers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlparse

import pytest
from accounting import (
    FAULT_ID,
    Drain,
    Drained,
    Journal,
    JournalEntry,
    Report,
    account,
    send_tagged,
    tag_size,
)
from botocore.exceptions import ClientError
from proxy import FaultProxy, Mode
from servers import free_port
from worker_process import WAIT_S, Launcher, WorkerProcess

from qworker.local import create_queue_with_dlq, dead_letter_name

Test = TypeVar("Test", bound=Callable[..., Any])


def scenario(test: Test) -> Test:
    """Mark a fault scenario: worker processes against LocalStack, several seconds each."""
    for mark in (pytest.mark.integration, pytest.mark.localstack, pytest.mark.slow):
        test = mark(test)
    return test


VISIBILITY_S: Final = 3
QUIET_S: Final = VISIBILITY_S + 2
"""The drain stops after both queues stayed empty this long: longer than anything stays hidden."""
SQS_MAX_MESSAGE_BYTES: Final = 262_144
FAST_RETRY: Final = ("--retry-base-s", "0", "--retry-max-s", "1")
TRICKLE_BATCH: Final = 5
TRICKLE_PAUSE_S: Final = 0.5
FAULT_ACTIONS: Final = (
    "receive_failed",
    "delete_retry",
    "release_retry",
    "settle_failed",
    "heartbeat_failed",
    "heartbeat_refused",
)


# -- queues and messages --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Queues:
    """A fresh source queue and its dead-letter queue on LocalStack."""

    client: Any
    name: str
    url: str
    dlq_url: str
    arn: str
    max_receive_count: int


async def make_queues(
    client: Any, prefix: str, *, max_receive_count: int, max_message_size: int | None = None
) -> Queues:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    url = await create_queue_with_dlq(
        client, name, max_receive_count=max_receive_count, visibility_timeout_s=VISIBILITY_S
    )
    dlq_url = str((await client.get_queue_url(QueueName=dead_letter_name(name)))["QueueUrl"])
    if max_message_size is not None:
        for queue_url in (url, dlq_url):
            await client.set_queue_attributes(
                QueueUrl=queue_url, Attributes={"MaximumMessageSize": str(max_message_size)}
            )
    attributes = await client.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
    arn = str(attributes["Attributes"]["QueueArn"])
    return Queues(client, name, url, dlq_url, arn, max_receive_count)


def job(n: int, **fields: object) -> str:
    """A fault_handlers.Job body."""
    return json.dumps({"n": n, **fields})


async def account_for(
    scenario: str,
    queues: Queues,
    *,
    sent: dict[int, str],
    journal: Path,
    timings: dict[str, float],
    notes: Sequence[str] = (),
) -> Report:
    return await account(
        scenario,
        queues.client,
        queue_url=queues.url,
        dlq_url=queues.dlq_url,
        sent=sent,
        journal=journal,
        max_receive_count=queues.max_receive_count,
        quiet_s=QUIET_S,
        timings=timings,
        notes=notes,
    )


# -- worker processes (tests/worker_process.py: WorkerProcess, Launcher) --------------------------


class Spawn(Protocol):
    def __call__(
        self, queues: Queues, journal: Path, *flags: str, endpoint: str | None = None
    ) -> WorkerProcess: ...


@pytest.fixture
def spawn(localstack_server: Any, tmp_path: Path) -> Iterator[Spawn]:
    """Start `qworker run fault_handlers` workers; any still running at the end is killed."""
    launcher = Launcher(localstack_server.endpoint_url, tmp_path)

    def start(
        queues: Queues, journal: Path, *flags: str, endpoint: str | None = None
    ) -> WorkerProcess:
        return launcher.start("fault_handlers", queues.name, journal, *flags, endpoint=endpoint)

    try:
        yield start
    finally:
        launcher.close()


async def wait_journal(
    journal: Path,
    done: Callable[[Journal], bool],
    what: str,
    workers: Sequence[WorkerProcess],
    timeout_s: float = WAIT_S,
) -> Journal:
    """Wait until the handlers' journal satisfies `done`, while the workers stay alive."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = Journal.read(journal)
        if done(current):
            return current
        for worker in workers:
            assert worker.alive, f"worker {worker.pid} died waiting for {what}:\n{worker.tail()}"
        if time.monotonic() > deadline:
            events = Counter(e.event for e in current.entries)
            pytest.fail(f"timed out waiting for {what}; journal {dict(events)}")
        # Another process writes the journal: polling the file is the only way to watch it.
        await asyncio.sleep(0.05)


EMPTY_READINGS = 3
"""Readings in a row that must find the queue empty (`wait_settled`)."""


async def wait_settled(
    queues: Queues, workers: Sequence[WorkerProcess], timeout_s: float = WAIT_S
) -> None:
    """Wait until the source queue is empty: every message deleted or moved to the DLQ.

    The counts are approximate: read one after another, they can miss a message that moves
    between them (one failing and coming back at once), so empty means empty in
    `EMPTY_READINGS` readings in a row.
    """
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    deadline = time.monotonic() + timeout_s
    empty = 0
    while True:
        response = await queues.client.get_queue_attributes(
            QueueUrl=queues.url, AttributeNames=names
        )
        counts = {k: int(v) for k, v in response["Attributes"].items()}
        empty = 0 if any(counts.values()) else empty + 1
        if empty >= EMPTY_READINGS:
            return
        for worker in workers:
            assert worker.alive, f"worker {worker.pid} died:\n{worker.tail()}"
        if time.monotonic() > deadline:
            pytest.fail(f"the queue did not empty in {timeout_s} s: {counts}")
        # The worker is another process: watching the queue it empties is the only way to wait.
        await asyncio.sleep(0.05)


def all_done(total: int) -> Callable[[Journal], bool]:
    return lambda journal: len(journal.count("done")) >= total


# -- the accounting itself ------------------------------------------------------------------------


def test_accounting_finds_lost_duplicated_unknown_and_reasonless_messages() -> None:
    """The report is not vacuous: each kind of discrepancy shows (no server needed)."""

    def entry(event: str, n: int, count: int = 1) -> JournalEntry:
        return JournalEntry(event, n, count, f"id-{n}", 1, 0.0)

    def drained(n: int | None, **system: str) -> Drained:
        attributes = {} if n is None else {FAULT_ID: str(n)}
        return Drained(n, f"id-{n}", 1, 10, attributes, system)

    rejected = replace(drained(3), attributes={FAULT_ID: "3", "qworker.reject_reason": "bad"})
    report = Report(
        scenario="self-test",
        sent={n: f"id-{n}" for n in range(7)},
        journal=Journal(
            (
                entry("done", 0),
                entry("done", 0, 2),
                entry("done", 1),
                entry("fail", 2),
                entry("done", 6),
            )
        ),
        drained=Drain(
            source=(drained(5), drained(None)),
            dead_letters=(
                drained(2, DeadLetterQueueSourceArn="arn"),
                rejected,
                drained(6),
            ),
            seconds=0.0,
        ),
        max_receive_count=2,
    )
    assert report.deleted_after_success == [0, 1]
    assert report.duplicates == {0: 2}
    assert report.runs_per_message_id == {"id-0": 2, "id-1": 1, "id-6": 1}
    assert set(report.dead_letters) == {2, 3, 6}
    assert report.left_queued == [5]
    assert report.lost == [4]
    assert [d.n for d in report.unknown] == [None]
    assert report.without_reason == [6]
    assert report.succeeded_and_dead_lettered == [6]
    assert not report.balanced
    text = report.render()
    assert "LOST 1" in text
    assert "exceeded maxReceiveCount=2" in text
    assert "rejected: bad" in text


# -- 1. SIGTERM with 200 in flight ----------------------------------------------------------------


@scenario
async def test_sigterm_with_200_in_flight_loses_nothing_and_runs_nothing_twice(
    sqs_client: Any, tmp_path: Path, spawn: Spawn
) -> None:
    """400 messages of 1-2 s work, `--concurrency 200`; SIGTERM with ~200 handlers running.

    Every running handler finishes within the grace period and its message is deleted before the
    exit; messages never started are released. A long poll cancelled at shutdown may still have
    been handed messages: they come back after the visibility timeout, which the drain waits out.
    """
    queues = await make_queues(sqs_client, "faults-sigterm", max_receive_count=5)
    total, concurrency = 400, 200
    sent = await send_tagged(
        sqs_client, queues.url, {n: job(n, work_s=1 + (n % 11) / 10) for n in range(total)}
    )
    journal = tmp_path / "journal.txt"
    worker = spawn(queues, journal, "--concurrency", str(concurrency), "--pollers", "4")

    # Signal in the steady state: handlers finishing, pollers refilling the freed slots.
    at_signal = await wait_journal(
        journal,
        lambda j: len(j.of("done")) >= 100 and j.running() >= concurrency - 10,
        f"{concurrency} in flight after 100 done",
        [worker],
    )
    code, shutdown_s = await worker.stop()
    timings = {
        "start to SIGTERM": time.monotonic() - worker.began - shutdown_s,
        "shutdown": shutdown_s,
    }
    report = await account_for(
        "1. SIGTERM with 200 in flight",
        queues,
        sent=sent,
        journal=journal,
        timings=timings,
        notes=[f"{at_signal.running()} handlers running at SIGTERM (journal)"],
    )

    assert code == 0, worker.tail()
    assert report.balanced, report
    assert not report.duplicates, report
    assert not report.dead_letters, report
    started, finished = report.journal.count("start"), report.journal.count("done")
    assert started == finished, report  # every running handler finished within the grace
    # A finished message was deleted before the exit, so none of them is still queued...
    assert not set(report.left_queued) & set(finished), report
    # ... and every message is either finished once or waits, released, in the queue.
    assert sorted([*finished, *report.left_queued]) == list(range(total)), report
    assert shutdown_s < 10, report  # handlers take at most 2 s: no waiting out a long poll
    assert worker.actions("signal"), worker.tail()


# -- 2. SIGKILL, then a new worker ----------------------------------------------------------------


@scenario
async def test_sigkill_then_restart_redelivers_everything(
    sqs_client: Any, tmp_path: Path, spawn: Spawn
) -> None:
    """kill -9 mid-work, then a new worker process: every message is processed, none lost.

    What the killed worker held (running, or finished but not yet deleted) comes back after the
    visibility timeout and runs again: duplicate successes are allowed, for those messages only.
    """
    queues = await make_queues(sqs_client, "faults-sigkill", max_receive_count=5)
    total = 120
    sent = await send_tagged(
        sqs_client, queues.url, {n: job(n, work_s=0.4 + (n % 5) / 10) for n in range(total)}
    )
    journal = tmp_path / "journal.txt"
    first = spawn(queues, journal, "--concurrency", "20")
    await wait_journal(journal, lambda j: len(j.of("done")) >= 40, "40 done", [first])

    first.signal(signal.SIGKILL)
    assert await first.wait() == -signal.SIGKILL
    at_kill = Journal.read(journal)
    killed_at = time.monotonic()
    second = spawn(queues, journal, "--concurrency", "20")
    await wait_journal(journal, all_done(total), "every message done", [second])
    await wait_settled(queues, [second])
    recovered_s = time.monotonic() - killed_at
    code, shutdown_s = await second.stop()

    held_by_first = {e.n for e in at_kill.of("start") if e.pid == first.pid}
    cut_short = held_by_first - set(at_kill.count("done"))
    report = await account_for(
        "2. SIGKILL then restart",
        queues,
        sent=sent,
        journal=journal,
        timings={"kill to queue empty": recovered_s, "shutdown": shutdown_s},
        notes=[
            (
                f"killed worker started {len(held_by_first)} messages; {len(cut_short)} were "
                f"running at the kill; {at_kill.running()} handlers in flight"
            )
        ],
    )

    assert code == 0, second.tail()
    assert report.balanced, report
    assert sorted(report.deleted_after_success) == list(range(total)), report
    assert not report.left_queued, report
    assert not report.dead_letters, report
    # Duplicates only where the kill explains them: messages the killed worker had started.
    assert set(report.duplicates) <= held_by_first, report
    # Handlers cut short by the kill ran again in the new worker.
    redone = {e.n for e in report.journal.of("done") if e.pid == second.pid}
    assert cut_short <= redone, report


# -- 3. The server dies mid-run -------------------------------------------------------------------


@pytest.fixture
async def proxy(localstack_server: Any) -> AsyncIterator[FaultProxy]:
    """A FaultProxy in front of LocalStack, passing traffic; closed at the end."""
    target = urlparse(localstack_server.endpoint_url)
    fault_proxy = FaultProxy(str(target.hostname), int(target.port or 0), free_port())
    await fault_proxy.set_mode("pass")
    yield fault_proxy
    await fault_proxy.aclose()


async def trickle(client: Any, queue_url: str, bodies: dict[int, str]) -> dict[int, str]:
    """Send `bodies` as a steady stream, `TRICKLE_BATCH` every `TRICKLE_PAUSE_S` (a producer)."""
    sent: dict[int, str] = {}
    numbers = sorted(bodies)
    for start in range(0, len(numbers), TRICKLE_BATCH):
        chunk = {n: bodies[n] for n in numbers[start : start + TRICKLE_BATCH]}
        sent |= await send_tagged(client, queue_url, chunk)
        await asyncio.sleep(TRICKLE_PAUSE_S)  # the producer's pace: the scenario's own clock
    return sent


async def run_with_faults(
    scenario: str,
    sqs_client: Any,
    tmp_path: Path,
    spawn: Spawn,
    proxy: FaultProxy,
    *,
    faults: Sequence[tuple[Mode, float]],
) -> tuple[Report, WorkerProcess]:
    """Stream 100 messages to a worker behind `proxy`; switch the proxy through `faults` mid-run.

    The producer reaches LocalStack directly and keeps sending through the faults, well below
    the worker's capacity (`--concurrency` 100): some messages are always running (their deletes
    and heartbeats meet the fault), and pollers always have free slots, so their receives meet it
    too. Returns the report and the worker.
    """
    queues = await make_queues(sqs_client, "faults-outage", max_receive_count=5)
    total = 100
    bodies = {n: job(n, work_s=0.4 + (n % 3) / 10) for n in range(total)}
    journal = tmp_path / "journal.txt"
    worker = spawn(queues, journal, "--concurrency", str(total), endpoint=proxy.endpoint_url)
    producer = asyncio.create_task(trickle(sqs_client, queues.url, bodies))
    try:
        await wait_journal(journal, lambda j: len(j.of("done")) >= 20, "20 done", [worker])
        fault_began = time.monotonic()
        for mode, seconds in faults:
            await proxy.set_mode(mode)
            # The fault lasts this long: the scenario's own clock, not a wait for another process.
            await asyncio.sleep(seconds)
        await proxy.set_mode("pass")
        fault_ended_at = time.time()
        fault_s = time.monotonic() - fault_began
        sent = await producer
    finally:
        if not producer.done():
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await producer
    await wait_journal(journal, all_done(total), "every message done", [worker])
    await wait_settled(queues, [worker])
    recovered_s = time.monotonic() - fault_began - fault_s
    code, shutdown_s = await worker.stop()
    assert code == 0, worker.tail()

    logged = Counter(e.get("action") for e in worker.logs())
    receive_errors = Counter(e.get("error_type") for e in worker.actions("receive_failed"))
    fault_lines = {a: logged[a] for a in FAULT_ACTIONS if logged[a]}
    report = await account_for(
        scenario,
        queues,
        sent=sent,
        journal=journal,
        timings={
            "faults": fault_s,
            "fault end to queue empty": recovered_s,
            "shutdown": shutdown_s,
        },
        notes=[
            f"receive errors the consumer backed off from: {dict(receive_errors)}",
            f"fault log lines: {fault_lines or 'none'}",
            f"proxy answered {proxy.requests_faulted} requests with an injected error",
        ],
    )
    exposed = {e.n for e in report.journal.of("start") if e.at < fault_ended_at}
    assert report.balanced, report
    assert sorted(report.deleted_after_success) == list(range(total)), report
    assert not report.left_queued, report
    assert not report.dead_letters, report
    # Duplicates only where the outage explains them: messages held while it lasted.
    assert set(report.duplicates) <= exposed, report
    return report, worker


@scenario
async def test_server_down_mid_run_worker_recovers_without_restart(
    sqs_client: Any, tmp_path: Path, spawn: Spawn, proxy: FaultProxy
) -> None:
    """The server dies for 8 s mid-run (longer than the visibility timeout), then is back.

    8 s: against refused connections one receive call (botocore's 3 attempts) takes 3-5 s here,
    and the consumer's own backoff must be reached, not only botocore's retries.

    Not a real LocalStack restart: LocalStack 4.13.1 community keeps no SQS state across restarts
    (PERSISTENCE=1 is accepted but no snapshot plugin for SQS ships in localstack-core; a queue
    created before a kill and graceful stop is gone after `restart()`), so a real restart would
    lose every message by design and no accounting could hold. Instead the worker reaches
    LocalStack through tests/proxy.py, whose `down` mode closes every connection and the
    listener: connection refused, exactly what a dead server gives its clients, while the
    queue's state survives as it would on real SQS. The worker must ride it out in-process.
    """
    _, worker = await run_with_faults(
        "3. server down 8 s mid-run (proxy: connection refused)",
        sqs_client,
        tmp_path,
        spawn,
        proxy,
        faults=[("down", 8.0)],
    )
    errors = {e.get("error_type") for e in worker.actions("receive_failed")}
    assert "QueueUnavailable" in errors, worker.tail()


# -- 4. Throttling and 5xx ------------------------------------------------------------------------


@scenario
async def test_throttling_and_server_errors_mid_run_recover(
    sqs_client: Any, tmp_path: Path, spawn: Spawn, proxy: FaultProxy
) -> None:
    """Every request throttled for 5 s, a breath, then every request answered 503 for 5 s.

    5 s per fault: botocore's own retries (standard mode, 3 attempts) absorb about 3 s, and the
    consumer's receive backoff must be reached, not only botocore's.
    """
    _, worker = await run_with_faults(
        "4. throttling 5 s, then 503s 5 s",
        sqs_client,
        tmp_path,
        spawn,
        proxy,
        faults=[("throttle", 5.0), ("pass", 1.0), ("error", 5.0)],
    )
    # The consumer's own receive backoff was reached (not only botocore's retries), and both
    # injected errors reached the worker, on receives or on deletes (whichever was in flight).
    assert worker.actions("receive_failed"), worker.tail()
    seen = " ".join(str(e.get("error")) for a in FAULT_ACTIONS for e in worker.actions(a))
    assert "ThrottlingException" in seen, worker.tail()
    assert "ServiceUnavailable" in seen, worker.tail()


# -- 5. Poison messages ---------------------------------------------------------------------------


@scenario
async def test_poison_messages_reach_the_dlq_after_max_receive_count(
    sqs_client: Any, tmp_path: Path, spawn: Spawn
) -> None:
    """Handlers that always raise for some messages: those go to the DLQ after maxReceiveCount."""
    queues = await make_queues(sqs_client, "faults-poison", max_receive_count=2)
    total, poison = 30, {3, 7, 11, 19, 23, 29}
    sent = await send_tagged(
        sqs_client, queues.url, {n: job(n, fail=n in poison) for n in range(total)}
    )
    journal = tmp_path / "journal.txt"
    worker = spawn(queues, journal, *FAST_RETRY)
    began = time.monotonic()
    await wait_settled(queues, [worker])
    settled_s = time.monotonic() - began
    code, shutdown_s = await worker.stop()
    report = await account_for(
        "5. poison messages (maxReceiveCount 2)",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s, "shutdown": shutdown_s},
    )

    assert code == 0, worker.tail()
    assert report.balanced, report
    assert not report.duplicates, report
    assert report.deleted_after_success == sorted(set(range(total)) - poison), report
    assert set(report.dead_letters) == poison, report
    for n in poison:
        (copy,) = report.dead_letters[n]
        assert copy.redriven, report  # SQS moved it: it exceeded maxReceiveCount
        assert copy.system["DeadLetterQueueSourceArn"] == queues.arn
        assert copy.message_id == sent[n]  # the same message, not a copy qworker sent
        assert copy.reject_reason is None
    # Each poison message ran exactly maxReceiveCount times, failing each time.
    assert report.journal.count("fail") == dict.fromkeys(poison, queues.max_receive_count), report
    failed = worker.actions("message_failed")
    assert len(failed) == len(poison) * queues.max_receive_count, report
    assert all("always fails" in e["error"] for e in failed), failed


# -- 6. Maximum-size bodies -----------------------------------------------------------------------


def max_size_body(n: int, **fields: object) -> str:
    """A job body that, with its `fault.n` attribute, is exactly SQS's maximum message size."""
    bare = job(n, pad="", **fields)
    pad = SQS_MAX_MESSAGE_BYTES - tag_size(n) - len(bare.encode())
    return job(n, pad="x" * pad, **fields)


@scenario
async def test_maximum_size_bodies_are_processed_and_rejected_ones_still_reach_the_dlq(
    sqs_client: Any, tmp_path: Path, spawn: Spawn
) -> None:
    """Messages of exactly 262,144 bytes (body + attributes) are processed and deleted.

    AWS raised the SQS maximum to 1 MiB in 2025 and LocalStack 4.13.1 defaults to it, so both
    queues here set `MaximumMessageSize` to 262,144 (checked: one byte more is refused). A
    rejected max-size message cannot carry qworker's reject attributes into the DLQ (they add
    about 200 bytes); it must still not be lost: it comes back, and the redrive policy moves it.
    """
    queues = await make_queues(
        sqs_client,
        "faults-size",
        max_receive_count=2,
        max_message_size=SQS_MAX_MESSAGE_BYTES,
    )
    good, big_reject, small_reject = [0, 1, 2, 3], 4, 5
    bodies = {n: max_size_body(n) for n in good}
    bodies[big_reject] = max_size_body(big_reject, reject=True)
    bodies[small_reject] = job(small_reject, reject=True)
    for n in (*good, big_reject):
        assert len(bodies[n].encode()) + tag_size(n) == SQS_MAX_MESSAGE_BYTES
    with pytest.raises(ClientError, match=r"InvalidParameterValue|shorter than"):
        await sqs_client.send_message(
            QueueUrl=queues.url,
            MessageBody=bodies[0] + "x",
            MessageAttributes={FAULT_ID: {"DataType": "String", "StringValue": "0"}},
        )
    sent = await send_tagged(sqs_client, queues.url, bodies)
    journal = tmp_path / "journal.txt"
    worker = spawn(queues, journal, *FAST_RETRY)
    began = time.monotonic()
    await wait_settled(queues, [worker])
    settled_s = time.monotonic() - began
    code, shutdown_s = await worker.stop()
    report = await account_for(
        "6. maximum-size bodies (262,144 bytes)",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s, "shutdown": shutdown_s},
    )
    (big,) = report.dead_letters[big_reject]
    bare = [
        e for e in worker.actions("dead_letter_bare") if e.get("message_id") == sent[big_reject]
    ]
    path = (
        "the rejected max-size message has no room for qworker's reject attributes: it went to "
        f"the DLQ at once without them, its reason in the worker's log ({bare[0]['error']!r})"
        if bare
        else "the rejected max-size message did not take the bare dead-letter path"
    )
    report = replace(report, notes=[*report.notes, path])
    print(f"note: {path}")  # noqa: T201 (pytest -s shows the report)

    assert code == 0, worker.tail()
    assert not report.lost, report
    assert not report.unknown, report
    # The one dead letter without a reason attribute is the max-size one: its reason is logged.
    assert report.without_reason == [big_reject], report
    assert bare, worker.tail()
    assert bare[0]["error"] == f"fault suite rejects message {big_reject}"
    assert not report.duplicates, report
    assert report.deleted_after_success == good, report
    assert set(report.dead_letters) == {big_reject, small_reject}, report
    assert big.body_bytes + tag_size(big_reject) == SQS_MAX_MESSAGE_BYTES  # arrived whole
    assert report.journal.count("reject")[big_reject] == 1, report  # at once, not retried blindly
    (small,) = report.dead_letters[small_reject]
    assert small.reject_reason == f"fault suite rejects message {small_reject}", report
    assert small.attributes["qworker.original_message_id"] == sent[small_reject]


# -- 7. Malformed and schema-invalid bodies -------------------------------------------------------

BAD_BODIES: Final = {
    100: ("not json", "body: Invalid JSON"),
    101: ('{"n": 1', "body: Invalid JSON: EOF"),
    102: ('{"n": "seven"}', "n: Input should be a valid integer"),
    103: ('{"work_s": 0.1}', "n: Field required"),
    104: ("[1, 2, 3]", "body: Input should be an object"),
    105: ("null", "body: Input should be an object"),
    106: ('{"n": 6, "work_s": "slow"}', "work_s: Input should be a valid number"),
    107: ("\u00e9t\u00e9 \u2603", "body: Invalid JSON"),
    108: ('{"n": 1.5}', "n: Input should be a valid integer"),
    109: ('{"n": 1}{"n": 2}', "body: Invalid JSON: trailing characters"),
}


@scenario
async def test_malformed_and_invalid_bodies_are_rejected_with_the_error(
    sqs_client: Any, tmp_path: Path, spawn: Spawn
) -> None:
    """Undecodable or schema-invalid bodies go to the DLQ at once with the validation error as
    the reason; the worker never crashes and the good messages around them succeed."""
    queues = await make_queues(sqs_client, "faults-malformed", max_receive_count=3)
    good = list(range(10))
    bodies = {n: job(n) for n in good} | {n: body for n, (body, _) in BAD_BODIES.items()}
    sent = await send_tagged(sqs_client, queues.url, bodies)
    journal = tmp_path / "journal.txt"
    worker = spawn(queues, journal)
    began = time.monotonic()
    await wait_settled(queues, [worker])
    settled_s = time.monotonic() - began
    assert worker.alive, worker.tail()
    code, shutdown_s = await worker.stop()
    report = await account_for(
        "7. malformed and schema-invalid bodies",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s, "shutdown": shutdown_s},
    )

    assert code == 0, worker.tail()
    assert report.balanced, report
    assert not report.duplicates, report
    assert report.deleted_after_success == good, report
    assert set(report.dead_letters) == set(BAD_BODIES), report
    for n, (_, expected) in BAD_BODIES.items():
        (copy,) = report.dead_letters[n]
        assert copy.reject_reason is not None, report
        assert copy.reject_reason.startswith("invalid body: "), copy
        assert expected in copy.reject_reason, copy
        assert copy.attributes["qworker.original_message_id"] == sent[n]
        assert copy.attributes["qworker.source_queue"] == queues.name
        assert copy.attributes["qworker.receive_count"] == "1"  # rejected at once, not retried
    assert not set(report.journal.count("start")) & set(BAD_BODIES)  # no handler ever ran
    rejected = {e["message_id"]: e["error"] for e in worker.actions("message_rejected")}
    assert rejected == {sent[n]: report.dead_letters[n][0].reject_reason for n in BAD_BODIES}


# -- 8. A handler that hangs past its timeout -----------------------------------------------------


@scenario
async def test_handler_hanging_past_its_timeout_fails_retries_then_dead_letters(
    sqs_client: Any, tmp_path: Path, spawn: Spawn
) -> None:
    """`--handler-timeout-s 1`: a hang counts as a failure and the message is retried; one that
    hangs only on its first delivery then succeeds, one that always hangs ends in the DLQ."""
    queues = await make_queues(sqs_client, "faults-hang", max_receive_count=2)
    normal, hang_once, hang_always = [0, 1, 2, 3], [4, 5, 6], [7, 8]
    bodies = (
        {n: job(n) for n in normal}
        | {n: job(n, hang_attempts=1) for n in hang_once}
        | {n: job(n, hang_attempts=99) for n in hang_always}
    )
    sent = await send_tagged(sqs_client, queues.url, bodies)
    journal = tmp_path / "journal.txt"
    worker = spawn(queues, journal, "--handler-timeout-s", "1", *FAST_RETRY)
    began = time.monotonic()
    await wait_settled(queues, [worker])
    settled_s = time.monotonic() - began
    code, shutdown_s = await worker.stop()
    report = await account_for(
        "8. handler hangs past --handler-timeout-s 1",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s, "shutdown": shutdown_s},
    )

    assert code == 0, worker.tail()
    assert report.balanced, report
    assert not report.duplicates, report
    assert report.deleted_after_success == sorted(normal + hang_once), report
    assert set(report.dead_letters) == set(hang_always), report
    assert all(c.redriven for n in hang_always for c in report.dead_letters[n]), report
    hangs = report.journal.count("hang")
    assert hangs == dict.fromkeys(hang_once, 1) | dict.fromkeys(hang_always, 2), report
    assert report.journal.count("cancel") == hangs, report  # each hang was cut by the timeout
    assert {e.n: e.receive_count for e in report.journal.of("done") if e.n in hang_once} == (
        dict.fromkeys(hang_once, 2)
    ), report
    failed = worker.actions("message_failed")
    assert len(failed) == sum(hangs.values()), failed
    assert all(e["error"] == "handler timed out after 1 s" for e in failed), failed
