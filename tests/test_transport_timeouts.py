"""A receive whose answer never comes (a long poll on a silently dead pooled connection) is cut
short `wait_time_s` + a margin after it was sent, as a transient error the consumer backs off from.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from qworker.exceptions import QueueUnavailable, TransientTransportError
from qworker.transport import SqsTransport


class SilentClient:
    """An SQS client whose ReceiveMessage never answers; it sees the give-up as a cancel."""

    def __init__(self) -> None:
        self.cancelled = 0
        self.started = asyncio.Event()

    async def receive_message(self, **params: Any) -> dict[str, Any]:
        assert params["WaitTimeSeconds"] == 0
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1  # aiohttp closes the connection of a cancelled request
            raise
        return {}


async def test_a_receive_without_an_answer_is_cut_short_as_a_transient_error() -> None:
    client = SilentClient()
    transport = SqsTransport(client, "http://127.0.0.1:1/000000000000/q", receive_margin_s=0.05)
    async with asyncio.timeout(10):
        with pytest.raises(QueueUnavailable, match=r"ReceiveMessage: no answer within 0\.05 s"):
            await transport.receive(10, wait_time_s=0)
    assert client.cancelled == 1
    assert issubclass(QueueUnavailable, TransientTransportError)  # the consumer backs off, retries


async def test_a_receive_cancelled_from_outside_is_a_cancel_not_a_timeout() -> None:
    client = SilentClient()
    transport = SqsTransport(client, "http://127.0.0.1:1/000000000000/q", receive_margin_s=3600)
    receive = asyncio.ensure_future(transport.receive(10, wait_time_s=0))
    await client.started.wait()
    receive.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receive
    assert client.cancelled == 1
