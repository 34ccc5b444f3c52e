"""`qworker drill`: a canary drill on a local queue, from first message to rollback, in one command.

The drill plays the pipeline's canary stage on one machine, with real processes and real metrics:

1. a server: LocalStack started from `scripts/localstack.py` in its own virtualenv on 127.0.0.1
   (stopped by PID at the end), a running server given by `--endpoint-url`, or moto in-process
   (`--embedded`);
2. one queue and its dead-letter queue (redrive policy, `maxReceiveCount` 5);
3. two `qworker run handlers.drill` subprocesses on that queue: the PRIMARY on the good version
   `v1` with many pollers, and the CANARY on `v2` (or the defective `v2-defect` with `--defect`)
   with one poller and a few slots, so it receives about a tenth of the traffic;
4. a producer sending a steady mix of orders, payments and e-mails;
5. the canary judge (`qworker.canary.judge.run_bake`, the pipeline's code) reading the two roles'
   first-attempt counts from the server's CloudWatch, where both workers publish every 2 s,
   under `DRILL_POLICY` (sized so a drill decides in about a minute);
6. the decision's action, as a rolling deploy (the new worker is up before the old one stops):
   FAIL rolls back (the canary is restarted on `v1`), PASS promotes (the primary is restarted on
   the canary's version);
7. a drain and an audit: every message sent must have succeeded and been deleted, none may be in
   the dead-letter queue (a failing canary releases its failures at once, so the primary retries
   them), and every worker must exit 0.

It prints the evidence (a table per role with the p-value, decision and reasons), the measured
traffic share, the audit, and writes a PNG chart of both roles' failure rates over the bake; the
logs, the attempt ledger and `report.json` go to the run directory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Final, Protocol, final

import boto3
import botocore.config
import botocore.exceptions

from qworker import health
from qworker.canary.judge import (
    Decision,
    InconclusivePolicy,
    JudgePolicy,
    Reading,
    Verdict,
    resolve,
    run_bake,
)
from qworker.canary.reader import CloudWatchSource, MetricsQuery
from qworker.chart import Line, Series, line_chart
from qworker.exceptions import ConfigError, TransportError
from qworker.local import EmbeddedSqs, create_queue_with_dlq, dead_letter_name
from qworker.producer import send_bodies
from qworker.settings import DeploymentRole, QWorkerSettings
from qworker.transport import SqsTransport
from qworker.worker import open_sqs_client

__all__ = [
    "DRILL_POLICY",
    "Accounting",
    "Capacity",
    "DrillConfig",
    "DrillError",
    "DrillReport",
    "WorkerTally",
    "drill_body",
    "format_report",
    "register",
    "run_drill",
    "worker_environment",
]

GOOD_VERSION: Final = "v1"
NEW_VERSION: Final = "v2"
DEFECT_VERSION: Final = "v2-defect"
SERVICE: Final = "qworker-drill"
REGION: Final = "us-east-1"
HANDLER_MODULE: Final = "handlers.drill"
LOCALSTACK_SCRIPT: Final = Path(__file__).resolve().parent.parent / "scripts" / "localstack.py"

DRILL_POLICY: Final = JudgePolicy(
    min_canary_messages=600,
    min_primary_messages=600,
    min_bake_s=60.0,
    max_bake_s=240.0,
    alpha=0.01,
    abs_margin=0.01,
    rel_margin=0.5,
    min_test_messages=100,
    min_test_failures=5,
    silent_after_s=60.0,
    silent_min_primary_processed=200,
    inconclusive_policy=InconclusivePolicy.FAIL,
)
"""The drill's judge policy. With 1% transient failures on both roles and a 10% canary share,
simulation gave 0.3-1% false alarms (A/A) and 99.5% detection of the defect (canary at 5%)."""

MIX: Final = (("order", 0.4), ("payment", 0.4), ("email", 0.2))
"""The traffic: kinds of event and their shares."""
JPY_SHARE: Final = 0.1
"""The share of payments in yen: the ones the defective version fails."""

RATE_LOCALSTACK: Final = 100.0
RATE_EMBEDDED: Final = 40.0
SEND_TICK_S: Final = 0.05
"""The producer sends a small batch every tick: a steady stream, as real traffic arrives."""
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0
WORKER_SHUTDOWN_GRACE_S: Final = 10.0
POLL_S: Final = 0.2
MAX_RECEIVE_COUNT: Final = 5


class DrillError(RuntimeError):
    """The drill could not run to the end (a worker died, the server failed, ...)."""


class _Aborted(Exception):
    """Ends the bake thread early."""


class Action(enum.StrEnum):
    """What the drill did with the verdict."""

    ROLLBACK = "rollback"
    PROMOTE = "promote"


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Capacity:
    """How much of the queue one role's worker takes: its pollers and handler slots."""

    pollers: int
    concurrency: int


