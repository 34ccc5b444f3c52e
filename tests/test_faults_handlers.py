"""Fault suite: a handler cannot take the worker down, and SIGHUP drains like SIGTERM.

Real `qworker run` subprocesses on LocalStack, in the style of tests/test_faults.py, each scenario
ending with the accounting (tests/accounting.py): every message sent is deleted after a success, in
the dead-letter queue with a reason, or (after a stop signal) still queued; none lost.

Handlers (tests/fault_handlers.py, and tests/fault_handlers_sync.py run in a worker thread)
raise what a handler must never be able to kill the worker with: `SystemExit`,
`KeyboardInterrupt`, `GeneratorExit`, a bare `BaseException` and a subclass of its own,
`asyncio.CancelledError` raised by the handler itself, `StopIteration` from a thread, and
`Retry`/`Reject` built with invalid arguments. Each must be a counted `failed` outcome of its own
message, logged with its traceback and the message id, while the messages around it succeed and
the worker stays up. A handler's own `CancelledError` is a failure (counted against
`maxReceiveCount`, backed off), not a release "at shutdown" re-run in a hot loop; a real
cancellation at shutdown still releases its message.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, Protocol

import pytest
from accounting import account, send_tagged
from fault_handlers import CRASHES
from test_faults import (
    FAST_RETRY,
    QUIET_S,
    Queues,
    account_for,
    job,
    make_queues,
    scenario,
    wait_journal,
    wait_settled,
)
from worker_process import WAIT_S, Launcher, WorkerProcess

from qworker.local import dead_letter_name

EXIT_CONFIG: Final = 2

LEFT_FOR_REDRIVE_S: Final = 15
"""The longest backoff in the DLQ-deleted scenario: how long its rejected message stays hidden."""

BYSTANDERS: Final = 12
"""Ordinary messages sent around the crashing ones: all must succeed, once each."""

SYNC_CRASHES: Final = (
    "SystemExit",
    "KeyboardInterrupt",
    "GeneratorExit",
    "Custom",
    "CancelledError",
    "StopIteration",
    "Retry(nan)",
    "Reject('')",
)
"""What a sync handler raises in its thread (`StopIteration` cannot cross an asyncio future)."""

NOT_EXCEPTIONS: Final = frozenset(
    {
        "SystemExit",
        "KeyboardInterrupt",
        "GeneratorExit",
        "BaseException",
        "Custom",
        "CancelledError",
    }
)
"""Crashes outside `Exception`: they are logged as `handler_crashed`, with the traceback."""


def error_type(kind: str) -> str:
    """The exception a crash of `kind` ends as: invalid arguments fail where they are built."""
    built = {
        "Retry(nan)": "ValueError",
        "Retry(inf)": "ValueError",
        "Retry(-1)": "ValueError",
        "Retry('soon')": "TypeError",
        "Reject('')": "ValueError",
        "Reject(object)": "TypeError",
        # Out of a coroutine (the handler's, or the call that raises a thread's result again),
        # Python turns StopIteration into RuntimeError (PEP 479).
        "StopIteration": "RuntimeError",
    }
    return built.get(kind, kind)


class SpawnModule(Protocol):
    def __call__(
        self, module: str, queues: Queues, journal: Path, *flags: str
    ) -> WorkerProcess: ...


@pytest.fixture
def spawn_module(localstack_server: Any, tmp_path: Path) -> Iterator[SpawnModule]:
    """Start `qworker run <module>` processes; any still running at the end is killed."""
    launcher = Launcher(localstack_server.endpoint_url, tmp_path)

    def start(module: str, queues: Queues, journal: Path, *flags: str) -> WorkerProcess:
        return launcher.start(module, queues.name, journal, *flags)

    try:
        yield start
    finally:
        launcher.close()


@scenario
@pytest.mark.parametrize(
    ("module", "crashes"),
    [("fault_handlers", tuple(CRASHES)), ("fault_handlers_sync", SYNC_CRASHES)],
    ids=["async", "sync-in-thread"],
)
async def test_whatever_a_handler_raises_is_a_failed_outcome_of_its_message_only(
    sqs_client: Any,
    tmp_path: Path,
    spawn_module: SpawnModule,
    module: str,
    crashes: tuple[str, ...],
) -> None:
    """Each crash kind twice: one message crashes on every delivery (it reaches the DLQ after
    exactly maxReceiveCount runs), one only on its first (it then succeeds). Bystanders succeed
    once each; the worker never dies, and a SIGTERM at the end exits it cleanly."""
    queues = await make_queues(sqs_client, f"faults-crash-{module[-4:]}", max_receive_count=2)
    always = {100 + i: kind for i, kind in enumerate(crashes)}
    once = {200 + i: kind for i, kind in enumerate(crashes)}
    bystanders = list(range(BYSTANDERS))
    bodies = (
        {n: job(n, work_s=0.2) for n in bystanders}
        | {n: job(n, crash=kind) for n, kind in always.items()}
        | {n: job(n, crash=kind, crash_attempts=1) for n, kind in once.items()}
    )
    sent = await send_tagged(sqs_client, queues.url, bodies)
    journal = tmp_path / "journal.txt"
    worker = spawn_module(module, queues, journal, *FAST_RETRY)
    began = time.monotonic()
    await wait_settled(queues, [worker])
    settled_s = time.monotonic() - began
    assert worker.alive, worker.tail()
    code, shutdown_s = await worker.stop()
    report = await account_for(
        f"handler crashes ({module}): {', '.join(crashes)}",
        queues,
        sent=sent,
        journal=journal,
        timings={"queue empty": settled_s, "shutdown": shutdown_s},
    )

    assert code == 0, worker.tail()
    assert report.balanced, report
    assert not report.duplicates, report
    assert report.deleted_after_success == sorted([*bystanders, *once]), report
    assert set(report.dead_letters) == set(always), report
    assert all(c.redriven for n in always for c in report.dead_letters[n]), report
    # Counted against maxReceiveCount like any failure: no hot loop, no run beyond the budget.
    assert report.journal.count("crash") == dict.fromkeys(always, 2) | dict.fromkeys(once, 1)
    assert report.journal.count("start") == (
        dict.fromkeys(bystanders, 1) | dict.fromkeys(always, 2) | dict.fromkeys(once, 2)
    ), report
    # One `message_failed` per crash, none released "at shutdown", each naming its exception.
    failed = Counter(e["message_id"] for e in worker.actions("message_failed"))
    crashed_ids = {sent[n]: kind for n, kind in (always | once).items()}
    assert failed == {sent[n]: 2 for n in always} | {sent[n]: 1 for n in once}, report
    assert not worker.actions("message_released"), worker.tail()
    for entry in worker.actions("message_failed"):
        kind = crashed_ids[entry["message_id"]]
        assert entry["error"].startswith(error_type(kind)), entry
    # Those outside `Exception` are logged with the traceback and the message id.
    crashed = worker.actions("handler_crashed")
    outside = {sent[n] for n, kind in (always | once).items() if kind in NOT_EXCEPTIONS}
    assert Counter(e["message_id"] for e in crashed) == {i: failed[i] for i in outside}, (
        worker.tail()
    )
    assert all("Traceback" in e["exception"] for e in crashed), crashed
    assert all(e["level"] == "error" for e in crashed), crashed


@scenario
async def test_shutdown_still_cancels_a_running_handler_and_releases_its_message(
    sqs_client: Any, tmp_path: Path, spawn_module: SpawnModule
) -> None:
    """The other side of a handler's own CancelledError: a real cancellation (the grace ran out)
    is not a failure: the message is released, not counted against its budget as failed."""
    queues = await make_queues(sqs_client, "faults-cancel", max_receive_count=3)
    sent = await send_tagged(sqs_client, queues.url, {0: job(0, hang_attempts=99)})
    journal = tmp_path / "journal.txt"
    worker = spawn_module("fault_handlers", queues, journal, "--shutdown-grace-s", "1")
    await wait_journal(journal, lambda j: bool(j.of("hang")), "the handler hanging", [worker])
    code, shutdown_s = await worker.stop()
    report = await account_for(
        "shutdown cancels a hanging handler",
        queues,
        sent=sent,
        journal=journal,
        timings={"shutdown": shutdown_s},
    )

    assert code == 0, worker.tail()  # released: no work abandoned
    assert report.balanced, report
    assert report.left_queued == [0], report  # released, back on the queue
    assert report.journal.count("cancel") == {0: 1}, report
    assert not worker.actions("message_failed"), worker.tail()
    assert not worker.actions("handler_crashed"), worker.tail()
    (released,) = worker.actions("message_released")
    assert released["message_id"] == sent[0]
    assert released["error"] == "cancelled at shutdown"
    assert worker.actions("grace_expired"), worker.tail()


@scenario
@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM], ids=["SIGHUP", "SIGTERM"])
async def test_sighup_drains_like_sigterm(
    sqs_client: Any, tmp_path: Path, spawn_module: SpawnModule, signum: signal.Signals
) -> None:
    """60 messages of 1-2 s work, 20 at a time; the signal mid-work. Every running handler
    finishes within the grace period and its message is deleted; the rest are released; nothing
    is lost or run twice, and the worker exits 0 having logged the signal by name."""
    queues = await make_queues(sqs_client, "faults-hup", max_receive_count=5)
    total, concurrency = 60, 20
    sent = await send_tagged(
        sqs_client, queues.url, {n: job(n, work_s=1 + (n % 11) / 10) for n in range(total)}
    )
    journal = tmp_path / "journal.txt"
    worker = spawn_module("fault_handlers", queues, journal, "--concurrency", str(concurrency))
    at_signal = await wait_journal(
        journal,
        lambda j: len(j.of("done")) >= 10 and j.running() >= concurrency - 5,
        "handlers running after 10 done",
        [worker],
    )
    began = time.monotonic()
    worker.signal(signum)
    code = await worker.wait()
    shutdown_s = time.monotonic() - began
    report = await account_for(
        f"{signum.name} with {at_signal.running()} handlers running",
        queues,
        sent=sent,
        journal=journal,
        timings={"shutdown": shutdown_s},
    )

    assert code == 0, worker.tail()
    assert report.balanced, report
    assert not report.duplicates, report
    assert not report.dead_letters, report
    started, finished = report.journal.count("start"), report.journal.count("done")
    assert started == finished, report  # every running handler finished within the grace
    assert not set(report.left_queued) & set(finished), report
    assert sorted([*finished, *report.left_queued]) == list(range(total)), report
    assert set(report.left_queued), report  # it stopped mid-work: some were never started
    assert [e["signal"] for e in worker.actions("signal")] == [signum.name], worker.tail()


@scenario
async def test_dlq_deleted_at_run_time_is_reported_as_such(
    sqs_client: Any, tmp_path: Path, spawn_module: SpawnModule
) -> None:
    """The dead-letter queue is deleted under a running worker. A rejected message is logged as
    `dead_letter_missing` naming the DLQ (not "refused") and left for the redrive policy; when the
    server then refuses receives (LocalStack cannot redrive a message past maxReceiveCount into
    a missing DLQ, and answers ReceiveMessage with NonExistentQueue), the worker exits 2 naming
    the dead-letter queue, not saying that the source queue does not exist.

    The message the server tried to redrive is gone: LocalStack 4.13.1 drops it from the source
    queue when its redrive target is missing, before the worker ever sees it (the journal shows
    it failed maxReceiveCount times in this worker; the receive that would have moved it failed).
    That loss is the server's, and the reason a missing DLQ must stop start-up; the accounting
    pins it to that one message: every other one is deleted after success or still queued.

    The rejected message stays hidden for the longest backoff (`LEFT_FOR_REDRIVE_S`) while failures
    come back at once: the worker reaches the poison message's redrive and exits long before the
    rejected one could come back (twice more, to be redriven and dropped as well), whatever the
    machine's load. The accounting waits until it shows again."""
    queues = await make_queues(sqs_client, "faults-dlqgone", max_receive_count=2)
    sent = await send_tagged(sqs_client, queues.url, {n: job(n) for n in range(5)})
    journal = tmp_path / "journal.txt"
    backoff = ("--retry-base-s", "0", "--retry-max-s", str(LEFT_FOR_REDRIVE_S))
    worker = spawn_module("fault_handlers", queues, journal, *backoff)
    await wait_settled(queues, [worker])
    await sqs_client.delete_queue(QueueUrl=queues.dlq_url)
    sent |= await send_tagged(sqs_client, queues.url, {10: job(10, reject=True)})
    await wait_journal(journal, lambda j: 10 in j.count("reject"), "the reject", [worker])
    sent |= await send_tagged(sqs_client, queues.url, {11: job(11, fail=True)})
    code = await worker.wait(WAIT_S)
    # The DLQ is back for the accounting: both queues are drained and every message found.
    dlq_name = dead_letter_name(queues.name)
    await sqs_client.create_queue(QueueName=dlq_name)
    report = await account(
        "DLQ deleted at run time",
        sqs_client,
        queue_url=queues.url,
        dlq_url=queues.dlq_url,
        sent=sent,
        journal=journal,
        max_receive_count=queues.max_receive_count,
        quiet_s=QUIET_S,
        expect=[10],  # hidden for LEFT_FOR_REDRIVE_S after its reject: longer than QUIET_S
    )

    assert code == EXIT_CONFIG, worker.tail()
    lines = worker.log_path.read_text(encoding="utf-8").splitlines()
    (error,) = [line for line in lines if not line.startswith("{")]
    assert error.startswith(f"qworker: error: dead-letter queue {dlq_name!r}"), error
    assert "was deleted while the worker ran" in error, error
    # The only tracebacks are the poison handler's own (handler_failed), never the worker's.
    crashes = [e for e in worker.logs() if "exception" in e and e["action"] != "handler_failed"]
    assert not crashes, worker.tail()
    missing = worker.actions("dead_letter_missing")
    assert missing, worker.tail()
    assert {e["dead_letter_queue"] for e in missing} == {dlq_name}, missing
    assert {e["message_id"] for e in missing} == {sent[10]}, missing
    assert not worker.actions("dead_letter_refused"), worker.tail()
    assert not report.duplicates, report
    assert report.deleted_after_success == list(range(5)), report
    # Rejected once (hidden, never retried blindly), then left for the redrive policy.
    assert report.journal.count("reject") == {10: 1}, report
    assert report.left_queued == [10], report
    assert report.journal.count("fail") == {11: queues.max_receive_count}, report
    assert report.lost == [11], report  # dropped by the server's failed redrive (see above)
