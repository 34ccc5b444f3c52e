"""Consumer mechanics on the in-memory transport: capacity, shutdown order, outages, accounting."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from typing import cast

import pytest

from qworker.exceptions import AccessDenied, BadRequest, QueueUnavailable, ServerError, Throttled
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
from qworker.role import Identity
from qworker.testing import FakeQueueTransport, FakeSqs, ManualClock, consumer_for
from qworker.transport import Message, QueueTransport, SendEntry


async def no_sleep(_: float) -> None:
    await asyncio.sleep(0)


class Collect:
    def __init__(self) -> None:
        self.records: list[OutcomeRecord] = []
        self._waits: list[tuple[Outcome, int, asyncio.Event]] = []

    def record(self, record: OutcomeRecord) -> None:
        self.records.append(record)
        for outcome, count, reached in self._waits:
            if self.count(outcome) >= count:
                reached.set()

    def count(self, outcome: Outcome) -> int:
        return sum(r.outcome is outcome for r in self.records)

    async def wait_for(self, outcome: Outcome, count: int) -> None:
        """Wait until `count` records have `outcome`."""
        reached = asyncio.Event()
        if self.count(outcome) < count:
            self._waits.append((outcome, count, reached))
            await reached.wait()


async def fill(queue: FakeQueueTransport, count: int) -> None:
    for i in range(count):
        await queue.send(json.dumps({"n": i}))


async def test_concurrency_is_independent_of_the_receive_batch_and_bounded() -> None:
    queue = FakeSqs().create_queue("wide")
    await fill(queue, 100)
    gate = asyncio.Event()
    active = 0
    peak = 0

    async def handle(body: dict[str, int]) -> None:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await gate.wait()
        active -= 1

    consumer = consumer_for(queue, handle, concurrency=25, pollers=3, wait_time_s=0)
    run = asyncio.create_task(consumer.run_until_empty())
    async with asyncio.timeout(5):
        await consumer.wait_in_flight(25)
    for _ in range(5):
        await asyncio.sleep(0)  # let any extra poller try its luck: it must find no capacity
    assert active == 25  # handlers never exceed the concurrency
    # Held: the 25 running and at most one receive per poller ahead (capped at the concurrency),
    # waiting for a handler slot.
    assert len(queue.in_flight) == 25 + min(25, 10 * 3)
    gate.set()
    async with asyncio.timeout(5):
        await run
    assert peak == 25
    assert consumer.statistics().acked == 100


async def test_receive_asks_only_for_free_slots() -> None:
    queue = FakeSqs().create_queue("narrow")
    await fill(queue, 10)
    gate = asyncio.Event()
    running = 0

    async def handle(body: dict[str, int]) -> None:
        nonlocal running
        running += 1
        await gate.wait()

    consumer = consumer_for(queue, handle, concurrency=3, pollers=2)
    run = asyncio.create_task(consumer.run_until_empty())
    async with asyncio.timeout(5):
        await consumer.wait_in_flight(6)
    for _ in range(5):
        await asyncio.sleep(0)  # any extra receive would happen now
    # 3 running and 3 (one receive's worth, capped at the concurrency) waiting to start.
    assert len(queue.in_flight) == 6
    assert len(queue.visible) == 4
    assert running == 3
    gate.set()
    async with asyncio.timeout(5):
        await run
    assert consumer.statistics().acked == 10


async def test_stop_cancels_a_pending_long_poll_at_once() -> None:
    queue = FakeSqs().create_queue("idle")

    async def handle(body: str) -> None:
        raise AssertionError("no message expected")

    consumer = consumer_for(queue, handle, wait_time_s=20)
    run = asyncio.create_task(consumer.run())
    await asyncio.sleep(0)
    consumer.stop()
    consumer.stop()  # idempotent
    async with asyncio.timeout(2):
        await run
    assert consumer.statistics().stopping


async def test_shutdown_lets_running_handler_finish_and_releases_unstarted() -> None:
    queue = FakeSqs().create_queue("orders.fifo")
    await queue.send_batch(
        [SendEntry(json.dumps({"n": i}), group_id="g", deduplication_id=str(i)) for i in range(3)]
    )
    started = asyncio.Event()
    gate = asyncio.Event()
    sink = Collect()

    async def handle(body: dict[str, int]) -> None:
        started.set()
        await gate.wait()

    consumer = consumer_for(queue, handle, fifo=True, shutdown_grace_s=30, sinks=[sink])
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    consumer.stop()
    gate.set()
    async with asyncio.timeout(5):
        await run

    stats = consumer.statistics()
    assert (stats.acked, stats.released, stats.in_flight) == (1, 2, 0)
    # Released: hidden only until the long polls the stop cancelled have ended on the server.
    assert [json.loads(m.body)["n"] for m in queue.messages] == [1, 2]
    assert [r.outcome for r in sink.records] == [
        Outcome.SUCCEEDED,
        Outcome.RELEASED,
        Outcome.RELEASED,
    ]


async def test_grace_expiry_cancels_handler_and_never_deletes_its_message() -> None:
    queue = FakeSqs().create_queue("stuck")
    await fill(queue, 1)
    started = asyncio.Event()
    cancelled = threading.Event()

    async def handle(body: dict[str, int]) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    consumer = consumer_for(queue, handle, shutdown_grace_s=0.01)
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    consumer.stop()
    async with asyncio.timeout(5):
        await run

    assert cancelled.is_set()
    assert queue.deleted == []
    assert len(queue.visible) == 1  # released: visible again at once
    assert consumer.statistics().released == 1


async def test_cancelling_run_drains_then_reraises() -> None:
    queue = FakeSqs().create_queue("cancel")
    await fill(queue, 1)
    started = asyncio.Event()
    gate = asyncio.Event()

    async def handle(body: dict[str, int]) -> None:
        started.set()
        await gate.wait()

    consumer = consumer_for(queue, handle, shutdown_grace_s=30)
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    run.cancel()
    await asyncio.sleep(0)
    assert consumer.stopping
    gate.set()
    with pytest.raises(asyncio.CancelledError):
        await run
    assert consumer.statistics().acked == 1
    assert len(queue.deleted) == 1


@pytest.mark.parametrize("error", [QueueUnavailable(), Throttled(), ServerError()])
async def test_transient_receive_errors_back_off_and_recover(error: Exception) -> None:
    queue = FakeSqs().create_queue("flaky")
    await fill(queue, 3)
    queue.fail_next("receive", error, times=4)  # type: ignore[arg-type]

    async def handle(body: dict[str, int]) -> None:
        pass

    consumer = consumer_for(queue, handle, sleep=no_sleep, pollers=1)
    await consumer.run_until_empty()
    stats = consumer.statistics()
    assert stats.receive_errors == 4
    assert stats.acked == 3


async def test_lasting_receive_error_stops_run_loudly() -> None:
    queue = FakeSqs().create_queue("denied")
    queue.fail_next("receive", AccessDenied("no sqs:ReceiveMessage"))

    async def handle(body: str) -> None:
        pass

    consumer = consumer_for(queue, handle, pollers=1)
    with pytest.raises(AccessDenied, match="ReceiveMessage"):
        await consumer.run_until_empty()


async def test_a_failing_poller_leaves_no_task_behind() -> None:
    """One poller's receive fails for good while its sibling's long poll is pending: `run()`
    raises the failure, and the sibling's receive is cancelled and awaited, not leaked."""
    queue = FakeSqs().create_queue("leak")
    queue.fail_next("receive", AccessDenied("no sqs:ReceiveMessage"))
    pending = asyncio.Event()
    receive = queue.receive

    async def receive_or_wait(
        max_messages: int, *, wait_time_s: float, visibility_timeout_s: int | None = None
    ) -> list[Message]:
        if queue.calls["receive"] == 0:
            return await receive(
                max_messages, wait_time_s=wait_time_s, visibility_timeout_s=visibility_timeout_s
            )
        queue.calls["receive"] += 1
        await pending.wait()  # a long poll that is still waiting when its sibling fails
        return []

    queue.receive = receive_or_wait  # type: ignore[method-assign]

    async def handle(body: str) -> None:
        pass

    consumer = consumer_for(queue, handle, pollers=2)
    with pytest.raises(AccessDenied, match="ReceiveMessage"):
        await consumer.run()
    assert queue.calls["receive"] == 2  # both pollers were receiving
    left = asyncio.all_tasks() - {asyncio.current_task()}
    assert not left, [t.get_name() for t in left]