@final
@dataclasses.dataclass(frozen=True, slots=True)
class DrillConfig:
    """Everything a drill needs; the defaults are the documented drill."""

    defect: bool = False
    endpoint_url: str | None = None
    embedded: bool = False
    rate: float | None = None  # messages per second; None: per backend
    primary: Capacity = Capacity(pollers=9, concurrency=36)
    canary: Capacity = Capacity(pollers=1, concurrency=4)
    policy: JudgePolicy = DRILL_POLICY
    look_interval_s: float = 5.0
    metrics_interval_s: float = 2.0
    after_s: float = 10.0
    drain_timeout_s: float = 120.0
    handler_module: str = HANDLER_MODULE
    out_dir: Path | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        """Reject settings that cannot work.

        Raises:
            ConfigError: Naming the setting.
        """
        if self.endpoint_url is not None and self.embedded:
            raise ConfigError("give --endpoint-url or --embedded, not both")
        checks = {
            "--rate": self.rate is None or self.rate > 0,
            "--look-interval-s": self.look_interval_s > 0,
            "--metrics-interval-s": 0 < self.metrics_interval_s <= 60,  # noqa: PLR2004 (the setting's limit)
            "--after-s": self.after_s >= 0,
            "--drain-timeout-s": self.drain_timeout_s > 0,
        }
        if bad := [flag for flag, ok in checks.items() if not ok]:
            raise ConfigError(f"drill: {', '.join(bad)} out of range")

    @property
    def canary_version(self) -> str:
        """The version the canary starts on."""
        return DEFECT_VERSION if self.defect else NEW_VERSION

    @property
    def send_rate(self) -> float:
        """Messages per second the producer sends."""
        if self.rate is not None:
            return self.rate
        return RATE_EMBEDDED if self.embedded else RATE_LOCALSTACK

    @property
    def expected(self) -> Decision:
        """The decision a correct judge reaches on this drill."""
        return Decision.FAIL if self.defect else Decision.PASS


# -- traffic --------------------------------------------------------------------------------------


def drill_body(event_id: str, rng: random.Random) -> str:
    """One event of the drill's traffic, as a JSON body `handlers.drill` accepts.

    Args:
        event_id: The event's unique id.
        rng: Chooses the kind, amount and currency.
    """
    kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    if kind == "payment":
        currency = "JPY" if rng.random() < JPY_SHARE else rng.choice(("EUR", "USD", "GBP"))
    else:
        currency = rng.choice(("EUR", "USD"))
    amount = 0 if kind == "email" else rng.randrange(100, 500_000)
    return json.dumps(
        {
            "event_id": event_id,
            "kind": kind,
            "amount_cents": amount,
            "currency": currency,
        }
    )


@final
class Producer:
    """Sends the drill's traffic at a steady rate until stopped."""

    def __init__(self, *, rate: float, run_id: str, seed: int | None) -> None:
        """Send `rate` messages per second; ids are `<run_id>-<n>`."""
        self.rate = rate
        self.run_id = run_id
        self.sent: list[str] = []
        self._rng = random.Random(seed)  # noqa: S311 (traffic, not security)
        self._batch = max(1, min(10, round(rate * SEND_TICK_S)))

    async def run(self, transport: SqsTransport, stop: asyncio.Event) -> None:
        """Send until `stop` is set.

        Raises:
            TransportError: A message could not be sent.
        """
        loop = asyncio.get_running_loop()
        period = self._batch / self.rate
        next_at = loop.time()
        while not stop.is_set():
            ids = [f"{self.run_id}-{len(self.sent) + i:06d}" for i in range(self._batch)]
            await send_bodies(transport, [drill_body(i, self._rng) for i in ids])
            self.sent.extend(ids)
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))


# -- servers --------------------------------------------------------------------------------------


class _Server(Protocol):
    @property
    def endpoint_url(self) -> str: ...

    @property
    def pid(self) -> int: ...

    def stop(self) -> None: ...


def _localstack_script() -> Any:  # noqa: ANN401 (a module loaded from a file path)
    """Load `scripts/localstack.py` (not a package, and it must not shadow `localstack`)."""
    name = "qworker_localstack_script"
    if (loaded := sys.modules.get(name)) is not None:
        return loaded
    spec = importlib.util.spec_from_file_location(name, LOCALSTACK_SCRIPT)
    if not LOCALSTACK_SCRIPT.exists() or spec is None or spec.loader is None:
        raise ConfigError(
            f"{LOCALSTACK_SCRIPT} not found: run the drill from a qworker source checkout, or "
            "give --endpoint-url of a running LocalStack, or --embedded"
        )
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its classes look their module up while being defined
    spec.loader.exec_module(module)
    return module


