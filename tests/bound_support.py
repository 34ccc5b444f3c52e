"""Shared pieces of the heartbeat, shutdown-bound and health fault tests.

Real `qworker run` subprocesses (handlers in tests/bound_handlers.py and bound_sync_handlers.py)
on LocalStack, directly or through tests/proxy.py; queues with the visibility timeout a test asks
for; the worker's JSON logs in a file; `accounting.account()` at the end of every scenario.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol, TypeVar
from urllib.parse import urlparse

import pytest
from accounting import Journal, Report, account
from proxy import FaultProxy
from servers import free_port

from qworker._process import ManagedProcess
from qworker.health import HealthReport, evaluate, read_report
from qworker.local import create_queue_with_dlq, dead_letter_name

__all__ = [
    "BoundQueues",
    "BoundWorker",
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

TESTS: Final = Path(__file__).resolve().parent
WAIT_S: Final = 90.0
STOP_S: Final = 60.0
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


@dataclass
class BoundWorker:
    """A `qworker run` subprocess (a `ManagedProcess`); its stderr (JSON logs) goes to a file."""

    process: ManagedProcess
    health_path: Path | None
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def alive(self) -> bool:
        return self.process.is_running()

    async def terminate(self) -> tuple[int, float]:
        """SIGTERM; return the exit code and the seconds from the signal to the exit.

        A worker still running after `STOP_S` is killed (its code is then -9).
        """
        began = time.monotonic()
        code = await asyncio.to_thread(self.process.stop, STOP_S)
        return code, time.monotonic() - began

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def actions(self, action: str) -> list[dict[str, Any]]:
        return [entry for entry in self.logs() if entry.get("action") == action]

    def tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def health_command(self, *args: str) -> tuple[int, str]:
        """Run `qworker health` (the ECS health check) in this worker's environment."""
        done = subprocess.run(
            [sys.executable, "-m", "qworker", "health", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout.strip()


class Spawn(Protocol):
    def __call__(
        self,
        queues: BoundQueues,
        journal: Path,
        *flags: str,
        module: str = "bound_handlers",
        endpoint: str | None = None,
        health_file: bool = True,
        env: dict[str, str] | None = None,
    ) -> BoundWorker: ...


@pytest.fixture
def spawn_bound(localstack_server: Any, tmp_path: Path) -> Iterator[Spawn]:
    """Start worker processes; any still running at the end is killed."""
    started: list[BoundWorker] = []

    def start(
        queues: BoundQueues,
        journal: Path,
        *flags: str,
        module: str = "bound_handlers",
        endpoint: str | None = None,
        health_file: bool = True,
        env: dict[str, str] | None = None,
    ) -> BoundWorker:
        label = len(started) + 1
        environment = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
        environment.update(
            {
                "PYTHONPATH": str(TESTS),
                "QWORKER_TEST_JOURNAL": str(journal),
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
                **(env or {}),
            }
        )
        health_path = tmp_path / f"health-{label}.json" if health_file else None
        command = [
            sys.executable, "-m", "qworker", "run", module,
            "--endpoint-url", endpoint or localstack_server.endpoint_url,
            "--queue-name", queues.name,
            "--wait-time-s", "1",
            "--log-level", "DEBUG",
            *(["--health-file", str(health_path)] if health_path is not None else []),
            *flags,
        ]  # fmt: skip
        process = ManagedProcess(
            command,
            log_path=tmp_path / f"worker-{label}.log",
            stdout_path=tmp_path / f"worker-{label}.out",  # EMF documents, kept out of the log
            env=environment,
            name=f"worker-{label}",
        )
        process.start()
        worker = BoundWorker(process, health_path, environment)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.process.kill()  # reaps one that exited; kills one still running


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
    workers: Sequence[BoundWorker] = (),
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
    workers: Sequence[BoundWorker] = (),
    timeout_s: float = WAIT_S,
) -> Journal:
    """Wait until the handlers' journal satisfies `done`."""
    await wait_for(lambda: done(Journal.read(journal)), what, workers, timeout_s)
    return Journal.read(journal)


def health_now(worker: BoundWorker) -> list[str]:
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