async def test_a_failed_delete_is_counted_and_the_message_comes_back() -> None:
    queue = FakeSqs().create_queue("nodelete")
    await fill(queue, 1)
    queue.fail_next("delete_batch", BadRequest("refused"))
    sink = Collect()

    async def handle(body: dict[str, int]) -> None:
        pass

    consumer = consumer_for(queue, handle, sinks=[sink], visibility_timeout_s=30)
    await consumer.run_until_empty()
    assert consumer.statistics().unsettled == 1
    assert [r.settled for r in sink.records] == [False]
    assert queue.deleted == []
    assert len(queue.in_flight) == 1  # invisible until its visibility lapses, then redelivered


async def test_handler_timeout_fails_the_message() -> None:
    queue = FakeSqs().create_queue("timeout")
    await fill(queue, 1)
    sink = Collect()

    async def handle(body: dict[str, int]) -> None:
        await asyncio.Event().wait()

    consumer = consumer_for(queue, handle, handler_timeout_s=0.01, sinks=[sink])
    consumer.settler.release_failed = False
    run = asyncio.create_task(consumer.run())
    while not sink.records:  # noqa: ASYNC110 (the timeout is real time: there is nothing else to wait on)
        await asyncio.sleep(0.005)
    consumer.stop()
    await run
    assert sink.records[0].outcome is Outcome.FAILED
    assert sink.records[0].error == "handler timed out after 0.01 s"