@contextlib.asynccontextmanager
async def _server(
    config: DrillConfig, log_dir: Path, say: Callable[[str], None]
) -> AsyncIterator[tuple[str, str]]:
    """Yield (endpoint, description) of the server the drill runs on; stop it if we started it."""
    if config.endpoint_url is not None:
        yield config.endpoint_url, f"the server at {config.endpoint_url}"
        return
    if config.embedded:
        # werkzeug logs every request at INFO unless logging is configured: keep its warnings only.
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        embedded = EmbeddedSqs(port=0, state_file=None)
        endpoint = await asyncio.to_thread(embedded.start)
        try:
            yield endpoint, f"moto (embedded, in this process) at {endpoint}"
        finally:
            await asyncio.to_thread(embedded.stop)
        return
    script = _localstack_script()
    say(f"LocalStack {script.VERSION}: installing in {script.venv_dir()} if missing (1-2 min)")
    data_dir = Path(tempfile.mkdtemp(prefix="qworker-drill-localstack-"))
    try:
        await asyncio.to_thread(script.install)
        server: _Server = await asyncio.to_thread(_start_localstack, script, data_dir)
    except script.LocalStackError as exc:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise DrillError(f"LocalStack did not start: {exc}") from None
    try:
        yield (
            server.endpoint_url,
            f"LocalStack {script.VERSION} (pid {server.pid}) at {server.endpoint_url}",
        )
    finally:
        await asyncio.to_thread(server.stop)
        say(f"stopped LocalStack (pid {server.pid})")
        with contextlib.suppress(OSError):
            shutil.copyfile(data_dir / "localstack.log", log_dir / "localstack.log")
        shutil.rmtree(data_dir, ignore_errors=True)


def _start_localstack(script: Any, data_dir: Path) -> _Server:  # noqa: ANN401 (a loaded module)
    """Start LocalStack with its own temporary directory.

    Where LocalStack believes it runs in a container (as here), it keeps its CloudWatch database
    in `$TMPDIR/localstack/state`, whatever FILESYSTEM_ROOT says, and deletes `$TMPDIR/localstack`
    when it stops: two instances sharing `/tmp` delete each other's metrics. A private TMPDIR
    keeps this instance's metrics its own.
    """
    tmp = data_dir / "tmp"
    tmp.mkdir()
    saved = os.environ.get("TMPDIR")
    os.environ["TMPDIR"] = str(tmp)  # start() passes our environment on; restored below
    try:
        server: _Server = script.start(fast=True, data_dir=data_dir)
    finally:
        if saved is None:
            del os.environ["TMPDIR"]
        else:
            os.environ["TMPDIR"] = saved
    return server


# -- workers --------------------------------------------------------------------------------------


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
    """One `qworker run` subprocess of the drill."""

    def __init__(self, role: DeploymentRole, version: str, *, label: str, run_dir: Path) -> None:
        """Describe a worker; `start()` runs it."""
        self.role = role
        self.version = version
        self.label = label
        self.health_file = run_dir / f"{label}.health.json"
        self.log_file = run_dir / f"{label}.log"
        self.metrics_file = run_dir / f"{label}.emf.jsonl"
        self.process: asyncio.subprocess.Process | None = None
        self.exit_code: int | None = None

    @property
    def name(self) -> str:
        """`canary v2-defect (pid 123)`."""
        pid = self.process.pid if self.process is not None else "-"
        return f"{self.role.value} {self.version} (pid {pid})"

    async def start(self, module: str, env: dict[str, str]) -> None:
        """Start `qworker run <module>` in its own session (a terminal's Ctrl-C is ours to pass)."""
        with self.log_file.open("ab") as log, self.metrics_file.open("ab") as metrics:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "qworker",
                "run",
                module,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=metrics,
                stderr=log,
                start_new_session=True,
            )

    async def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Wait until its health file says ready; return the seconds it took.

        Raises:
            DrillError: It exited, or was not ready in time (with the end of its log).
        """
        began = time.monotonic()
        while time.monotonic() - began < timeout_s:
            if self.process is None or self.process.returncode is not None:
                raise DrillError(f"{self.name} exited at start-up:\n{self.log_tail()}")
            with contextlib.suppress(OSError, ValueError):
                if health.read_report(self.health_file).ready:
                    return time.monotonic() - began
            await asyncio.sleep(POLL_S)  # bounded polling of a subprocess's health file
        raise DrillError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    async def wait_exit(self) -> int:
        """Wait until it exits by itself; return its exit code."""
        if self.process is None:
            return 0
        return await self.process.wait()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM it, wait for its graceful exit (SIGKILL after `timeout_s`); return the code."""
        process = self.process
        if process is None:
            return 0
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        self.exit_code = process.returncode
        return self.exit_code if self.exit_code is not None else -1

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


# -- judging --------------------------------------------------------------------------------------


def _judge_clients(endpoint_url: str) -> tuple[Any, Any]:
    session = boto3.session.Session(
        aws_access_key_id="test",
        aws_secret_access_key="test",  # noqa: S106 (a local server's dummy credentials)
        region_name=REGION,
    )
    config = botocore.config.Config(retries={"mode": "standard", "max_attempts": 8})
    cloudwatch = session.client("cloudwatch", endpoint_url=endpoint_url, config=config)
    sqs = session.client("sqs", endpoint_url=endpoint_url, config=config)
    return cloudwatch, sqs


def _share(verdict: Verdict) -> float | None:
    canary = verdict.evidence.canary.first_attempt_processed
    total = canary + verdict.evidence.primary.first_attempt_processed
    return canary / total if total else None


def _pct(value: float | None, spec: str = ".2%") -> str:
    return "-" if value is None else format(value, spec)


