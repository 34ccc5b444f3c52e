"""Health tells the truth: real worker processes on LocalStack, probed as ECS probes them.

- A black hole (the proxy accepts connections and never answers), then a server that answers
  every request with a 503: the worker turns unhealthy once no receive completed for `wait_time_s`
  plus the stall margin, and stays unhealthy through the failed receives of the second phase (a
  failed receive is not progress), until the server is back. (A long poll hung in the black hole
  is given up after `wait_time_s` + 10 s, a failed receive too; the 503s bring many within
  seconds.)
- A mistyped endpoint port: the worker never reaches its server and is not healthy once the
  start-up allowance is over; `qworker health` finds the worker's own default health file.
- An async handler blocking the event loop with a sync call: a warning names the handler and the
  message, and the health file (written by the watch thread, since the loop cannot) says so.

Each scenario ends with the accounting of the messages it sent.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Final

from accounting import send_tagged
from bound_support import (
    Spawn,
    account_bound,
    fault_proxy,
    health_now,
    job,
    make_bound_queues,
    scenario,
    spawn_bound,
    wait_for,
    wait_journal,
)
from proxy import FaultProxy
from servers import free_port

from qworker.health import default_health_dir, read_report

__all__ = ["fault_proxy", "spawn_bound"]  # fixtures used by name

VISIBILITY_S: Final = 5
STALL_MARGIN_S: Final = 3.0
HEALTH_INTERVAL_S: Final = 0.5
HEALTH_FLAGS: Final = (
    "--health-stall-margin-s", str(STALL_MARGIN_S),
    "--health-interval-s", str(HEALTH_INTERVAL_S),
)  # fmt: skip
BLACK_HOLE_S: Final = 25.0
ERRORS_S: Final = 10.0
CUT_OFF_S: Final = BLACK_HOLE_S + ERRORS_S
PROBE_S: Final = 0.5


@scenario
async def test_health_during_a_black_hole_is_unhealthy_throughout_then_recovers(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn, fault_proxy: FaultProxy
) -> None:
    queues = await make_bound_queues(sqs_client, "health-hole", visibility_s=VISIBILITY_S)
    sent = await send_tagged(sqs_client, queues.url, {n: job(n) for n in range(5)})
    journal = tmp_path / "journal.txt"
    worker = spawn_bound(queues, journal, *HEALTH_FLAGS, endpoint=fault_proxy.endpoint_url)
    await wait_journal(journal, lambda j: len(j.of("done")) == 5, "five done", [worker])
    await wait_for(lambda: not health_now(worker), "healthy", [worker])
    assert worker.health_command("--health-file", str(worker.health_path)) == (0, "healthy")
    # The scenario cuts off an idle worker: the five deletes must have landed first (on a loaded
    # machine a delete can still be on its way when "done" is journaled).
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    deadline = time.monotonic() + 60
    while True:
        response = await sqs_client.get_queue_attributes(QueueUrl=queues.url, AttributeNames=names)
        if not any(int(v) for v in response["Attributes"].values()):
            break
        assert time.monotonic() < deadline, response["Attributes"]
        await asyncio.sleep(0.1)  # another process deletes them: polling the queue is the only way

    began = time.monotonic()
    await fault_proxy.set_mode("blackhole")
    probes: list[tuple[float, list[str]]] = []
    hole_code, hole_out = 0, ""
    while (elapsed := time.monotonic() - began) < CUT_OFF_S:
        if elapsed >= BLACK_HOLE_S and fault_proxy.mode == "blackhole":
            hole_code, hole_out = worker.health_command("--health-file", str(worker.health_path))
            await fault_proxy.set_mode("error")
        probes.append((elapsed, health_now(worker)))
        await asyncio.sleep(PROBE_S)  # the probe's period: the scenario's own clock
    code, out = worker.health_command("--health-file", str(worker.health_path))
    failed_receives = len(worker.actions("receive_failed"))
    await fault_proxy.set_mode("pass")
    await wait_for(lambda: not health_now(worker), "healthy again", [worker])
    recovered_s = time.monotonic() - began - CUT_OFF_S
    await worker.stop()

    unhealthy = [t for t, problems in probes if problems]
    report = await account_bound(
        f"health during a {BLACK_HOLE_S:g} s black hole, then {ERRORS_S:g} s of 503s",
        queues,
        sent=sent,
        journal=journal,
        timings={"cut off": CUT_OFF_S, "healthy again after": recovered_s},
        notes=[
            f"{len(probes)} probes, unhealthy from {unhealthy[0] if unhealthy else None} s on",
            f"receive_failed lines while cut off: {failed_receives}",
            f"qworker health at the end of the black hole: {hole_code} {hole_out}",
            f"qworker health at the end of the 503s: {code} {out}",
        ],
    )
    # Unhealthy once the stall limit (wait_time_s 1 + margin) and a file write have passed ...
    limit_s = 1 + STALL_MARGIN_S + 2 * HEALTH_INTERVAL_S + 1
    assert unhealthy, report
    assert unhealthy[0] <= limit_s, report
    # ... and never healthy again while cut off, failed receives included.
    assert all(problems for t, problems in probes if t >= unhealthy[0]), probes
    assert failed_receives >= 1, report
    assert (hole_code, code) == (1, 1), (hole_out, out)
    assert "completed no receive" in hole_out, hole_out
    assert "completed no receive" in out, out
    assert report.balanced, report
    assert report.deleted_after_success == list(range(5)), report
    assert not report.duplicates, report


@scenario
async def test_a_mistyped_endpoint_port_is_not_healthy(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn
) -> None:
    """Nothing listens on the port: after the start-up allowance the worker is unhealthy.

    The worker writes its health file to its own default path (one per process), and
    `qworker health` without a file named finds it.
    """
    queues = await make_bound_queues(sqs_client, "health-typo", visibility_s=VISIBILITY_S)
    sent = await send_tagged(sqs_client, queues.url, {n: job(n) for n in range(3)})
    journal = tmp_path / "journal.txt"
    temp = tmp_path / "tmp"
    temp.mkdir()
    worker = spawn_bound(
        queues,
        journal,
        *HEALTH_FLAGS,
        "--startup-timeout-s", "60",
        endpoint=f"http://127.0.0.1:{free_port()}",
        health_file=False,
        env={"TMPDIR": str(temp)},
    )  # fmt: skip
    path = temp / default_health_dir().name / f"primary-{worker.pid}.json"
    await wait_for(path.exists, "the worker's own health file", [worker])
    allowance_s = 1 + STALL_MARGIN_S
    await wait_for(lambda: not read_report(path).live, "the start-up allowance to pass", [worker])
    code, out = worker.health_command()
    stop_code, _ = await worker.stop()

    report = await account_bound(
        "mistyped endpoint port",
        queues,
        sent=sent,
        journal=journal,
        timings={"start-up allowance": allowance_s},
        notes=[f"qworker health: {code} {out}", f"exit code after SIGTERM {stop_code}"],
        quiet_s=2,  # nothing was ever received: nothing can be hidden
    )
    assert code == 1, out
    assert "has not reached the queue server" in out, out
    assert worker.actions("startup_retry"), worker.tail()
    assert report.balanced, report
    assert report.left_queued == [0, 1, 2], report


@scenario
async def test_a_blocked_event_loop_is_logged_naming_the_handler_and_reported(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn
) -> None:
    queues = await make_bound_queues(sqs_client, "health-lag", visibility_s=10)
    sent = await send_tagged(sqs_client, queues.url, {0: job(0, mode="block", work_s=10)})
    journal = tmp_path / "journal.txt"
    worker = spawn_bound(queues, journal, *HEALTH_FLAGS, "--health-loop-lag-s", "1")

    def blocked_by_the_handler() -> list[dict[str, Any]]:
        # Only the handler's block: a slow start-up on a busy machine may be reported too.
        return [e for e in worker.actions("event_loop_blocked") if e["message_id"] == sent[0]]

    await wait_for(lambda: bool(blocked_by_the_handler()), "the warning", [worker])
    code, out = worker.health_command("--health-file", str(worker.health_path))
    await wait_journal(journal, lambda j: bool(j.of("done")), "the handler done", [worker])
    await wait_for(lambda: not health_now(worker), "healthy again", [worker])
    await worker.stop()

    report = await account_bound(
        "event loop blocked 10 s by a sync call in an async handler",
        queues,
        sent=sent,
        journal=journal,
        timings={},
        notes=[f"qworker health during the block: {code} {out}"],
    )
    (line,) = blocked_by_the_handler()
    assert line["level"] == "warning", line
    assert line["handler"] == "bound_handlers.handle", line
    assert line["message_id"] == sent[0], line
    assert "bound_handlers.py" in line["where"], line
    assert code == 1, out
    assert "event loop blocked" in out, out
    assert "bound_handlers.handle" in out, out
    assert worker.actions("event_loop_unblocked"), worker.tail()
    assert report.balanced, report
    assert report.deleted_after_success == [0], report
    assert not report.duplicates, report
