"""Shared fixtures: the real servers (tests/servers.py), a `backend` that runs each behaviour
test on the in-memory fake, on moto's server and on LocalStack, over HTTP with aiobotocore, and
`queue_with_dlq`, fresh LocalStack queues with dead-letter queues (tests/localstack_queues.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from localstack_queues import QueueMaker, delete_queues, unique_name
from servers import aws_env, localstack_server, moto_server  # noqa: F401

from qworker.local import dead_letter_name
from qworker.settings import QWorkerSettings
from qworker.testing import FakeSqs, ManualClock
from qworker.transport import QueueTransport, SqsTransport
from qworker.worker import open_sqs_client

os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@dataclass
class Backend:
    """A place to make queues: the fake, or a real server reached over HTTP."""

    name: str
    client: Any = None
    fake: FakeSqs | None = None
    clock: ManualClock | None = None
    endpoint_url: str | None = None
    created: list[str] = field(default_factory=list)

    @property
    def real(self) -> bool:
        """Whether this is a real server (its clock runs by itself)."""
        return self.fake is None

    async def queue(
        self,
        prefix: str = "q",
        *,
        fifo: bool = False,
        visibility_timeout_s: int = 30,
        max_receive_count: int = 3,
    ) -> tuple[QueueTransport, QueueTransport]:
        """Create a fresh queue and its dead-letter queue; return both transports."""
        if self.fake is None:
            made = await QueueMaker(self.client, self.created)(
                prefix,
                fifo=fifo,
                visibility_timeout_s=visibility_timeout_s,
                max_receive_count=max_receive_count,
            )
            return SqsTransport(self.client, made.url), SqsTransport(self.client, made.dlq_url)
        name = unique_name(prefix, fifo=fifo)
        queue = self.fake.create_queue(
            name,
            visibility_timeout_s=visibility_timeout_s,
            dead_letter=dead_letter_name(name),
            max_receive_count=max_receive_count,
        )
        return queue, self.fake.queue(dead_letter_name(name))

    async def elapse(self, seconds: float) -> None:
        """Let `seconds` pass for visibility timeouts: move the fake clock, or wait for real."""
        if self.clock is not None:
            self.clock.advance(seconds)
            return
        # A real server's visibility timeouts run on its own clock: there is no way but waiting.
        await asyncio.sleep(seconds)

    @property
    def clock_fn(self) -> Callable[[], float] | None:
        """The clock consumers must use with this backend (None: the default)."""
        return self.clock


def _settings(endpoint_url: str) -> QWorkerSettings:
    return QWorkerSettings(endpoint_url=endpoint_url, region="us-east-1")


@pytest.fixture(
    params=[
        "fake",
        pytest.param("moto", marks=[pytest.mark.integration, pytest.mark.moto]),
        pytest.param("localstack", marks=[pytest.mark.integration, pytest.mark.localstack]),
    ]
)
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    """Each behaviour test runs on the fake, on moto's server and on LocalStack."""
    if request.param == "fake":
        clock = ManualClock()
        yield Backend("fake", fake=FakeSqs(clock=clock), clock=clock)
        return
    server = request.getfixturevalue(f"{request.param}_server")
    async with open_sqs_client(_settings(server.endpoint_url), local=True) as client:
        backend = Backend(request.param, client=client, endpoint_url=server.endpoint_url)
        yield backend
        await delete_queues(client, backend.created)


@pytest.fixture
async def sqs_client(localstack_server: Any) -> AsyncIterator[Any]:  # noqa: F811 (a fixture)
    """An aiobotocore client on LocalStack."""
    async with open_sqs_client(_settings(localstack_server.endpoint_url), local=True) as client:
        yield client


@pytest.fixture
async def queue_with_dlq(sqs_client: Any) -> AsyncIterator[QueueMaker]:
    """Makes fresh LocalStack queues, each with its dead-letter queue; deletes them after the test.

    `await queue_with_dlq("orders")` creates `orders-<n>-<tag>` and `orders-<n>-<tag>-dlq` with
    `qworker.local.create_queue_with_dlq` and returns their name and URLs (`MadeQueue`).
    """
    maker = QueueMaker(sqs_client)
    yield maker
    await maker.delete_all()