def _progress(verdict: Verdict) -> str:
    ev = verdict.evidence
    c, p = ev.canary, ev.primary
    z = "-" if ev.z is None or ev.critical_z is None else f"{ev.z:.2f} (needs {ev.critical_z:.2f})"
    return (
        f"[{ev.elapsed_s:5.0f} s] {verdict.decision.value}: canary {c.first_attempt_failed}/"
        f"{c.first_attempt_processed} failed ({_pct(ev.canary_rate)}), primary "
        f"{p.first_attempt_failed}/{p.first_attempt_processed} ({_pct(ev.primary_rate)}), "
        f"canary share {_pct(_share(verdict), '.1%')}, z {z}"
    )


def _bake(  # noqa: PLR0917 (one call site)
    read: Callable[[], Reading],
    config: DrillConfig,
    started_s: float,
    looks: list[Verdict],
    abort: threading.Event,
    say: Callable[[str], None],
) -> Verdict:
    """Run the judge's bake (in a thread: it is synchronous); `abort` ends it early."""

    def sleep(seconds: float) -> None:
        if abort.wait(seconds):
            raise _Aborted

    def on_look(verdict: Verdict) -> None:
        looks.append(verdict)
        say(_progress(verdict))

    return run_bake(
        read,
        time.time,
        sleep,
        config.policy,
        interval_s=config.look_interval_s,
        started_s=started_s,
        on_look=on_look,
    )


async def _judge(  # noqa: PLR0917 (one call site)
    config: DrillConfig,
    endpoint_url: str,
    queue: str,
    bake_from: datetime,
    started_s: float,
    watched: Sequence[asyncio.Future[Any]],
    say: Callable[[str], None],
) -> tuple[Verdict, list[Verdict]]:
    """Bake until the judge decides; fail if a worker or the producer ends first."""
    cloudwatch, sqs = _judge_clients(endpoint_url)
    looks: list[Verdict] = []
    abort = threading.Event()
    try:
        source = CloudWatchSource(
            cloudwatch,
            MetricsQuery(service=SERVICE, queue=queue),
            bake_from,
            sqs=sqs,
            backlog_queue=queue,
        )
        bake = asyncio.ensure_future(
            asyncio.to_thread(_bake, source, config, started_s, looks, abort, say)
        )
        try:
            await asyncio.wait([bake, *watched], return_when=asyncio.FIRST_COMPLETED)
        finally:
            abort.set()
            await asyncio.wait([bake])  # the thread ends at its next sleep
        if not bake.done() or bake.exception() is not None:
            ended = [f for f in watched if f.done()]
            raise DrillError(f"the bake ended early: {_describe_end(bake, ended)}")
        return bake.result(), looks
    finally:
        cloudwatch.close()
        sqs.close()


def _describe_end(bake: asyncio.Future[Verdict], ended: Sequence[asyncio.Future[Any]]) -> str:
    if bake.done() and (error := bake.exception()) is not None and not isinstance(error, _Aborted):
        return f"the judge could not read the metrics: {error}"
    if not ended:
        return "interrupted"
    first = ended[0]
    if first.exception() is not None:
        return f"the producer failed: {first.exception()}"
    return (
        f"a worker exited with code {first.result()}"
        if first.result() is not None
        else ("the producer stopped")
    )


# -- audit ----------------------------------------------------------------------------------------