async def test_sync_handler_runs_in_a_thread() -> None:
    queue = FakeSqs().create_queue("sync")
    await fill(queue, 2)
    threads: set[str] = set()

    def handle(body: dict[str, int]) -> None:
        threads.add(threading.current_thread().name)

    consumer = consumer_for(queue, handle)
    await consumer.run_until_empty()
    assert consumer.statistics().acked == 2
    assert threading.current_thread().name not in threads


async def test_records_carry_role_version_and_first_attempt() -> None:
    queue = FakeSqs().create_queue("records")
    await fill(queue, 1)
    sink = Collect()

    async def handle(body: dict[str, int]) -> None:
        pass

    identity = Identity(service="svc", role="canary", version="v42")
    consumer = consumer_for(queue, handle, identity=identity, sinks=[sink])
    await consumer.run_until_empty()
    record = sink.records[0]
    assert (record.role, record.version, record.queue) == ("canary", "v42", "records")
    assert record.first_attempt
    assert record.message_age_s >= 0
    assert "acked=1" in repr(consumer)


async def test_a_group_runs_in_order_even_if_the_server_hands_it_out_while_held() -> None:
    # A standard (non-FIFO) fake queue does not block groups: later messages of a group arrive in
    # later receives while earlier ones are still held, as a lax server might hand them out.
    queue = FakeSqs().create_queue("lax")
    await queue.send_batch(
        [SendEntry(json.dumps({"g": g, "n": n}), group_id=g) for n in range(4) for g in "ab"]
    )
    seen: dict[str, list[int]] = {"a": [], "b": []}
    gate = asyncio.Event()
    b_done = asyncio.Event()

    async def handle(body: dict[str, object]) -> None:
        group, n = str(body["g"]), int(str(body["n"]))
        if (group, n) == ("a", 0):
            await gate.wait()  # the group's first message is slow...
        seen[group].append(n)
        if len(seen["b"]) == 4:
            b_done.set()

    # ...while receives of at most two messages keep bringing the group's later ones.
    consumer = consumer_for(queue, handle, fifo=True, concurrency=5, pollers=2)
    run = asyncio.create_task(consumer.run_until_empty())
    async with asyncio.timeout(5):
        await b_done.wait()
    gate.set()
    async with asyncio.timeout(5):
        await run
    assert seen == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3]}


async def test_idle_drain_pollers_do_not_spin_while_a_handler_works() -> None:
    queue = FakeSqs().create_queue("spin")
    await fill(queue, 1)
    started = asyncio.Event()
    gate = asyncio.Event()

    async def handle(body: dict[str, int]) -> None:
        started.set()
        await gate.wait()

    consumer = consumer_for(queue, handle, pollers=3)
    run = asyncio.create_task(consumer.run_until_empty())
    async with asyncio.timeout(5):
        await started.wait()
    before = queue.calls["receive"]
    for _ in range(200):
        await asyncio.sleep(0)  # give idle pollers every chance to poll again
    assert queue.calls["receive"] - before <= 3  # each idle poller looks at most once more
    gate.set()
    async with asyncio.timeout(5):
        await run
    assert consumer.statistics().acked == 1


