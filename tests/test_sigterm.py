"""SIGTERM mid-work, with a real `qworker run` subprocess and a real signal: nothing is lost.

The worker's journal says which messages it finished; the queue must hold exactly the others, and no
message may have finished twice.

The queues here have a 3 s visibility timeout: a long poll cancelled at shutdown stays open on the
server, which may still hand it messages (even ones the worker just released); those come back when
their visibility lapses. That is SQS's contract, so the accounting waits for them.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from worker_process import Launcher

from qworker._process import ManagedProcess
from qworker.local import create_queue_with_dlq
from qworker.producer import send_bodies
from qworker.transport import SqsTransport

pytestmark = [pytest.mark.integration, pytest.mark.localstack, pytest.mark.slow]


@pytest.fixture
def launcher(localstack_server: Any, tmp_path: Path) -> Iterator[Launcher]:
    """Starts the test's workers; kills any still running at the end."""
    launcher = Launcher(localstack_server.endpoint_url, tmp_path)
    yield launcher
    launcher.close()


def wait_for_journal(journal: Path, kind: str, count: int, process: ManagedProcess) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if journal.exists() and journal.read_text().count(kind) >= count:
            return
        assert process.is_running(), f"the worker died early:\n{process.log_tail()}"
        time.sleep(0.05)  # another process writes the journal: polling the file is the only way
    pytest.fail(f"the worker did not finish {count} messages in time")


def journal_counts(journal: Path) -> tuple[Counter[int], Counter[int]]:
    started: Counter[int] = Counter()
    done: Counter[int] = Counter()
    for line in journal.read_text().splitlines():
        kind, n = line.split()
        (started if kind == "start" else done)[int(n)] += 1
    return started, done


VISIBILITY_S = 3


async def remaining(queue: SqsTransport, expected: int) -> list[int]:
    """Receive and delete until `expected` messages came back, or the queue stays empty for
    longer than the visibility timeout (so nothing can still be hidden)."""
    found: list[int] = []
    quiet_since = time.monotonic()
    while len(found) < expected and time.monotonic() - quiet_since < VISIBILITY_S + 3:
        batch = await queue.receive(10, wait_time_s=1)
        if batch:
            quiet_since = time.monotonic()
        found.extend(json.loads(m.body)["n"] for m in batch)
        if batch:
            await queue.delete_batch([m.receipt_handle for m in batch])
    return found


async def sigterm_mid_work(
    launcher: Launcher,
    sqs_client: Any,
    *flags: str,
    prefix: str,
    count: int,
    work_s: float,
    once: tuple[str, int],
) -> tuple[SqsTransport, Path, str]:
    """Send `count` messages of `work_s` each to a new queue, start `qworker run worker_handlers`
    (2 s long polls, its default health file) with `flags`, and SIGTERM it once its journal holds
    `once` (a kind, a count) lines; assert it exited 0; return the queue, the journal, its log."""
    journal = launcher.directory / "journal.txt"
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    queue = SqsTransport(
        sqs_client, await create_queue_with_dlq(sqs_client, name, visibility_timeout_s=VISIBILITY_S)
    )
    await send_bodies(queue, [json.dumps({"n": i, "work_s": work_s}) for i in range(count)])
    worker = launcher.start(
        "worker_handlers", name, journal, *flags, health_file=False, wait_time_s=2
    ).process
    wait_for_journal(journal, *once, worker)
    code = worker.stop(60)  # SIGTERM; SIGKILL only if it is still running after 60 s
    stderr = worker.log_since_start()
    assert code == 0, stderr[-3000:]
    return queue, journal, stderr


async def test_sigterm_mid_work_loses_nothing(launcher: Launcher, sqs_client: Any) -> None:
    queue, journal, stderr = await sigterm_mid_work(
        launcher, sqs_client, "--concurrency", "40",
        prefix="sigterm", count=200, work_s=0.3, once=("done ", 40),
    )  # fmt: skip

    started, done = journal_counts(journal)
    assert started == done  # every handler that started finished within the grace period
    assert max(done.values()) == 1  # none twice
    back = await remaining(queue, 200 - len(done))
    assert sorted([*done, *back]) == list(range(200))  # each message: done once, or still queued
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    actions = [entry.get("action") for entry in logs]
    assert actions.index("signal") < actions.index("consumer_stopped")
    assert all(entry["role"] == "primary" for entry in logs)


async def test_sigterm_past_the_grace_period_releases_running_messages(
    launcher: Launcher, sqs_client: Any
) -> None:
    queue, journal, stderr = await sigterm_mid_work(
        launcher, sqs_client, "--shutdown-grace-s", "0.5",
        prefix="grace", count=5, work_s=30, once=("start ", 5),
    )  # fmt: skip

    started, done = journal_counts(journal)
    assert sum(started.values()) == 5
    assert not done  # cancelled mid-work: never deleted, released, so all come back
    assert sorted(await remaining(queue, 5)) == list(range(5))
    assert '"action":"grace_expired"' in stderr
