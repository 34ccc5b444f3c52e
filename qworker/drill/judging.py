"""Judging the drill: the canary judge's bake on the server's CloudWatch, run in a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from qworker._aws import AwsTarget, ClientProfile, sync_client
from qworker.canary.judge import Reading, Verdict, run_bake
from qworker.canary.reader import CloudWatchSource, MetricsQuery
from qworker.drill.config import REGION, SERVICE, DrillConfig, DrillError
from qworker.drill.report import progress


class _Aborted(Exception):
    """Ends the bake thread early."""


def _judge_clients(endpoint_url: str) -> tuple[Any, Any]:
    target = AwsTarget(REGION, endpoint_url, local=True)
    profile = ClientProfile(retries=8)  # a busy local server may answer late: keep trying
    return sync_client("cloudwatch", target, profile), sync_client("sqs", target, profile)


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
        say(progress(verdict))

    return run_bake(
        read,
        time.time,
        sleep,
        config.policy,
        interval_s=config.look_interval_s,
        started_s=started_s,
        on_look=on_look,
    )


async def judge(  # noqa: PLR0917 (one call site)
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
