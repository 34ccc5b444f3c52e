"""The drill's worker subprocesses: environment, start, readiness, stop and rolling deploys."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path
from typing import Final, final

from qworker import health
from qworker._process import ManagedProcess, ProcessError
from qworker.config import DeploymentRole
from qworker.drill.config import REGION, SERVICE, DrillConfig, DrillError

READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
WORKER_SHUTDOWN_GRACE_S: Final = 10.0
POLL_S: Final = 0.2  # how often to look at a starting worker's health file


def worker_environment(  # noqa: PLR0917 (one call site, every value named there)
    config: DrillConfig,
    endpoint_url: str,
    queue: str,
    role: DeploymentRole,
    version: str,
    health_file: Path,
    ledger: Path,
) -> dict[str, str]:
    """The environment of one drill worker: `QWORKER_*` settings, dummy credentials, the ledger.

    The caller's `QWORKER_*`, `AWS_*` and `DRILL_*` variables are dropped, so a developer's own
    configuration cannot point a drill worker elsewhere.
    """
    capacity = config.canary if role is DeploymentRole.CANARY else config.primary
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QWORKER_", "AWS_", "DRILL_"))}
    path = [str(Path.cwd()), *filter(None, [env.get("PYTHONPATH")])]
    env.update(
        PYTHONPATH=os.pathsep.join(path),  # the handler module lives in the working directory
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",  # noqa: S106 (a local server's dummy credentials)
        AWS_REGION=REGION,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        QWORKER_ENDPOINT_URL=endpoint_url,
        QWORKER_QUEUE_NAME=queue,
        QWORKER_SERVICE=SERVICE,
        QWORKER_DEPLOYMENT_ROLE=role.value,
        QWORKER_VERSION=version,
        QWORKER_POLLERS=str(capacity.pollers),
        QWORKER_CONCURRENCY=str(capacity.concurrency),
        QWORKER_METRICS_INTERVAL_S=str(config.metrics_interval_s),
        QWORKER_METRICS_PUBLISH_CLOUDWATCH="true",
        QWORKER_HEALTH_FILE=str(health_file),
        QWORKER_HEALTH_INTERVAL_S="1",
        QWORKER_SHUTDOWN_GRACE_S=str(WORKER_SHUTDOWN_GRACE_S),
        QWORKER_RETRY_BASE_S="1",
        QWORKER_RETRY_MAX_S="10",
        QWORKER_LOG_FORMAT="json",
        DRILL_LEDGER=str(ledger),
    )
    return env


@final
class WorkerProcess:
    """One `qworker run` subprocess of the drill (a `ManagedProcess`: stopped by PID)."""

    def __init__(self, role: DeploymentRole, version: str, *, label: str, run_dir: Path) -> None:
        """Describe a worker; `start()` runs it."""
        self.role = role
        self.version = version
        self.label = label
        self.health_file = run_dir / f"{label}.health.json"
        self.log_file = run_dir / f"{label}.log"
        self.metrics_file = run_dir / f"{label}.emf.jsonl"
        self.process: ManagedProcess | None = None
        self.exit_code: int | None = None

    @property
    def name(self) -> str:
        """`canary v2-defect (pid 123)`."""
        pid = self.process.pid if self.process is not None else "-"
        return f"{self.role.value} {self.version} (pid {pid})"

    async def start(self, module: str, env: dict[str, str]) -> None:
        """Start `qworker run <module>` in its own session (a terminal's Ctrl-C is ours to pass).

        Its stderr (the logs) goes to `log_file`, its stdout (the EMF lines) to `metrics_file`.
        """
        self.process = ManagedProcess(
            [sys.executable, "-m", "qworker", "run", module],
            log_path=self.log_file,
            stdout_path=self.metrics_file,
            env=env,
            name=f"{self.role.value} {self.version}",
        )
        await asyncio.to_thread(self.process.start)

    def _ready(self) -> bool:
        with contextlib.suppress(OSError, ValueError):
            return health.read_report(self.health_file).ready
        return False

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Wait until its health file says ready; return the seconds it took.

        Raises:
            DrillError: It exited, or was not ready in time (with the end of its log).
        """
        if self.process is None:
            raise DrillError(f"{self.name} was never started")
        try:
            return await self.process.wait_ready_async(
                self._ready, timeout_s=timeout_s, poll_s=POLL_S
            )
        except ProcessError as exc:
            self.exit_code = self.process.returncode
            raise DrillError(f"{self.name} did not start: {exc}") from None

    async def wait_exit(self) -> int:
        """Wait until it exits by itself; return its exit code."""
        if self.process is None:
            return 0
        return await self.process.wait_exit_async()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM it, wait for its graceful exit (SIGKILL after `timeout_s`); return the code."""
        if self.process is None:
            return 0
        self.exit_code = await asyncio.to_thread(self.process.stop, timeout_s)
        return self.exit_code

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of its log."""
        try:
            text = self.log_file.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


@final
class Fleet:
    """The drill's two deployments, and the workers they retired."""

    def __init__(
        self, config: DrillConfig, *, endpoint_url: str, queue: str, run_dir: Path, ledger: Path
    ) -> None:
        """Run workers of `config.handler_module` on `queue`."""
        self.config = config
        self.endpoint_url = endpoint_url
        self.queue = queue
        self.run_dir = run_dir
        self.ledger = ledger
        self.current: dict[DeploymentRole, WorkerProcess] = {}
        self.all: list[WorkerProcess] = []

    async def start(self, role: DeploymentRole, version: str) -> tuple[WorkerProcess, float]:
        """Start a worker of `role` on `version` and wait until it is ready."""
        label = f"{len(self.all) + 1}-{role.value}-{version}"
        worker = WorkerProcess(role, version, label=label, run_dir=self.run_dir)
        self.all.append(worker)
        env = worker_environment(
            self.config,
            self.endpoint_url,
            self.queue,
            role,
            version,
            worker.health_file,
            self.ledger,
        )
        await worker.start(self.config.handler_module, env)
        took = await worker.wait_ready()
        self.current[role] = worker
        return worker, took

    async def deploy(self, role: DeploymentRole, version: str) -> str:
        """A rolling deploy: start `role` on `version`, then stop the worker it replaces."""
        old = self.current[role]
        new, took = await self.start(role, version)
        code = await old.stop()
        return f"{new.name} ready in {took:.1f} s, then {old.name} stopped (exit {code})"

    def running(self) -> list[WorkerProcess]:
        """The workers now serving."""
        return list(self.current.values())

    async def stop_all(self) -> dict[str, int]:
        """Stop every worker; return each one's exit code, by name."""
        await asyncio.gather(*(w.stop() for w in self.all))
        return {w.name: w.exit_code if w.exit_code is not None else -1 for w in self.all}