@final
@dataclasses.dataclass(frozen=True, slots=True)
class WorkerTally:
    """What one version in one role did, from the attempt ledger."""

    role: str
    version: str
    attempts: int = 0
    first_attempts: int = 0
    first_attempt_failed: int = 0
    succeeded: int = 0

    @property
    def first_attempt_rate(self) -> float | None:
        """First-attempt failure rate."""
        return self.first_attempt_failed / self.first_attempts if self.first_attempts else None


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Accounting:
    """Where every message the drill sent ended up."""

    sent: int
    succeeded: int  # distinct events whose handler succeeded
    lost: tuple[str, ...]  # sent but never succeeded
    succeeded_twice: int  # at-least-once: events that succeeded more than once
    left_on_queue: int
    dead_lettered: int
    canary_failed: int  # distinct events a canary failed at least once
    canary_failures_recovered_by: dict[str, int]  # who then succeeded them ("primary v1": n)
    tallies: tuple[WorkerTally, ...]

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing left, nothing dead-lettered."""
        return not self.lost and self.left_on_queue == 0 and self.dead_lettered == 0


def _read_ledger(ledger: Path) -> list[dict[str, Any]]:
    try:
        lines = ledger.read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def account(
    sent: Iterable[str], ledger: Path, *, left_on_queue: int, dead_lettered: int
) -> Accounting:
    """Audit the drill from the handlers' attempt ledger and the queues' final depths.

    Args:
        sent: The ids of every event sent.
        ledger: The JSON-lines file `handlers.drill` appends each attempt to.
        left_on_queue: Messages still on the queue (visible, in flight or delayed).
        dead_lettered: Messages in the dead-letter queue.
    """
    attempts = _read_ledger(ledger)
    successes = Counter(a["event_id"] for a in attempts if a["outcome"] == "succeeded")
    sent_ids = list(sent)
    lost = tuple(i for i in sent_ids if i not in successes)
    tallies: dict[tuple[str, str], Counter[str]] = {}
    for a in attempts:
        tally = tallies.setdefault((a["role"], a["version"]), Counter())
        tally["attempts"] += 1
        tally["succeeded"] += a["outcome"] == "succeeded"
        if a["receive_count"] == 1:
            tally["first"] += 1
            tally["first_failed"] += a["outcome"] == "failed"
    canary_failed = {
        a["event_id"] for a in attempts if a["role"] == "canary" and a["outcome"] == "failed"
    }
    recovered = Counter(
        f"{a['role']} {a['version']}"
        for a in attempts
        if a["outcome"] == "succeeded" and a["event_id"] in canary_failed
    )
    return Accounting(
        sent=len(sent_ids),
        succeeded=len(successes),
        lost=lost,
        succeeded_twice=sum(1 for n in successes.values() if n > 1),
        left_on_queue=left_on_queue,
        dead_lettered=dead_lettered,
        canary_failed=len(canary_failed),
        canary_failures_recovered_by=dict(recovered),
        tallies=tuple(
            WorkerTally(role, version, t["attempts"], t["first"], t["first_failed"], t["succeeded"])
            for (role, version), t in sorted(
                tallies.items(), key=lambda kv: (kv[0][0] != "canary", kv[0])
            )
        ),
    )


async def _depth(client: Any, url: str) -> int:  # noqa: ANN401 (aiobotocore is untyped)
    names = [
        "ApproximateNumberOfMessages",
        "ApproximateNumberOfMessagesNotVisible",
        "ApproximateNumberOfMessagesDelayed",
    ]
    response = await client.get_queue_attributes(QueueUrl=url, AttributeNames=names)
    attributes = response.get("Attributes", {})
    return sum(int(attributes.get(name, 0)) for name in names)


async def _drain(client: Any, url: str, timeout_s: float) -> int:  # noqa: ANN401 (aiobotocore)
    """Wait until the queue is empty (twice in a row) or `timeout_s` passed; return its depth."""
    began = time.monotonic()
    empty_looks = 0
    depth = await _depth(client, url)
    while time.monotonic() - began < timeout_s:
        empty_looks = empty_looks + 1 if depth == 0 else 0
        if empty_looks >= 2:  # noqa: PLR2004 (twice: the counts are approximate)
            return 0
        await asyncio.sleep(0.5)  # bounded polling of the server's queue depth
        depth = await _depth(client, url)
    return depth


# -- report ---------------------------------------------------------------------------------------


@final
@dataclasses.dataclass(frozen=True, slots=True)
class DrillReport:
    """What a drill did and found."""

    server: str
    queue: str
    rate: float
    primary_version: str
    canary_version: str
    policy: JudgePolicy
    verdict: Verdict
    decision: Decision  # after the inconclusive policy
    expected: Decision
    action: Action
    action_detail: str
    looks: tuple[Verdict, ...]
    accounting: Accounting
    exit_codes: dict[str, int]
    chart: Path
    run_dir: Path

    @property
    def traffic_share(self) -> float | None:
        """The canary's share of first attempts over the bake."""
        return _share(self.verdict)

    @property
    def as_expected(self) -> bool:
        """Whether the judge decided what the drill was built to show."""
        return self.decision is self.expected

    @property
    def ok(self) -> bool:
        """As expected, nothing lost or dead-lettered, every worker exited 0."""
        return self.as_expected and self.accounting.ok and not any(self.exit_codes.values())

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in {"verdict", "looks", "policy", "accounting"}
            },
            "policy": dataclasses.asdict(self.policy),
            "verdict": {
                "decision": self.verdict.decision,
                "reasons": list(self.verdict.reasons),
                "evidence": dataclasses.asdict(self.verdict.evidence),
            },
            "traffic_share": self.traffic_share,
            "accounting": {**dataclasses.asdict(self.accounting), "ok": self.accounting.ok},
            "looks": [dataclasses.asdict(v.evidence) for v in self.looks],
            "as_expected": self.as_expected,
            "ok": self.ok,
        }


def describe_policy(policy: JudgePolicy) -> str:
    """The policy in one paragraph."""
    return (
        f"pass needs >= {policy.min_canary_messages} canary and >= "
        f"{policy.min_primary_messages} primary first attempts and >= {policy.min_bake_s:g} s, "
        f"with the canary surely below the {policy.absolute_failure_ceiling:.0%} ceiling; fail as "
        f"soon as the canary is worse than the primary by more than max({policy.abs_margin:.1%}, "
        f"{policy.rel_margin:.0%} of the primary's rate) at one-sided alpha {policy.alpha:g} "
        f"(sequential boundary, >= {policy.min_test_messages} canary first attempts and "
        f">= {policy.min_test_failures} failures), or surely above the ceiling; no decision "
        f"after {policy.max_bake_s:g} s is inconclusive ({policy.inconclusive_policy.value})"
    )


