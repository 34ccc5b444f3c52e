"""Queues for the LocalStack tests: fresh ones, each with its dead-letter queue, and a worker run.

`tests/conftest.py` serves `QueueMaker` as the `queue_with_dlq` fixture: each call creates a queue
with a unique name and its dead-letter queue with `qworker.local.create_queue_with_dlq` (so the
tests get the redrive policy `qworker run` gives its embedded queues), and both are deleted after
the test. `running_worker` runs a real `Worker` on the server for the length of a `with` block.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Final, final

from qworker import QWorker
from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.worker import Worker

__all__ = [
    "MadeQueue",
    "QueueMaker",
    "delete_queues",
    "messages_left",
    "running_worker",
    "unique_name",
    "worker_settings",
]

REGION: Final = "us-east-1"
STOP_TIMEOUT_S: Final = 60.0

_names = itertools.count(1)


def unique_name(prefix: str, *, fifo: bool = False) -> str:
    """A queue name no other test uses: `prefix`, a counter and a random tag (`.fifo` if FIFO)."""
    return f"{prefix}-{next(_names)}-{uuid.uuid4().hex[:6]}" + (".fifo" if fifo else "")


async def delete_queues(client: Any, names: Iterable[str], *, strict: bool = False) -> None:
    """Delete each named queue and its dead-letter queue.

    Best effort (clean-up after a test) unless `strict`: then a queue that cannot be found or
    deleted raises, so a test whose queues went missing fails instead of passing quietly.
    """
    for name in names:
        for queue in (name, dead_letter_name(name)):
            try:
                url = (await client.get_queue_url(QueueName=queue))["QueueUrl"]
                await client.delete_queue(QueueUrl=url)
            except Exception:
                if strict:
                    raise


@final
@dataclass(frozen=True, slots=True)
class MadeQueue:
    """A queue made for one test, and its dead-letter queue."""

    name: str
    url: str
    dlq_url: str


@final
class QueueMaker:
    """Makes fresh queues with dead-letter queues on one server; remembers them for clean-up."""

    def __init__(self, client: Any, created: list[str] | None = None) -> None:
        """Make queues with `client` (an aiobotocore SQS client), naming each in `created`."""
        self.client = client
        self.created: list[str] = [] if created is None else created

    async def __call__(
        self,
        prefix: str = "q",
        *,
        fifo: bool = False,
        visibility_timeout_s: int = 30,
        max_receive_count: int = 3,
    ) -> MadeQueue:
        """Create a queue named after `prefix` and its dead-letter queue with a redrive policy."""
        name = unique_name(prefix, fifo=fifo)
        url = await create_queue_with_dlq(
            self.client,
            name,
            max_receive_count=max_receive_count,
            visibility_timeout_s=visibility_timeout_s,
        )
        self.created.append(name)
        dlq = await self.client.get_queue_url(QueueName=dead_letter_name(name))
        return MadeQueue(name, url, str(dlq["QueueUrl"]))

    async def delete_all(self) -> None:
        """Delete every queue made so far, with its dead-letter queue."""
        await delete_queues(self.client, self.created)
        self.created.clear()


async def messages_left(client: Any, url: str) -> int:
    """Messages still on the queue, visible or in flight (0: every message was deleted)."""
    counts = (
        await client.get_queue_attributes(
            QueueUrl=url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )
    )["Attributes"]
    return sum(int(value) for value in counts.values())


def worker_settings(endpoint_url: str, **fields: Any) -> QWorkerSettings:
    """Settings for a worker on the local server: one-second long polls, so it stops quickly.

    `fields` are further settings (`pollers=2`).
    """
    return QWorkerSettings(endpoint_url=endpoint_url, region=REGION, wait_time_s=1, **fields)


@contextlib.asynccontextmanager
async def running_worker(
    app: QWorker, endpoint_url: str, service: str, **fields: Any
) -> AsyncIterator[Worker]:
    """Run `app` in a real `Worker` on the server for the block; stop it and wait for it after.

    The worker runs with `worker_settings(endpoint_url, **fields)`. On leaving the block it is
    stopped (receiving ends, handlers drain) and awaited for up to `STOP_TIMEOUT_S`; an error its
    run ended with is raised there.
    """
    worker = Worker(
        app, worker_settings(endpoint_url, **fields), identity=Identity(service=service), local=True
    )
    run = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stop()
        async with asyncio.timeout(STOP_TIMEOUT_S):
            await run
