"""Shutdown is bounded, always: real worker processes, real SIGTERM, LocalStack (through the proxy).

Whatever hangs (the network, a sync handler's thread, an async handler that ignores its
cancellation), the process exits within `--shutdown-grace-s` + `SHUTDOWN_FLUSH_S` of the signal.
Each scenario measures the exit time and compares it with that bound (the requirement itself, the
only timing assertion), checks the exit code (`EXIT_ABANDONED` when work had to be abandoned) and
the `shutdown_abandoned` line naming the messages, then accounts for every message: none lost, none
succeeded twice, and none deleted by a handler that outlived its released message.
"""

from __future__ import annotations

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
    scenario,
    spawn_bound,
    wait_journal,
)
from proxy import FaultProxy

from qworker.shutdown import EXIT_ABANDONED, SHUTDOWN_FLUSH_S

__all__ = ["fault_proxy", "spawn_bound"]  # fixtures used by name

GRACE_S: Final = 2.0
VISIBILITY_S: Final = 4


def abandoned_ids(lines: list[dict[str, Any]]) -> set[str]:
    return {i for line in lines for i in line.get("message_ids", [])}


@scenario
async def test_sigterm_during_a_black_hole_exits_within_the_bound(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn, fault_proxy: FaultProxy
) -> None:
    """Five 30 s handlers running, the network black-holed, SIGTERM with a 5 s grace.

    The grace runs out, the handlers are cancelled, their releases and the last metrics flush go
    into the black hole: the process still exits within 5 s + the flush budget, non-zero, naming
    the messages it could not release. They come back when their visibility lapses.
    """
    grace_s = 5.0
    queues = await make_bound_queues(sqs_client, "bound-blackhole", visibility_s=VISIBILITY_S)
    sent = await send_tagged(sqs_client, queues.url, {n: job(n, work_s=30) for n in range(5)})
    journal = tmp_path / "journal.txt"
    worker = spawn_bound(
        queues,
        journal,
        "--shutdown-grace-s", str(grace_s),
        endpoint=fault_proxy.endpoint_url,
    )  # fmt: skip
    await wait_journal(journal, lambda j: len(j.of("start")) == 5, "5 handlers running", [worker])

    await fault_proxy.set_mode("blackhole")
    code, shutdown_s = await worker.stop()
    await fault_proxy.set_mode("pass")

    bound_s = grace_s + SHUTDOWN_FLUSH_S
    report = await account_bound(
        "SIGTERM during a black hole, --shutdown-grace-s 5",
        queues,
        sent=sent,
        journal=journal,
        timings={"shutdown": shutdown_s, "bound": bound_s},
        notes=[f"exit code {code}", f"proxy silenced {fault_proxy.silenced} connections"],
    )
    assert shutdown_s <= bound_s, report
    assert code == EXIT_ABANDONED, worker.tail()
    abandoned = worker.actions("shutdown_abandoned")
    assert abandoned, worker.tail()
    assert abandoned_ids(abandoned) == set(sent.values()), worker.tail()
    assert report.balanced, report
    assert not report.journal.of("done"), report  # cancelled, never succeeded
    assert report.left_queued == list(range(5)), report  # back after their visibility lapsed
    assert not report.duplicates, report


@scenario
async def test_hung_sync_handler_does_not_keep_the_process(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn
) -> None:
    """A sync handler that never returns (its thread sleeps 600 s): exit within the bound anyway.

    Its message is released when the grace runs out; the process does not wait for the thread,
    exits non-zero and names the message. The thread dies with the process: no late success.
    """
    await _sync_handler_at_shutdown(
        "hung sync handler", sqs_client, tmp_path, spawn_bound, work_s=600
    )