def _evidence_table(report: DrillReport) -> list[str]:
    ev = report.verdict.evidence
    verdict = report.verdict.decision.value
    rows = [
        ("role", "version", "first attempts", "failed", "rate", "p-value", "decision"),
        (
            "canary",
            report.canary_version,
            str(ev.canary.first_attempt_processed),
            str(ev.canary.first_attempt_failed),
            _pct(ev.canary_rate),
            "-" if ev.p_value is None else f"{ev.p_value:.2g}",
            verdict,
        ),
        (
            "primary",
            report.primary_version,
            str(ev.primary.first_attempt_processed),
            str(ev.primary.first_attempt_failed),
            _pct(ev.primary_rate),
            "(baseline)",
            "(baseline)",
        ),
    ]
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)  # noqa: PLR2004 (two text columns)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells))
    return lines


def _audit_lines(accounting: Accounting) -> list[str]:
    a = accounting
    rows: list[Sequence[str]] = [
        ("role", "version", "attempts", "first attempts", "failed", "rate", "succeeded")
    ]
    rows += [
        (
            t.role,
            t.version,
            str(t.attempts),
            str(t.first_attempts),
            str(t.first_attempt_failed),
            _pct(t.first_attempt_rate),
            str(t.succeeded),
        )
        for t in a.tallies
    ]
    recovered = ", ".join(
        f"{n} by {who}" for who, n in sorted(a.canary_failures_recovered_by.items())
    )
    lines = [
        (
            f"audit ({'OK' if a.ok else 'PROBLEM'}): sent {a.sent}, succeeded and deleted "
            f"{a.succeeded}, lost {len(a.lost)}, left on the queue {a.left_on_queue}, in the DLQ "
            f"{a.dead_lettered} (succeeded more than once: {a.succeeded_twice})"
        ),
        f"  the canary failed {a.canary_failed} messages; later successes: {recovered or 'none'}",
        *_table(rows),
    ]
    if a.lost:
        lines.append(f"  lost, e.g.: {', '.join(a.lost[:5])}")
    return lines


def format_report(report: DrillReport) -> str:
    """The drill's evidence, decision, action, audit and chart, for people."""
    ev = report.verdict.evidence
    share = report.traffic_share
    c, p = ev.canary.first_attempt_processed, ev.primary.first_attempt_processed
    title = report.verdict.decision.value.upper()
    if report.decision is not report.verdict.decision:
        title += f" -> {report.decision.value.upper()} (inconclusive policy)"
    expected = (
        "as expected"
        if report.as_expected
        else (
            f"NOT as expected ({report.expected.value}): the judge errs on about "
            f"{report.policy.alpha:.0%} of healthy canaries and misses a few bad ones"
        )
    )
    lines = [
        "",
        (
            f"qworker drill: canary {report.canary_version} vs primary {report.primary_version} "
            f"on queue {report.queue}, {report.rate:g} msg/s, {report.server}"
        ),
        f"drill policy: {describe_policy(report.policy)}",
        "",
        f"evidence at the decision ({ev.elapsed_s:.0f} s of traffic; CloudWatch, first attempts):",
        *_evidence_table(report),
        (
            f"  traffic share (first attempts): canary {_pct(share, '.1%')} ({c} of {c + p}), "
            f"primary {_pct(None if share is None else 1 - share, '.1%')}"
        ),
        "",
        f"decision: {title} -> {report.action.value.upper()} ({expected})",
        *(f"  - {reason}" for reason in report.verdict.reasons),
        f"action: {report.action_detail}",
        "",
        *_audit_lines(report.accounting),
        "",
        "worker exit codes: " + ", ".join(f"{n}: {c}" for n, c in report.exit_codes.items()),
        f"chart: {report.chart}",
        f"logs, ledger and report.json: {report.run_dir}",
        f"drill {'OK' if report.ok else 'FAILED'}",
    ]
    return "\n".join(lines) + "\n"


CANARY_COLOR: Final = (214, 39, 40)
PRIMARY_COLOR: Final = (31, 119, 180)
DECISION_COLOR: Final = (110, 0, 110)
CEILING_COLOR: Final = (140, 140, 140)


def render_chart(report: DrillReport) -> bytes:
    """The PNG chart of both roles' cumulative first-attempt failure rates over the bake."""
    canary, primary = [], []
    for look in report.looks:
        ev = look.evidence
        if ev.canary_rate is not None:
            canary.append((ev.elapsed_s, ev.canary_rate * 100))
        if ev.primary_rate is not None:
            primary.append((ev.elapsed_s, ev.primary_rate * 100))
    ceiling = report.policy.absolute_failure_ceiling * 100
    ev = report.verdict.evidence
    n_canary, n_primary = ev.canary.first_attempt_processed, ev.primary.first_attempt_processed
    return line_chart(
        [
            Series(f"canary {report.canary_version} (n={n_canary})", canary, CANARY_COLOR),
            Series(f"primary {report.primary_version} (n={n_primary})", primary, PRIMARY_COLOR),
        ],
        title="canary drill: first-attempt failure rate",
        x_label="seconds since the traffic started",
        y_label="failure rate since start (%)",
        lines=[
            Line(
                report.verdict.evidence.elapsed_s,
                f"{report.verdict.decision.value}: {report.action.value}",
                DECISION_COLOR,
            ),
            Line(ceiling, f"ceiling {ceiling:g}%", CEILING_COLOR, vertical=False),
        ],
        x_min=0.0,
        y_format=lambda v: f"{v:g}%",
    )