@pytest.mark.parametrize("seed", range(20))
async def test_a_failed_group_releases_everything_that_joins_it_meanwhile(seed: int) -> None:
    # On a lax server more of a failed group's messages can arrive while the chain is releasing
    # the rest: they must be released too, or they would be held for ever and the drain hang.
    queue = FakeSqs().create_queue("lax-fail")
    await queue.send_batch(
        [SendEntry(json.dumps({"g": "a", "n": n}), group_id="a") for n in range(8)]
    )
    failures_left = 1 + seed % 3
    done: list[int] = []

    async def handle(body: dict[str, object]) -> None:
        nonlocal failures_left
        for _ in range(seed % 4):
            await asyncio.sleep(0)  # vary how receives interleave with the handler
        if failures_left > 0:
            failures_left -= 1
            raise RuntimeError("transient")
        done.append(int(str(body["n"])))

    consumer = consumer_for(queue, handle, fifo=True, concurrency=3, pollers=3)
    async with asyncio.timeout(10):
        await consumer.run_until_empty()
    assert sorted(done) == list(range(8))
    assert consumer.statistics().in_flight == 0


async def test_a_redelivery_while_the_success_is_being_deleted_is_not_run_again() -> None:
    clock = ManualClock()
    queue = FakeSqs(clock=clock).create_queue("slow-delete", visibility_timeout_s=30)
    await fill(queue, 1)
    queue.fail_next("delete_batch", ServerError("outage"), times=2)  # the delete is retried
    runs = 0

    async def handle(body: dict[str, int]) -> None:
        nonlocal runs
        runs += 1
        # The delete will be slow: let the visibility lapse meanwhile (heartbeat ticks are real
        # time and do not come in this test), so SQS hands the message out again.
        clock.advance(31)

    consumer = consumer_for(queue, handle, clock=clock, pollers=2)
    await consumer.run_until_empty()

    assert runs == 1
    stats = consumer.statistics()
    assert (stats.acked, stats.duplicates, stats.unsettled) == (1, 1, 0)
    assert queue.messages == []


async def test_grace_expiry_in_a_fifo_group_releases_the_whole_group() -> None:
    queue = FakeSqs().create_queue("stuck.fifo")
    await queue.send_batch(
        [SendEntry(json.dumps({"n": i}), group_id="g", deduplication_id=str(i)) for i in range(3)]
    )
    started = asyncio.Event()

    async def handle(body: dict[str, int]) -> None:
        started.set()
        await asyncio.Event().wait()

    consumer = consumer_for(queue, handle, fifo=True, shutdown_grace_s=0.01)
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
    consumer.stop()
    async with asyncio.timeout(5):
        await run
    assert queue.deleted == []
    assert [json.loads(m.body)["n"] for m in queue.messages] == [0, 1, 2]
    assert consumer.statistics().released == 3
    assert len(consumer._groups) == 0


async def test_stop_waits_for_the_delete_of_a_success_before_run_returns() -> None:
    """A success settles without a waiting task: the stop still flushes its delete first."""
    queue = FakeSqs().create_queue("flush")
    await fill(queue, 1)
    handled = asyncio.Event()
    deleting = asyncio.Event()
    answer = asyncio.Event()
    delete_batch = queue.delete_batch

    async def slow_delete(receipt_handles: list[str]) -> object:
        deleting.set()
        await answer.wait()
        return await delete_batch(receipt_handles)

    queue.delete_batch = slow_delete  # type: ignore[method-assign,assignment]

    async def handle(body: dict[str, int]) -> None:
        handled.set()

    consumer = consumer_for(queue, handle, wait_time_s=0)
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await deleting.wait()
    assert handled.is_set()
    consumer.stop()
    for _ in range(20):
        await asyncio.sleep(0)  # run() has every chance to return early: it must not
    assert not run.done()
    assert consumer.statistics().in_flight == 1  # held (and extended) until the delete answers
    answer.set()
    async with asyncio.timeout(5):
        await run
    stats = consumer.statistics()
    assert (stats.acked, stats.unsettled, stats.in_flight) == (1, 0, 0)
    assert queue.messages == []


