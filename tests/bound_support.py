"""Shared pieces of the heartbeat, shutdown-bound and health fault tests.

Real `qworker run` subprocesses (handlers in tests/bound_handlers.py and bound_sync_handlers.py),
each a `WorkerProcess` from tests/worker_process.py's `Launcher`, on LocalStack, directly or
through tests/proxy.py; queues with the visibility timeout a test asks for; the worker's JSON logs
in a file; `accounting.account()` at the end of every scenario.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar
from urllib.parse import urlparse

import pytest
from accounting import Journal, Report, account
from proxy import FaultProxy
from servers import free_port
from worker_process import WAIT_S, Launcher, WorkerProcess

from qworker.health import HealthReport, evaluate, read_report
from qworker.local import create_queue_with_dlq, dead_letter_name

__all__ = [
    "BoundQueues",
    "Spawn",
    "account_bound",
    "fault_proxy",
    "health_now",
    "job",
    "make_bound_queues",
    "scenario",
    "spawn_bound",
    "wait_for",
    "wait_journal",
]

POLL_S: Final = 0.05
"""How often a test looks at another process's files or the queue (nothing else to wait on)."""

Test = TypeVar("Test", bound=Callable[..., Any])


def scenario(test: Test) -> Test:
    """Mark a fault scenario: worker processes against LocalStack."""
    for mark in (pytest.mark.integration, pytest.mark.localstack, pytest.mark.slow):
        test = mark(test)
    return test


def job(n: int, **fields: object) -> str:
    """A bound_handlers.Job body."""
    return json.dumps({"n": n, **fields})


@dataclass(frozen=True, slots=True)
class BoundQueues:
    """A fresh source queue and its dead-letter queue on LocalStack."""

    client: Any
    name: str
    url: str
    dlq_url: str
    visibility_s: int
    max_receive_count: int


async def make_bound_queues(
    client: Any, prefix: str, *, visibility_s: int, max_receive_count: int = 5
) -> BoundQueues:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    url = await create_queue_with_dlq(
        client, name, max_receive_count=max_receive_count, visibility_timeout_s=visibility_s
    )
    dlq_url = str((await client.get_queue_url(QueueName=dead_letter_name(name)))["QueueUrl"])
    return BoundQueues(client, name, url, dlq_url, visibility_s, max_receive_count)


class Spawn:
    """What `spawn_bound` gives a test: starts `qworker run` workers through a `Launcher`."""

    def __init__(self, launcher: Launcher) -> None:
        self.launcher = launcher

    def __call__(
        self,
        queues: BoundQueues,
        journal: Path,
        *flags: str,
        module: str = "bound_handlers",
        endpoint: str | None = None,
        health_file: bool = True,
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """Start a worker on `queues`; without `health_file` it writes its default health file."""
        return self.launcher.start(
            module,
            queues.name,
            journal,
            *flags,
            endpoint=endpoint,
            health_file=health_file,
            env=env,
        )


@pytest.fixture
def spawn_bound(localstack_server: Any, tmp_path: Path) -> Iterator[Spawn]:
    """Start worker processes; any still running at the end is killed."""
    launcher = Launcher(localstack_server.endpoint_url, tmp_path)
    yield Spawn(launcher)
    launcher.close()  # reaps one that exited; kills one still running


@pytest.fixture
async def fault_proxy(localstack_server: Any) -> AsyncIterator[FaultProxy]:
    """A FaultProxy in front of LocalStack, passing traffic; closed at the end."""
    target = urlparse(localstack_server.endpoint_url)
    proxy = FaultProxy(str(target.hostname), int(target.port or 0), free_port())
    await proxy.set_mode("pass")
    yield proxy
    await proxy.aclose()


async def wait_for(
    predicate: Callable[[], bool],
    what: str,
    workers: Sequence[WorkerProcess] = (),
    timeout_s: float = WAIT_S,
) -> None:
    """Wait until `predicate()` holds, while `workers` stay alive."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for worker in workers:
            assert worker.alive, f"worker {worker.pid} died waiting for {what}:\n{worker.tail()}"
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")
        # Another process's files and the queue are all there is to watch.
        await asyncio.sleep(POLL_S)


async def wait_journal(
    journal: Path,
    done: Callable[[Journal], bool],
    what: str,
    workers: Sequence[WorkerProcess] = (),
    timeout_s: float = WAIT_S,
) -> Journal:
    """Wait until the handlers' journal satisfies `done`."""
    await wait_for(lambda: done(Journal.read(journal)), what, workers, timeout_s)
    return Journal.read(journal)


def health_now(worker: WorkerProcess) -> list[str]:
    """What `qworker health --health-file` decides right now (empty: healthy), in-process."""
    assert worker.health_path is not None
    try:
        report: HealthReport = read_report(worker.health_path)
    except (OSError, ValueError) as exc:
        return [f"no readable health file: {exc}"]
    return evaluate(report, now_s=time.time())


async def queue_settled(queues: BoundQueues) -> bool:
    """Whether the source queue holds nothing: visible, in flight or delayed."""
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    response = await queues.client.get_queue_attributes(QueueUrl=queues.url, AttributeNames=names)
    return not any(int(v) for v in response["Attributes"].values())


async def account_bound(
    scenario_name: str,
    queues: BoundQueues,
    *,
    sent: dict[int, str],
    journal: Path,
    timings: dict[str, float],
    notes: Sequence[str] = (),
    quiet_s: float | None = None,
) -> Report:
    """Drain both queues and account for every message (quiet longer than the visibility)."""
    return await account(
        scenario_name,
        queues.client,
        queue_url=queues.url,
        dlq_url=queues.dlq_url,
        sent=sent,
        journal=journal,
        max_receive_count=queues.max_receive_count,
        quiet_s=quiet_s if quiet_s is not None else queues.visibility_s + 2,
        timings=timings,
        notes=notes,
    )
