"""SIGTERM mid-work, with a real `qworker run` subprocess and a real signal: nothing is lost.

The worker's journal says which messages it finished; the queue must hold exactly the others, and no
message may have finished twice.

The queues here have a 3 s visibility timeout: a long poll cancelled at shutdown stays open on the
server, which may still hand it messages (even ones the worker just released); those come back when
their visibility lapses. That is SQS's contract, so the accounting waits for them.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from qworker._process import ManagedProcess
from qworker.local import create_queue_with_dlq
from qworker.producer import send_bodies
from qworker.transport import SqsTransport

pytestmark = [pytest.mark.integration, pytest.mark.localstack, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent


def start_worker(endpoint: str, queue: str, journal: Path, *extra: str) -> ManagedProcess:
    """Start `qworker run worker_handlers`; its stderr (JSON logs) goes to a file by the journal."""
    env = {
        **os.environ,
        "PYTHONPATH": str(TESTS),
        "QWORKER_TEST_JOURNAL": str(journal),
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    process = ManagedProcess(
        [
            sys.executable, "-m", "qworker", "run", "worker_handlers",
            "--endpoint-url", endpoint, "--queue-name", queue, "--wait-time-s", "2",
            "--log-level", "DEBUG", *extra,
        ],
        log_path=journal.with_name("worker.log"),
        stdout_path=journal.with_name("worker.out"),
        env=env,
        name="worker",
    )  # fmt: skip
    process.start()
    return process


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


async def test_sigterm_mid_work_loses_nothing(
    localstack_server: Any, sqs_client: Any, tmp_path: Path
) -> None:
    name = f"sigterm-{uuid.uuid4().hex[:8]}"
    queue = SqsTransport(
        sqs_client, await create_queue_with_dlq(sqs_client, name, visibility_timeout_s=VISIBILITY_S)
    )
    await send_bodies(queue, [json.dumps({"n": i, "work_s": 0.3}) for i in range(200)])
    journal = tmp_path / "journal.txt"

    worker = start_worker(localstack_server.endpoint_url, name, journal, "--concurrency", "40")
    try:
        wait_for_journal(journal, "done ", 40, worker)
        code = worker.stop(60)  # SIGTERM; SIGKILL only if it is still running after 60 s
    finally:
        worker.kill()
    stderr = worker.log_since_start()
    assert code == 0, stderr[-3000:]

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
    localstack_server: Any, sqs_client: Any, tmp_path: Path
) -> None:
    name = f"grace-{uuid.uuid4().hex[:8]}"
    queue = SqsTransport(
        sqs_client, await create_queue_with_dlq(sqs_client, name, visibility_timeout_s=VISIBILITY_S)
    )
    await send_bodies(queue, [json.dumps({"n": i, "work_s": 30}) for i in range(5)])
    journal = tmp_path / "journal.txt"

    worker = start_worker(
        localstack_server.endpoint_url, name, journal, "--shutdown-grace-s", "0.5"
    )
    try:
        wait_for_journal(journal, "start ", 5, worker)
        code = worker.stop(60)  # SIGTERM; SIGKILL only if it is still running after 60 s
    finally:
        worker.kill()
    stderr = worker.log_since_start()
    assert code == 0, stderr[-3000:]

    started, done = journal_counts(journal)
    assert sum(started.values()) == 5
    assert not done  # cancelled mid-work: never deleted, released, so all come back
    assert sorted(await remaining(queue, 5)) == list(range(5))
    assert '"action":"grace_expired"' in stderr
