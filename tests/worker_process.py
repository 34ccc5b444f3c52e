"""Long-running processes the tests start (`python -m qworker ...` workers, a reloader), each a
`qworker._process.ManagedProcess`: in its own session, its output in a log file under the test's
`tmp_path`, followed line by line with `wait_for_line`, and stopped by PID when the test ends.

`started()` / `qworker()` are context managers: whatever the test does, leaving the block stops the
process (SIGTERM to its group, a bounded wait, then SIGKILL). One-shot commands that exit by
themselves (`qworker send`, a bad setting) stay plain `subprocess.run` calls.

The fault suites (test_faults, test_faults_handlers, test_handback, and through
tests/bound_support.py test_shutdown_bound, test_health_truth, test_faults_network) start
`qworker run <module>` workers, signal them, and look at them after they exited: a `Launcher`
starts each as a `WorkerProcess`, and `Launcher.close()` kills any still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest

from qworker._process import ManagedProcess

__all__ = [
    "ROOT",
    "SCRUBBED",
    "STOP_S",
    "TESTS",
    "WAIT_S",
    "Launcher",
    "WorkerProcess",
    "entries",
    "logged",
    "next_entry",
    "next_entry_async",
    "qworker",
    "started",
    "worker_env",
]

TESTS: Final = Path(__file__).resolve().parent
ROOT: Final = TESTS.parent
WAIT_S: Final = 90.0
"""The most any one expected line or state may take (a worker starting on a loaded machine, a
fault suite's worker through an outage's backoff, which alone can reach 20 s)."""
STOP_S: Final = 60.0
"""How long a fault suite's worker may take to exit after a SIGTERM before it is SIGKILLed."""


SCRUBBED: Final = ("QWORKER_", "AWS_ENDPOINT")
"""The variables of ours a child does not see by default: a developer's own settings."""