# -- the drill ------------------------------------------------------------------------------------


def _say(text: str) -> None:
    print(f"drill: {text}", file=sys.stderr, flush=True)  # noqa: T201 (progress for the person)


async def _stop_traffic(task: asyncio.Task[None], stop: asyncio.Event) -> None:
    stop.set()
    with contextlib.suppress(TransportError, asyncio.CancelledError):
        await task


async def _start_workers(fleet: Fleet, config: DrillConfig, say: Callable[[str], None]) -> None:
    for role, version, capacity in (
        (DeploymentRole.PRIMARY, GOOD_VERSION, config.primary),
        (DeploymentRole.CANARY, config.canary_version, config.canary),
    ):
        worker, took = await fleet.start(role, version)
        say(
            f"{worker.name} ready in {took:.1f} s: {capacity.pollers} pollers, "
            f"{capacity.concurrency} slots"
        )


async def _act(
    fleet: Fleet, config: DrillConfig, decision: Decision, say: Callable[[str], None]
) -> tuple[Action, str]:
    """Roll back on FAIL, promote on PASS, as rolling deploys; return what was done."""
    if decision is Decision.FAIL:
        say(f"{decision.value}: rolling back the canary to {GOOD_VERSION}")
        detail = await fleet.deploy(DeploymentRole.CANARY, GOOD_VERSION)
        return Action.ROLLBACK, f"rolled back: {detail}"
    say(f"{decision.value}: promoting {config.canary_version} to the primary")
    detail = await fleet.deploy(DeploymentRole.PRIMARY, config.canary_version)
    return Action.PROMOTE, f"promoted: {detail}"


@final
@dataclasses.dataclass(frozen=True, slots=True)
class _Run:
    """One drill's names and files."""

    run_id: str
    run_dir: Path
    queue: str

    @classmethod
    def create(cls, config: DrillConfig) -> _Run:
        run_id = f"{datetime.now(UTC):%H%M%S}-{uuid.uuid4().hex[:6]}"
        run_dir = (config.out_dir or Path(".qworker") / f"drill-{run_id}").resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(run_id, run_dir, f"drill-{run_id}")

    @property
    def ledger(self) -> Path:
        return self.run_dir / "ledger.jsonl"


async def run_drill(config: DrillConfig, say: Callable[[str], None] = _say) -> DrillReport:
    """Run one canary drill end to end; see the module docstring.

    Args:
        config: The drill.
        say: Progress lines (default: stderr).

    Raises:
        DrillError: The drill could not run to the end.
        ConfigError: A setting cannot work.
    """
    run = _Run.create(config)
    async with contextlib.AsyncExitStack() as stack:
        endpoint, server = await stack.enter_async_context(_server(config, run.run_dir, say))
        say(f"server: {server}")
        client = await stack.enter_async_context(
            open_sqs_client(QWorkerSettings(region=REGION), endpoint_url=endpoint, local=True)
        )
        url = await create_queue_with_dlq(client, run.queue, max_receive_count=MAX_RECEIVE_COUNT)
        dlq = dead_letter_name(run.queue)
        dlq_url = (await client.get_queue_url(QueueName=dlq))["QueueUrl"]
        say(f"queue {run.queue}, DLQ {dlq} (maxReceiveCount {MAX_RECEIVE_COUNT})")
        fleet = Fleet(
            config, endpoint_url=endpoint, queue=run.queue, run_dir=run.run_dir, ledger=run.ledger
        )
        stack.push_async_callback(fleet.stop_all)
        # Every series of this drill carries its own queue: the bake may read from this minute.
        bake_from = datetime.now(UTC).replace(second=0, microsecond=0)
        await _start_workers(fleet, config, say)
        producer = Producer(rate=config.send_rate, run_id=run.run_id, seed=config.seed)
        stop = asyncio.Event()
        transport = await SqsTransport.open(client, url=url)
        traffic = asyncio.create_task(producer.run(transport, stop), name="drill traffic")
        stack.push_async_callback(_stop_traffic, traffic, stop)
        started_s = time.time()
        say(f"traffic: {config.send_rate:g} msg/s; judging every {config.look_interval_s:g} s")
        exits = [asyncio.ensure_future(w.wait_exit()) for w in fleet.running()]
        try:
            verdict, looks = await _judge(
                config, endpoint, run.queue, bake_from, started_s, [traffic, *exits], say
            )
        finally:
            for future in exits:
                future.cancel()
        decision = resolve(verdict.decision, config.policy.inconclusive_policy)
        action, detail = await _act(fleet, config, decision, say)
        say(detail)
        await asyncio.wait([traffic], timeout=config.after_s)  # traffic on the new deployment
        await _stop_traffic(traffic, stop)
        if not traffic.cancelled() and traffic.exception() is not None:
            raise DrillError(f"the producer failed: {traffic.exception()}")
        say(f"sent {len(producer.sent)} messages; draining the queue")
        left = await _drain(client, url, config.drain_timeout_s)
        exit_codes = await fleet.stop_all()
        accounting = account(
            producer.sent,
            run.ledger,
            left_on_queue=left,
            dead_lettered=await _depth(client, dlq_url),
        )
    report = DrillReport(
        server=server,
        queue=run.queue,
        rate=config.send_rate,
        primary_version=GOOD_VERSION,
        canary_version=config.canary_version,
        policy=config.policy,
        verdict=verdict,
        decision=decision,
        expected=config.expected,
        action=action,
        action_detail=detail,
        looks=tuple(looks),
        accounting=accounting,
        exit_codes=exit_codes,
        chart=run.run_dir / "drill.png",
        run_dir=run.run_dir,
    )
    report.chart.write_bytes(render_chart(report))
    (run.run_dir / "report.json").write_text(json.dumps(report.to_json(), indent=2, default=str))
    return report