async def test_stop_releases_messages_queued_for_a_slot_while_every_handler_still_runs() -> None:
    queue = FakeSqs().create_queue("orders")
    await fill(queue, 6)
    running: list[int] = []
    two_run = asyncio.Event()
    finish = asyncio.Event()
    sink = Collect()

    async def handle(body: dict[str, int]) -> None:
        running.append(body["n"])
        if len(running) == 2:
            two_run.set()
        await finish.wait()

    consumer = consumer_for(queue, handle, concurrency=2, shutdown_grace_s=30, sinks=[sink])
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await two_run.wait()
        await consumer.wait_in_flight(3)  # 2 running, the rest queued for a handler slot
        queued = consumer.statistics().in_flight - 2
        consumer.stop()
        await sink.wait_for(Outcome.RELEASED, queued)  # at once, though both slots stay busy
        assert not run.done()
        finish.set()
        await run

    assert sorted(running) == [0, 1]  # the queued ones never started
    stats = consumer.statistics()
    assert (stats.acked, stats.released, stats.in_flight) == (2, queued, 0)
    assert len(queue.visible) == 4


class SlowVisibility:
    """A transport whose visibility changes wait until `go` is set."""

    def __init__(self, inner: FakeQueueTransport) -> None:
        self.inner = inner
        self.go = asyncio.Event()
        self.waiting = asyncio.Event()

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def change_visibility(self, receipt_handle: str, timeout_s: int) -> None:
        self.waiting.set()
        await self.go.wait()
        await self.inner.change_visibility(receipt_handle, timeout_s)

    async def change_visibility_batch(self, entries: list[tuple[str, int]]) -> object:
        self.waiting.set()
        await self.go.wait()
        return await self.inner.change_visibility_batch(entries)


async def test_a_failure_settling_slowly_does_not_hold_its_handler_slot() -> None:
    queue = FakeSqs().create_queue("orders")
    await fill(queue, 2)
    slow = SlowVisibility(queue)
    handled: list[int] = []

    async def handle(body: dict[str, int]) -> None:
        handled.append(body["n"])
        if handled == [0]:  # the first message fails once
            raise ValueError("boom")

    sink = Collect()
    consumer = consumer_for(cast("QueueTransport", slow), handle, concurrency=1, sinks=[sink])
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await slow.waiting.wait()  # the failure's visibility change hangs ...
        await sink.wait_for(Outcome.SUCCEEDED, 1)  # ... and the one slot runs the next message
        assert consumer.statistics().failed == 0  # (counted once settled)
        slow.go.set()
        await consumer.wait_idle()
        consumer.stop()
        await run

    assert handled == [0, 1, 0]  # (the failure came back, and then succeeded)
    stats = consumer.statistics()
    assert (stats.acked, stats.failed) == (2, 1)


class Crash(BaseException):
    """What a handler may raise that is not an `Exception`."""


async def test_a_cancel_a_handler_swallowed_leaves_the_next_message_a_plain_failure() -> None:
    # Handlers share runner tasks: a cancel request one handler swallowed must not make the next
    # message's error look like a shutdown's cancellation (it would be released, not failed).
    queue = FakeSqs().create_queue("orders")
    await fill(queue, 3)
    sink = Collect()

    async def handle(body: dict[str, int]) -> None:
        if body["n"] == 0:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0)
        elif body["n"] == 1:
            raise Crash("boom")  # not an Exception: only a real cancellation flows on

    # (The failure stays hidden past the stop: no redelivery of it is held, and let go, then.)
    retry = RetryPolicy(base_s=60, jitter=0)
    consumer = consumer_for(queue, handle, concurrency=1, sinks=[sink], retry_policy=retry)
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await sink.wait_for(Outcome.FAILED, 1)
        await sink.wait_for(Outcome.SUCCEEDED, 2)
        consumer.stop()
        await run

    failed = [r for r in sink.records if r.outcome is Outcome.FAILED]
    assert failed
    assert all("boom" in (r.error or "") for r in failed)
    assert sink.count(Outcome.RELEASED) == 0  # not taken for a shutdown's cancellation
