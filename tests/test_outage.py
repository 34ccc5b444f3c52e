"""Outages against a real server (LocalStack behind a loopback fault proxy): the worker waits for a
server that is down at start, and rides out refused connections, 5xx and throttling mid-run, with
nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import urlparse

import pytest
from localstack_queues import QueueMaker, running_worker
from proxy import FaultProxy
from servers import free_port

from qworker.app import QWorker
from qworker.producer import send_bodies
from qworker.transport import SqsTransport

pytestmark = [pytest.mark.integration, pytest.mark.localstack]


class ActionEvents(logging.Handler):
    """Sets an event per log `action`, so tests wait on what the worker says it did."""

    def __init__(self) -> None:
        super().__init__()
        self.events: dict[str, asyncio.Event] = {}
        self.errors: list[str] = []

    def event(self, action: str) -> asyncio.Event:
        return self.events.setdefault(action, asyncio.Event())

    def emit(self, record: logging.LogRecord) -> None:
        action = getattr(record, "action", None)
        if action:
            self.event(action).set()
            if action == "receive_failed":
                self.errors.append(str(getattr(record, "error_type", "")))


@pytest.fixture
def actions() -> Any:
    handler = ActionEvents()
    root = logging.getLogger("qworker")
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    yield handler
    root.removeHandler(handler)
    root.setLevel(old)


async def test_worker_waits_for_server_then_rides_out_outages(
    localstack_server: Any, sqs_client: Any, queue_with_dlq: QueueMaker, actions: ActionEvents
) -> None:
    made = await queue_with_dlq("outage")
    name = made.name
    queue = SqsTransport(sqs_client, made.url)
    target = urlparse(localstack_server.endpoint_url)
    proxy = FaultProxy(str(target.hostname), int(target.port or 0), free_port())

    app = QWorker("outage")
    seen: list[int] = []
    all_seen = asyncio.Event()

    @app.handler(name)
    async def handle(body: dict[str, int]) -> None:
        seen.append(body["n"])
        if len(set(seen)) == 20:
            all_seen.set()

    try:
        # The worker reaches the server through the proxy; leaving the block stops it and waits.
        async with running_worker(app, proxy.endpoint_url, "outage", pollers=2) as worker:
            await send_bodies(queue, [json.dumps({"n": i}) for i in range(5)])
            async with asyncio.timeout(60):
                await actions.event("startup_retry").wait()  # server down at start: refused
            await proxy.set_mode("pass")
            async with asyncio.timeout(60):
                await worker.ready.wait()
            for mode, start in (("down", 5), ("error", 10), ("throttle", 15)):
                actions.event("receive_failed").clear()
                await proxy.set_mode(mode)  # type: ignore[arg-type]
                await send_bodies(queue, [json.dumps({"n": i}) for i in range(start, start + 5)])
                async with asyncio.timeout(60):
                    await actions.event("receive_failed").wait()
                await proxy.set_mode("pass")
            async with asyncio.timeout(60):
                await all_seen.wait()
    finally:
        await proxy.aclose()

    assert sorted(set(seen)) == list(range(20))
    assert {"QueueUnavailable", "ServerError", "Throttled"} <= set(actions.errors)
    stats = worker.statistics()[name]
    assert stats.acked == len(seen)
    assert stats.receive_errors >= 3
    leftover = await queue.receive(10, wait_time_s=0)
    assert leftover == []
