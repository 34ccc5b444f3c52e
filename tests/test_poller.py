"""The poll loop on the in-memory transport: how a drain decides the queue is done."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from qworker.testing import FakeQueueTransport, FakeSqs, consumer_for
from qworker.transport import BatchFailure, Message, QueueAttributes, SendEntry


class PutBackRacesReceive:
    """A receive the server answers (empty) before a put-back lands, delivered after it.

    The first receive after a message was handed out is held until a visibility change starts;
    the server then answers it (the message is still invisible), the visibility change lands,
    and only once the consumer holds nothing does the empty answer reach it.
    """

    def __init__(self, inner: FakeQueueTransport) -> None:
        """Wrap `inner`."""
        self.inner = inner
        self.handed_out = False
        self.raced = False
        self.race_started = asyncio.Event()
        self.change_started = asyncio.Event()
        self.answered = asyncio.Event()
        self.deliver_after: Callable[[], Awaitable[None]] | None = None

    async def receive(
        self, max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        """Receive; the racing one as described above."""
        race = self.handed_out and not self.raced
        if race:
            self.raced = True
            self.race_started.set()
            await self.change_started.wait()
        found = await self.inner.receive(
            max_messages, wait_time_s=wait_time_s, visibility_timeout_s=visibility_timeout_s
        )
        self.handed_out = self.handed_out or bool(found)
        if race:
            assert not found  # the server answered before the put-back landed
            self.answered.set()
            assert self.deliver_after is not None
            await self.deliver_after()
        return found

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        """Land only after the racing receive was answered."""
        await self._land()
        await self.inner.change_visibility(receipt_handle, timeout_s)

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        """Land only after the racing receive was answered."""
        await self._land()
        return await self.inner.change_visibility_batch(entries)

    @property
    def queue_name(self) -> str:
        """The queue's name."""
        return self.inner.queue_name

    async def delete_batch(self, receipt_handles: Sequence[str]) -> list[BatchFailure]:
        """Delete."""
        return await self.inner.delete_batch(receipt_handles)

    async def send_batch(self, entries: Sequence[SendEntry]) -> list[BatchFailure]:
        """Send."""
        return await self.inner.send_batch(entries)

    async def get_attributes(self) -> QueueAttributes:
        """Describe."""
        return await self.inner.get_attributes()

    async def _land(self) -> None:
        self.change_started.set()
        if self.raced:
            await self.answered.wait()


async def test_drain_looks_again_when_a_put_back_lands_after_an_empty_receive() -> None:
    fake = FakeSqs().create_queue("race")
    await fake.send("m")
    queue = PutBackRacesReceive(fake)
    attempts = 0

    async def handle(body: str) -> None:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            await queue.race_started.wait()  # fails while the next receive is on its way
            raise RuntimeError("first attempt fails")

    consumer = consumer_for(
        queue, handle, concurrency=2, pollers=1, wait_time_s=0, release_failed=True
    )
    queue.deliver_after = consumer.wait_idle  # the empty answer arrives once nothing is held
    async with asyncio.timeout(5):
        await consumer.run_until_empty()
    assert queue.raced  # the race happened: an empty receive while the put-back was landing
    stats = consumer.statistics()
    assert (stats.failed, stats.acked) == (1, 1)  # the put-back message came back and ran
    assert not fake.visible
    assert not fake.in_flight