def worker_env(
    extra: Mapping[str, str] | None = None, *, scrub: tuple[str, ...] = SCRUBBED
) -> dict[str, str]:
    """Our environment without the variables `scrub` starts, PYTHONPATH at the project, `extra`.

    The scrub keeps a developer's own settings out of the child: it sees what the test gives it.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(scrub)}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


@contextlib.contextmanager
def started(
    argv: Sequence[str],
    *,
    cwd: Path,
    log_dir: Path,
    name: str,
    env: Mapping[str, str] | None = None,
    scrub: tuple[str, ...] = SCRUBBED,
    stdout_apart: bool = False,
) -> Iterator[ManagedProcess]:
    """Start `argv` (environment: `worker_env(env, scrub=scrub)`); stop it by PID when the block is
    left.

    Its stderr goes to ``log_dir/<name>.log``, and so does its stdout unless `stdout_apart`
    (then ``log_dir/<name>.out``).
    """
    process = ManagedProcess(
        argv,
        log_path=log_dir / f"{name}.log",
        stdout_path=log_dir / f"{name}.out" if stdout_apart else None,
        env=worker_env(env, scrub=scrub),
        cwd=cwd,
        name=name,
    )
    process.start()
    try:
        yield process
    finally:
        process.stop()


def qworker(
    *args: str,
    cwd: Path,
    log_dir: Path,
    name: str = "qworker",
    env: Mapping[str, str] | None = None,
    scrub: tuple[str, ...] = SCRUBBED,
    stdout_apart: bool = False,
) -> contextlib.AbstractContextManager[ManagedProcess]:
    """`started()` for ``python -m qworker <args>``."""
    return started(
        [sys.executable, "-m", "qworker", *args],
        cwd=cwd,
        log_dir=log_dir,
        name=name,
        env=env,
        scrub=scrub,
        stdout_apart=stdout_apart,
    )


def _entry(line: str) -> dict[str, Any] | None:
    """The JSON log entry a line holds, or None (text, a span's lines, a partial object)."""
    if not line.startswith("{"):
        return None
    try:
        found = json.loads(line)
    except json.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None


def logged(*actions: str) -> Callable[[str], bool]:
    """A `wait_for_line` match: a JSON log line whose "action" is one of `actions`."""

    def matches(line: str) -> bool:
        entry = _entry(line)
        return entry is not None and entry.get("action") in actions

    matches.__name__ = f"action in {actions}"
    return matches


def entries(lines: Iterable[str], *actions: str) -> list[dict[str, Any]]:
    """The JSON log entries among `lines`; only those with one of `actions` when any are given."""
    found = (_entry(line) for line in lines)
    return [e for e in found if e is not None and (not actions or e.get("action") in actions)]


def next_entry(process: ManagedProcess, *actions: str, timeout_s: float = WAIT_S) -> dict[str, Any]:
    """The next JSON log entry (from `process`'s read cursor on) with one of `actions`."""
    entry = _entry(process.wait_for_line(logged(*actions), timeout_s=timeout_s))
    assert entry is not None
    return entry


async def next_entry_async(
    process: ManagedProcess, *actions: str, timeout_s: float = WAIT_S
) -> dict[str, Any]:
    """`next_entry()` for an event loop."""
    entry = _entry(await process.wait_for_line_async(logged(*actions), timeout_s=timeout_s))
    assert entry is not None
    return entry


# -- the fault suites' workers --------------------------------------------------------------------


@dataclass
class WorkerProcess:
    """A `qworker run <module>` subprocess; its stderr (JSON logs) goes to its log file.

    A `ManagedProcess`: started in its own session, stopped by PID (`stop()`: SIGTERM, a bounded
    wait, then SIGKILL of its group), reaped only once it exited, so its pid stays its own.
    """

    process: ManagedProcess
    began: float
    env: dict[str, str]
    """Its environment (`qworker health` runs in it too)."""
    health_path: Path | None
    """The health file named by its ``--health-file``, or None (it writes its default one)."""

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    @property
    def alive(self) -> bool:
        return self.process.is_running()

    def signal(self, signum: signal.Signals) -> None:
        """Send `signum` to the worker alone (not its group), as `kill` would."""
        self.process.send_signal(signum)

    async def wait(self, timeout_s: float = STOP_S) -> int:
        """Wait until it exits by itself; return its exit code (negative: the signal)."""
        try:
            return await asyncio.wait_for(self.process.wait_exit_async(poll_s=0.05), timeout_s)
        except TimeoutError:
            pytest.fail(f"worker {self.pid} still running after {timeout_s:g} s:\n{self.tail()}")

    async def stop(self) -> tuple[int, float]:
        """SIGTERM, wait for the exit; return the exit code and how long shutdown took.

        A worker still running `STOP_S` after the SIGTERM is SIGKILLed (code -9).
        """
        began = time.monotonic()
        code = await asyncio.to_thread(self.process.stop, STOP_S)
        return code, time.monotonic() - began

    def logs(self) -> list[dict[str, Any]]:
        """Its JSON log entries so far."""
        return entries(self.process.lines())

    def actions(self, action: str) -> list[dict[str, Any]]:
        """Its JSON log entries so far whose "action" is `action`."""
        return entries(self.process.lines(), action)

    def tail(self, chars: int = 3000) -> str:
        return self.process.log_since_start()[-chars:]

    def health_command(self, *args: str) -> tuple[int, str]:
        """Run `qworker health <args>` (the container health check) in the worker's environment."""
        done = subprocess.run(
            [sys.executable, "-m", "qworker", "health", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return done.returncode, done.stdout.strip()


class Launcher:
    """Starts `qworker run <module>` workers for one test; `close()` kills any still running.

    The modules are found in tests/ (the worker's PYTHONPATH): fault_handlers, handback_handlers,
    bound_handlers, bound_sync_handlers, worker_handlers.
    """

    def __init__(self, endpoint_url: str, directory: Path) -> None:
        self.endpoint_url = endpoint_url
        self.directory = directory
        self.started: list[WorkerProcess] = []

    def start(
        self,
        module: str,
        queue_name: str,
        journal: Path,
        *flags: str,
        endpoint: str | None = None,
        label: str | None = None,
        env: Mapping[str, str] | None = None,
        health_file: bool = True,
        wait_time_s: int = 1,
    ) -> WorkerProcess:
        """Start a worker on `queue_name`, its handlers journaling to `journal`.

        Its log is worker-<label>.log in the test's directory (stdout in worker-<label>.out), its
        health file health-<label>.json there (without `health_file`: none named, its default).
        """
        label = label or str(len(self.started) + 1)
        health_path = self.directory / f"health-{label}.json" if health_file else None
        environment = worker_env(
            {
                "PYTHONPATH": str(TESTS),
                "QWORKER_TEST_JOURNAL": str(journal),
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
                **(env or {}),
            }
        )
        command = [
            sys.executable, "-m", "qworker", "run", module,
            "--endpoint-url", endpoint or self.endpoint_url,
            "--queue-name", queue_name,
            "--wait-time-s", str(wait_time_s),
            "--log-level", "DEBUG",
            *(["--health-file", str(health_path)] if health_path is not None else []),
            *flags,
        ]  # fmt: skip
        process = ManagedProcess(
            command,
            log_path=self.directory / f"worker-{label}.log",
            stdout_path=self.directory / f"worker-{label}.out",  # EMF documents, apart
            env=environment,
            name=f"worker-{label}",
        )
        process.start()
        worker = WorkerProcess(process, time.monotonic(), environment, health_path)
        self.started.append(worker)
        return worker

    def close(self) -> None:
        """SIGKILL the group of every worker still running, by its PID, and reap them all."""
        for worker in self.started:
            worker.process.kill()