@scenario
async def test_a_20s_sync_handler_at_shutdown_neither_delays_exit_nor_completes_late(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn
) -> None:
    """A sync handler with 20 s of work left at SIGTERM: exit after the grace, not after 20 s.

    Its message was released when the grace ran out, so another worker may hold it now: its late
    success must not delete it. The process is gone before the thread could finish, and the
    journal shows no success at all for that message.
    """
    await _sync_handler_at_shutdown(
        "20 s sync handler at shutdown", sqs_client, tmp_path, spawn_bound, work_s=20
    )


async def _sync_handler_at_shutdown(
    name: str, sqs_client: Any, tmp_path: Path, spawn_bound: Spawn, *, work_s: float
) -> None:
    queues = await make_bound_queues(sqs_client, "bound-sync", visibility_s=VISIBILITY_S)
    sent = await send_tagged(sqs_client, queues.url, {0: job(0, work_s=work_s)})
    journal = tmp_path / "journal.txt"
    worker = spawn_bound(
        queues, journal, "--shutdown-grace-s", str(GRACE_S), module="bound_sync_handlers"
    )
    await wait_journal(journal, lambda j: len(j.of("start")) == 1, "the handler running", [worker])

    code, shutdown_s = await worker.stop()
    exited_at = time.time()

    bound_s = GRACE_S + SHUTDOWN_FLUSH_S
    report = await account_bound(
        name,
        queues,
        sent=sent,
        journal=journal,
        timings={"shutdown": shutdown_s, "bound": bound_s},
        notes=[f"exit code {code}"],
    )
    assert shutdown_s <= bound_s, report
    assert code == EXIT_ABANDONED, worker.tail()
    (abandoned,) = worker.actions("shutdown_abandoned")
    assert abandoned["threads"] == 1, abandoned
    assert abandoned["message_ids"] == [sent[0]], abandoned
    assert "Python cannot stop threads" in abandoned["msg"] + abandoned["reason"], abandoned
    assert worker.actions("message_released"), worker.tail()  # released, not left to lapse
    assert report.balanced, report
    assert report.left_queued == [0], report  # released: no late delete took it away
    assert not report.journal.of("done"), report  # and no late success, ever
    assert all(e.at < exited_at for e in report.journal.entries), report


@scenario
async def test_hung_async_handler_that_ignores_cancellation_is_abandoned_within_the_bound(
    sqs_client: Any, tmp_path: Path, spawn_bound: Spawn
) -> None:
    """An async handler swallows every cancellation: the watchdog ends the process at the bound.

    Its task never ends, so its message is never released: the log line names it, the exit code
    says work was abandoned, and the message comes back when its visibility lapses.
    """
    queues = await make_bound_queues(sqs_client, "bound-async", visibility_s=VISIBILITY_S)
    sent = await send_tagged(
        sqs_client, queues.url, {0: job(0, mode="hang"), 1: job(1, work_s=0.05)}
    )
    journal = tmp_path / "journal.txt"
    worker = spawn_bound(queues, journal, "--shutdown-grace-s", str(GRACE_S))
    await wait_journal(
        journal,
        lambda j: len(j.of("start")) == 2 and len(j.of("done")) == 1,
        "the hung handler running, the other one done",
        [worker],
    )

    code, shutdown_s = await worker.stop()

    bound_s = GRACE_S + SHUTDOWN_FLUSH_S
    report = await account_bound(
        "hung async handler",
        queues,
        sent=sent,
        journal=journal,
        timings={"shutdown": shutdown_s, "bound": bound_s},
        notes=[f"exit code {code}"],
    )
    assert shutdown_s <= bound_s, report
    assert code == EXIT_ABANDONED, worker.tail()
    (abandoned,) = worker.actions("shutdown_abandoned")
    assert abandoned["message_ids"] == [sent[0]], abandoned
    assert "did not finish within" in abandoned["reason"], abandoned
    assert report.journal.of("ignore-cancel"), report  # it was cancelled, and ignored it
    assert report.balanced, report
    assert report.deleted_after_success == [1], report
    assert report.left_queued == [0], report
    assert not report.duplicates, report
