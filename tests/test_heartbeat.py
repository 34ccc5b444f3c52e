"""The heartbeat: held messages stay invisible, claimed ones are left alone, old ones are let go.

The fake queue and the heartbeat share one `ManualClock`; `beat()` is called by hand after moving
the clock, so no test waits.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import pytest

from qworker.exceptions import ServerError
from qworker.heartbeat import (
    CALL_TIMEOUT_S,
    MIN_CALL_TIMEOUT_S,
    MIN_INTERVAL_S,
    RETRY_DELAY_S,
    Heartbeat,
)
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock
from qworker.transport import BatchFailure, Message

VISIBILITY_S = 30


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def queue(clock: ManualClock) -> FakeQueueTransport:
    return FakeSqs(clock=clock).create_queue("hb", visibility_timeout_s=VISIBILITY_S)


def heartbeat(queue: FakeQueueTransport, clock: ManualClock, max_hold_s: float = 3600) -> Heartbeat:
    return Heartbeat(queue, visibility_timeout_s=VISIBILITY_S, max_hold_s=max_hold_s, clock=clock)


async def receive(queue: FakeQueueTransport, count: int = 1) -> list[Message]:
    for i in range(count):
        await queue.send(f"body-{i}")
    received: list[Message] = []
    while len(received) < count:
        received += await queue.receive(10, wait_time_s=0)
    return received


def test_ticks_six_times_per_visibility_and_extends_once_a_third_has_passed(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock)
    assert beat.interval_s == 5
    assert beat.extend_below_s == 20
    assert beat.call_timeout_s == CALL_TIMEOUT_S  # 30 s / 6 = 5 s, the ceiling
    tiny = Heartbeat(queue, visibility_timeout_s=0, max_hold_s=1, clock=clock)
    assert tiny.interval_s == MIN_INTERVAL_S
    assert tiny.call_timeout_s == MIN_CALL_TIMEOUT_S
    long = Heartbeat(queue, visibility_timeout_s=3600, max_hold_s=1, clock=clock)
    assert long.call_timeout_s == CALL_TIMEOUT_S  # an hour's visibility: still a short call


async def test_held_message_is_extended_before_it_lapses(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock)
    [message] = await receive(queue)
    held = beat.hold(message)

    await beat.beat()  # fresh: 30 s left, more than two ticks
    assert beat.calls == 0

    for _ in range(6):  # 90 s in all, three visibility timeouts
        clock.advance(15)
        await beat.beat()
        assert [m.message_id for m in queue.in_flight] == [message.message_id]
        assert queue.visible == []

    assert held.extensions == 6
    assert beat.calls == 6
    assert held.visible_until == clock() + VISIBILITY_S
    assert not held.lost
    assert not held.let_go


async def test_many_held_messages_are_extended_in_batches_of_ten(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock)
    messages = await receive(queue, 23)
    held = [beat.hold(m) for m in messages]

    clock.advance(15)
    await beat.beat()

    assert beat.calls == 3
    assert queue.calls["change_visibility_batch"] == 3
    assert {h.extensions for h in held} == {1}
    assert len(beat) == 23
    clock.advance(20)  # past the original timeout
    assert len(queue.in_flight) == 23


async def test_claimed_message_is_never_extended(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock)
    [message] = await receive(queue)
    held = beat.hold(message)

    await beat.claim(held)
    await beat.claim(held)  # claiming twice is harmless
    clock.advance(15)
    await beat.beat()

    assert held.claimed
    assert held.extensions == 0
    assert beat.calls == 0
    clock.advance(15)
    assert [m.message_id for m in queue.visible] == [message.message_id]


async def test_message_held_past_max_hold_is_let_go(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock, max_hold_s=40)
    [message] = await receive(queue)
    held = beat.hold(message)

    clock.advance(15)
    await beat.beat()  # t=15: extended to 45
    clock.advance(15)
    await beat.beat()  # t=30: extended to 60
    assert held.extensions == 2

    clock.advance(15)
    await beat.beat()  # t=45: held for longer than 40 s, let go
    assert held.let_go
    assert held.extensions == 2
    assert beat.calls == 2
    assert queue.visible == []

    clock.advance(15)  # t=60: the last extension lapses
    await beat.beat()
    assert beat.calls == 2
    assert [m.message_id for m in queue.visible] == [message.message_id]


async def test_refused_extension_marks_the_message_lost(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock)
    [message, other] = await receive(queue, 2)
    lost = beat.hold(message)
    kept = beat.hold(other)
    # Another receiver takes the first message again: its receipt handle here is stale.
    await queue.change_visibility(message.receipt_handle, 0)
    [again] = await queue.receive(1, wait_time_s=0)
    assert again.message_id == message.message_id

    clock.advance(15)
    await beat.beat()

    assert lost.lost
    assert not kept.lost
    assert kept.extensions == 1

    clock.advance(15)
    await beat.beat()  # a lost message is not tried again
    assert lost.extensions == 0
    assert kept.extensions == 2


async def test_failed_extension_call_is_tried_again_on_the_next_beat(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock)
    [message] = await receive(queue)
    held = beat.hold(message)
    queue.fail_next("change_visibility_batch", ServerError("outage"))

    clock.advance(15)
    await beat.beat()
    assert held.extensions == 0
    assert not held.lost

    # The retry is due after RETRY_DELAY_S, long before the next tick.
    assert held.retry_at == clock() + RETRY_DELAY_S
    assert beat._next_delay() == RETRY_DELAY_S  # what run() sleeps
    clock.advance(RETRY_DELAY_S)
    await beat.beat()
    assert held.extensions == 1
    assert held.retry_at is None
    clock.advance(25)  # 40.5 s after the receive, 25 after the extension
    assert queue.visible == []
    assert not held.lapsed


async def test_dropped_message_is_forgotten(queue: FakeQueueTransport, clock: ManualClock) -> None:
    beat = heartbeat(queue, clock)
    [message] = await receive(queue)
    held = beat.hold(message)

    beat.drop(held)
    beat.drop(held)  # dropping twice is harmless
    clock.advance(15)
    await beat.beat()

    assert len(beat) == 0
    assert list(beat) == []
    assert beat.calls == 0


async def test_run_ticks_on_the_injected_sleep(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    ticks: list[float] = []
    three_ticks = asyncio.Event()

    async def sleep(delay_s: float) -> None:
        ticks.append(delay_s)
        if len(ticks) > 3:
            three_ticks.set()
            await asyncio.Event().wait()  # park until cancelled
        clock.advance(delay_s)

    beat = Heartbeat(
        queue, visibility_timeout_s=VISIBILITY_S, max_hold_s=3600, clock=clock, sleep=sleep
    )
    [message] = await receive(queue)
    held = beat.hold(message)

    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        task = group.create_task(beat.run())
        await three_ticks.wait()
        task.cancel()

    assert ticks == [5, 5, 5, 5]
    # Beats at 5, 10 and 15 s: only at 10 s has a third of the visibility passed.
    assert held.extensions == 1
    assert held.visible_until == clock() - 5 + VISIBILITY_S
    assert queue.visible == []


class HangingQueue:
    """A queue whose visibility calls never answer (a black-holed connection), until told."""

    def __init__(self, inner: FakeQueueTransport) -> None:
        self.inner = inner
        self.hang = True
        self.calls = 0
        self.started = asyncio.Event()

    @property
    def queue_name(self) -> str:
        return self.inner.queue_name

    async def change_visibility_batch(
        self, entries: Sequence[tuple[str, int]]
    ) -> list[BatchFailure]:
        self.calls += 1
        self.started.set()
        if self.hang:
            await asyncio.Event().wait()
        return await self.inner.change_visibility_batch(entries)


async def test_hung_extension_is_cut_short_retried_and_does_not_block_a_claim(
    queue: FakeQueueTransport, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    hanging = HangingQueue(queue)
    beat = Heartbeat(
        hanging,  # type: ignore[arg-type]  # only change_visibility_batch is called
        visibility_timeout_s=VISIBILITY_S,
        max_hold_s=3600,
        call_timeout_s=0.05,
        clock=clock,
    )
    [message, other] = await receive(queue, 2)
    held, claimed = beat.hold(message), beat.hold(other)
    clock.advance(15)

    async with asyncio.TaskGroup() as group:
        beating = group.create_task(beat.beat())
        await hanging.started.wait()
        assert claimed.in_call is not None
        # The claim waits for the call in flight, but only as long as the call's own timeout.
        await beat.claim(claimed)
        await beating

    assert beat.failures == 1
    assert held.retry_at == clock() + RETRY_DELAY_S
    assert [r.message_ids for r in caplog.records if r.action == "heartbeat_failed"] == [  # type: ignore[attr-defined]
        [message.message_id, other.message_id]
    ]
    hanging.hang = False
    clock.advance(RETRY_DELAY_S)
    await beat.beat()  # the retry goes through at once; the claimed message is left alone
    assert held.extensions == 1
    assert claimed.extensions == 0
    assert hanging.calls == 2


async def test_a_lapse_that_could_not_be_prevented_is_logged_with_the_message_id(
    queue: FakeQueueTransport, clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    beat = heartbeat(queue, clock)
    [message] = await receive(queue)
    held = beat.hold(message)
    queue.fail_next("change_visibility_batch", ServerError("outage"), times=100)

    with caplog.at_level(logging.DEBUG, logger="qworker.heartbeat"):
        for _ in range(8):  # 32 s: every try fails, the visibility (30 s) lapses
            clock.advance(4)
            await beat.beat()

    assert held.lapsed
    assert beat.lapses == 1
    lapses = [r for r in caplog.records if r.action == "heartbeat_lapsed"]  # type: ignore[attr-defined]
    assert len(lapses) == 1  # once per message, not once per beat
    assert lapses[0].levelname == "WARNING"
    assert lapses[0].message_id == message.message_id  # type: ignore[attr-defined]
    # The first failure is a warning; the retries through the outage are not repeated as such.
    failed = [r.levelname for r in caplog.records if r.action == "heartbeat_failed"]  # type: ignore[attr-defined]
    assert failed[0] == "WARNING"
    assert set(failed[1:]) == {"DEBUG"}


async def test_a_claimed_message_waiting_for_a_retry_does_not_make_the_heartbeat_spin(
    queue: FakeQueueTransport, clock: ManualClock
) -> None:
    beat = heartbeat(queue, clock)
    [message] = await receive(queue)
    held = beat.hold(message)
    queue.fail_next("change_visibility_batch", ServerError("outage"))
    clock.advance(15)
    await beat.beat()
    assert beat._next_delay() == RETRY_DELAY_S  # a retry is due soon

    await beat.claim(held)  # settling now: no retry, and the next tick is a normal one
    clock.advance(RETRY_DELAY_S)
    assert beat._next_delay() == beat.interval_s
    await beat.beat()
    assert beat.calls == 1
