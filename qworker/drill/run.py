"""The drill end to end: server, queues, workers, traffic, judge, action, drain and audit."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import final

from qworker._aws import AwsTarget, map_errors, open_client, sqs_profile
from qworker.canary.judge import Decision, resolve
from qworker.config import DeploymentRole
from qworker.drill.audit import account, drain, queue_depth
from qworker.drill.config import (
    GOOD_VERSION,
    MAX_RECEIVE_COUNT,
    REGION,
    Action,
    DrillConfig,
    DrillError,
)
from qworker.drill.judging import judge
from qworker.drill.report import DrillReport, render_chart
from qworker.drill.servers import serve
from qworker.drill.traffic import Producer
from qworker.drill.workers import Fleet
from qworker.exceptions import TransportError
from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.transport import SqsTransport


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
        endpoint, server = await stack.enter_async_context(serve(config, run.run_dir, say))
        say(f"server: {server}")
        client = await stack.enter_async_context(
            open_client("sqs", AwsTarget(REGION, endpoint, local=True), sqs_profile())
        )
        url = await create_queue_with_dlq(client, run.queue, max_receive_count=MAX_RECEIVE_COUNT)
        dlq = dead_letter_name(run.queue)
        with map_errors(f"GetQueueUrl {dlq}"):
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
            verdict, looks = await judge(
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
        left = await drain(client, url, config.drain_timeout_s)
        exit_codes = await fleet.stop_all()
        accounting = account(
            producer.sent,
            run.ledger,
            left_on_queue=left,
            dead_lettered=await queue_depth(client, dlq_url),
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
