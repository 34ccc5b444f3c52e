"""Silent connection loss: the heartbeat outruns it, so no message runs a second time elsewhere.

Real worker processes on LocalStack. Worker A reaches the server through tests/proxy.py and holds
ten long handlers on a queue with a 30 s visibility timeout; a second worker, B, polls the same
queue directly, ready to take any message whose visibility lapses. The proxy then loses every
connection silently for a second (a black hole: the pooled connections in use stay dead
afterwards, as after a NAT or load-balancer reset). A's long polls hang on their dead connections
until their read timeout, but its visibility extensions, on fresh connections with short timeouts
of their own, get through. Then a 12 s black hole covers the moment the first extensions are due
(a third of the visibility after the receive): they hang, are cut short after their own timeout,
and are retried until one gets through, long before the 30 s lapse. B never runs any of the ten,
and each succeeds exactly once.
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
    job,
    make_bound_queues,
    queue_settled,
    scenario,
    spawn_bound,
    wait_for,
    wait_journal,
)
from proxy import FaultProxy

__all__ = ["fault_proxy", "spawn_bound"]  # fixtures used by name

VISIBILITY_S: Final = 30
HANDLERS: Final = 10
WORK_S: Final = 40.0
"""Longer than the visibility timeout: without extensions every message would lapse mid-run."""
LOSS_S: Final = 1.0
OUTAGE_FROM_S: Final = 9.0
OUTAGE_S: Final = 12.0


@scenario
async def test_one_second_of_silent_loss_causes_no_second_run_elsewhere(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn, fault_proxy: FaultProxy
) -> None:
    queues = await make_bound_queues(sqs_client, "silent-loss", visibility_s=VISIBILITY_S)
    sent = await send_tagged(
        sqs_client, queues.url, {n: job(n, work_s=WORK_S) for n in range(HANDLERS)}
    )
    journal = tmp_path / "journal.txt"
    holder = spawn_bound(
        queues, journal, "--concurrency", str(HANDLERS), endpoint=fault_proxy.endpoint_url
    )
    started = await wait_journal(
        journal, lambda j: len(j.of("start")) == HANDLERS, "ten handlers running", [holder]
    )
    received_at = min(e.at for e in started.of("start"))
    other = spawn_bound(queues, journal, "--concurrency", str(HANDLERS))
    await wait_for(lambda: bool(other.actions("consumer_started")), "the second worker", [other])

    # Let the holder's pooled connections carry a few calls first, then lose them all silently.
    await wait_for(lambda: fault_proxy.connections >= 2, "pooled connections", [holder])
    loss_began = time.monotonic()
    await fault_proxy.set_mode("blackhole")
    await asyncio.sleep(LOSS_S)  # the length of the loss: the scenario's own clock
    await fault_proxy.set_mode("pass")
    silenced = fault_proxy.silenced

    # The first extensions are due 10 s after the receive (ticks every 5 s): black-hole 9-21 s.
    await asyncio.sleep(max(0.0, received_at + OUTAGE_FROM_S - time.time()))  # scenario clock
    await fault_proxy.set_mode("blackhole")
    await asyncio.sleep(OUTAGE_S)  # the length of the outage: the scenario's own clock
    await fault_proxy.set_mode("pass")

    await wait_journal(
        journal, lambda j: len(j.of("done")) >= HANDLERS, "ten handlers done", [holder, other],
        timeout_s=WORK_S + VISIBILITY_S + 30,
    )  # fmt: skip
    settled = False
    while not settled:  # the last deletes: watch the queue empty
        settled = await queue_settled(queues)
        await asyncio.sleep(0.1)
    after_loss_s = time.monotonic() - loss_began
    code_holder, _ = await holder.stop()
    code_other, _ = await other.stop()

    extensions = holder.actions("heartbeat_failed")
    report = await account_bound(
        "1 s silent loss, then 12 s black hole; ten 40 s handlers, visibility 30 s",
        queues,
        sent=sent,
        journal=journal,
        timings={"loss": LOSS_S, "loss start to queue empty": after_loss_s},
        notes=[
            f"proxy silenced {silenced} pooled connections",
            f"heartbeat_failed lines on the holder: {len(extensions)}",
            f"receive_failed lines on the holder: {len(holder.actions('receive_failed'))}",
        ],
        quiet_s=2,  # the queue is empty, nothing in flight: nothing can still be hidden
    )
    assert silenced >= 1, report  # the loss did hit live pooled connections
    assert report.balanced, report
    assert report.deleted_after_success == list(range(HANDLERS)), report
    assert not report.duplicates, report
    assert not [e for e in report.journal.of("start") if e.pid == other.pid], report
    assert extensions, holder.tail()  # the outage met extensions: hung, cut short, retried
    assert {e["error"] for e in extensions} <= {"no answer within 5 s"}, extensions
    assert not holder.actions("heartbeat_lapsed"), holder.tail()
    assert not holder.actions("heartbeat_refused"), holder.tail()
    assert (code_holder, code_other) == (0, 0), holder.tail()