# -- command line ---------------------------------------------------------------------------------


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `drill` command to the main CLI.

    Args:
        subparsers: The main parser's subcommands; `args.func(args)` then runs the command.
    """
    parser = subparsers.add_parser(
        "drill",
        help="run a local canary drill: two workers, traffic, the judge, rollback or promotion",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--defect",
        action="store_true",
        help=f"the canary runs {DEFECT_VERSION}, which fails yen payments (default: {NEW_VERSION})",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--endpoint-url", help="a running LocalStack (default: start one)")
    where.add_argument("--embedded", action="store_true", help="moto in this process (slower)")
    parser.add_argument(
        "--rate",
        type=float,
        help=f"messages per second (default {RATE_LOCALSTACK:g}; --embedded {RATE_EMBEDDED:g})",
    )
    defaults = DrillConfig()
    for role in ("primary", "canary"):
        capacity: Capacity = getattr(defaults, role)
        parser.add_argument(
            f"--{role}-pollers", type=int, default=capacity.pollers, help=f"the {role}'s pollers"
        )
        parser.add_argument(
            f"--{role}-concurrency",
            type=int,
            default=capacity.concurrency,
            help=f"the {role}'s handler slots",
        )
    for flag, kind, default, text in (
        ("--look-interval-s", float, defaults.look_interval_s, "seconds between the judge's looks"),
        ("--metrics-interval-s", float, defaults.metrics_interval_s, "workers' metrics interval"),
        ("--after-s", float, defaults.after_s, "traffic after the action, before the drain"),
        ("--drain-timeout-s", float, defaults.drain_timeout_s, "longest wait for an empty queue"),
        (
            "--min-canary-messages",
            int,
            DRILL_POLICY.min_canary_messages,
            "canary first attempts to pass",
        ),
        ("--min-bake-s", float, DRILL_POLICY.min_bake_s, "least bake time before a pass"),
        (
            "--max-bake-s",
            float,
            DRILL_POLICY.max_bake_s,
            "bake time after which it is inconclusive",
        ),
        ("--alpha", float, DRILL_POLICY.alpha, "false-alarm rate of the whole bake"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")
    parser.add_argument("--out", type=Path, help="run directory (default .qworker/drill-<id>)")
    parser.add_argument("--handler-module", default=HANDLER_MODULE, help="the workers' module")
    parser.add_argument("--seed", type=int, help="seed of the traffic's random mix")
    parser.add_argument("--json", action="store_true", help="print report.json instead of text")
    parser.set_defaults(func=drill_command)


def _config(args: argparse.Namespace) -> DrillConfig:
    policy = dataclasses.replace(
        DRILL_POLICY,
        min_canary_messages=args.min_canary_messages,
        min_bake_s=args.min_bake_s,
        max_bake_s=args.max_bake_s,
        alpha=args.alpha,
    )
    return DrillConfig(
        defect=args.defect,
        endpoint_url=args.endpoint_url,
        embedded=args.embedded,
        rate=args.rate,
        primary=Capacity(args.primary_pollers, args.primary_concurrency),
        canary=Capacity(args.canary_pollers, args.canary_concurrency),
        policy=policy,
        look_interval_s=args.look_interval_s,
        metrics_interval_s=args.metrics_interval_s,
        after_s=args.after_s,
        drain_timeout_s=args.drain_timeout_s,
        handler_module=args.handler_module,
        out_dir=args.out,
        seed=args.seed,
    )


def drill_command(args: argparse.Namespace, stdout: IO[str] | None = None) -> int:
    """Run `qworker drill`: exit 0 when the drill went as expected and lost nothing, else 1.

    Raises:
        ConfigError: A bad argument (the CLI prints it and exits 2).
    """
    out = stdout or sys.stdout
    config = _config(args)
    try:
        report = asyncio.run(run_drill(config))
    except (DrillError, TransportError, botocore.exceptions.BotoCoreError) as exc:
        print(f"qworker drill: error: {exc}", file=sys.stderr)  # noqa: T201 (the command's answer)
        return 1
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    else:
        out.write(format_report(report))
    out.flush()
    return 0 if report.ok else 1
