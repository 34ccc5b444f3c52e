"""The batcher: single submits become batch calls of at most 10; every caller gets its answer."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from qworker.batch import RETRY_BASE_S, Batcher
from qworker.exceptions import QueueDoesNotExist, Throttled
from qworker.transport import MAX_BATCH, BatchFailure


class FakeCall:
    """A batch call that records its batches and answers from a script."""

    def __init__(
        self, answer: Callable[[int, Sequence[str]], list[BatchFailure]] | None = None
    ) -> None:
        self.batches: list[list[str]] = []
        self._answer = answer or (lambda _call, _items: [])

    async def __call__(self, items: Sequence[str]) -> list[BatchFailure]:
        self.batches.append(list(items))
        return self._answer(len(self.batches), items)


class Sleeps:
    """A no-op sleep that records what it was asked."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay_s: float) -> None:
        self.delays.append(delay_s)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


async def submit_all(batcher: Batcher[str], items: Sequence[str]) -> list[object]:
    """Submit every item at once, run the batcher until every caller has its answer, and return
    each caller's result (or the exception it got)."""
    # gather() creates the submit tasks before the batcher's, so every item is queued before the
    # batcher collects.
    submits = asyncio.gather(*(batcher.submit(item) for item in items), return_exceptions=True)
    async with asyncio.TaskGroup() as group:
        runner = group.create_task(batcher.run(), name="batcher")
        results = await submits
        runner.cancel()
    return list(results)


async def test_concurrent_submits_are_grouped_into_batches_of_ten(sleeps: Sleeps) -> None:
    call = FakeCall()
    batcher: Batcher[str] = Batcher(call, name="delete", max_wait_s=0, sleep=sleeps)
    items = [f"r-{i}" for i in range(25)]

    results = await submit_all(batcher, items)

    assert results == [None] * 25
    assert batcher.calls == 3
    assert [len(batch) for batch in call.batches] == [10, 10, 5]
    assert all(len(batch) <= MAX_BATCH for batch in call.batches)
    assert sorted(item for batch in call.batches for item in batch) == sorted(items)
    assert sleeps.delays == []


async def test_a_single_submit_is_sent_alone(sleeps: Sleeps) -> None:
    call = FakeCall()
    batcher: Batcher[str] = Batcher(call, name="delete", max_wait_s=0, sleep=sleeps)

    assert await submit_all(batcher, ["only"]) == [None]
    assert call.batches == [["only"]]


async def test_per_entry_failures_go_to_their_callers_by_index(sleeps: Sleeps) -> None:
    def answer(_call: int, items: Sequence[str]) -> list[BatchFailure]:
        return [
            BatchFailure(i, "ReceiptHandleIsInvalid", f"bad {item}", sender_fault=True)
            for i, item in enumerate(items)
            if item.startswith("bad")
        ]

    call = FakeCall(answer)
    batcher: Batcher[str] = Batcher(call, name="delete", max_wait_s=0, sleep=sleeps)
    items = [
        "ok-0",
        "bad-1",
        "ok-2",
        "ok-3",
        "bad-4",
        "ok-5",
        "ok-6",
        "ok-7",
        "ok-8",
        "ok-9",
        "bad-a",
    ]

    results = await submit_all(batcher, items)

    for item, result in zip(items, results, strict=True):
        if item.startswith("bad"):
            assert isinstance(result, BatchFailure)
            assert (result.code, result.message) == ("ReceiptHandleIsInvalid", f"bad {item}")
        else:
            assert result is None
    assert batcher.calls == 2  # sender faults are not retried
    assert sleeps.delays == []


async def test_transient_whole_call_errors_are_retried(sleeps: Sleeps) -> None:
    calls = 0

    async def send(items: Sequence[str]) -> list[BatchFailure]:
        nonlocal calls
        calls += 1
        if calls <= 2:
            raise Throttled
        return []

    batcher: Batcher[str] = Batcher(send, name="delete", max_wait_s=0, sleep=sleeps)

    assert await submit_all(batcher, ["a", "b"]) == [None, None]
    assert batcher.calls == 3
    assert len(sleeps.delays) == 2
    assert 0 <= sleeps.delays[0] <= RETRY_BASE_S
    assert 0 <= sleeps.delays[1] <= RETRY_BASE_S * 2


async def test_transient_errors_reach_every_caller_after_the_last_attempt(sleeps: Sleeps) -> None:
    error = Throttled("still throttled")

    async def send(items: Sequence[str]) -> list[BatchFailure]:
        raise error

    batcher: Batcher[str] = Batcher(send, name="delete", max_wait_s=0, attempts=3, sleep=sleeps)
    results = await submit_all(batcher, ["a", "b", "c"])

    assert results == [error, error, error]
    assert batcher.calls == 3
    assert len(sleeps.delays) == 2


async def test_non_transient_errors_reach_every_caller_at_once(sleeps: Sleeps) -> None:
    error = QueueDoesNotExist("gone")

    async def send(items: Sequence[str]) -> list[BatchFailure]:
        raise error

    batcher: Batcher[str] = Batcher(send, name="delete", max_wait_s=0, sleep=sleeps)
    results = await submit_all(batcher, ["a", "b"])

    assert results == [error, error]
    assert batcher.calls == 1
    assert sleeps.delays == []


async def test_entries_not_blamed_on_the_sender_are_retried(sleeps: Sleeps) -> None:
    def answer(call: int, items: Sequence[str]) -> list[BatchFailure]:
        if call == 1:
            return [
                BatchFailure(1, "InternalError", sender_fault=False),
                BatchFailure(2, "InvalidParameterValue", sender_fault=True),
            ]
        return []

    call = FakeCall(answer)
    batcher: Batcher[str] = Batcher(call, name="release", max_wait_s=0, sleep=sleeps)

    results = await submit_all(batcher, ["a", "b", "c"])

    assert results[0] is None
    assert results[1] is None  # retried alone, then succeeded
    assert results[2] == BatchFailure(2, "InvalidParameterValue", sender_fault=True)
    assert call.batches == [["a", "b", "c"], ["b"]]
    assert len(sleeps.delays) == 1


async def test_entries_failing_on_every_attempt_get_their_failure(sleeps: Sleeps) -> None:
    def answer(_call: int, items: Sequence[str]) -> list[BatchFailure]:
        return [BatchFailure(0, "InternalError", sender_fault=False)]

    call = FakeCall(answer)
    batcher: Batcher[str] = Batcher(call, name="release", max_wait_s=0, attempts=2, sleep=sleeps)

    [result] = await submit_all(batcher, ["a"])

    assert result == BatchFailure(0, "InternalError", sender_fault=False)
    assert batcher.calls == 2


# -- send_soon: answers by callback, no future --------------------------------------------------


async def test_send_soon_calls_back_each_entry_once_with_its_answer(sleeps: Sleeps) -> None:
    def answer(_call: int, items: Sequence[str]) -> list[BatchFailure]:
        return [
            BatchFailure(i, "ReceiptHandleIsInvalid", "bad", sender_fault=True)
            for i, item in enumerate(items)
            if item == "bad"
        ]

    batcher: Batcher[str] = Batcher(FakeCall(answer), name="delete", max_wait_s=0, sleep=sleeps)
    answers: dict[str, list[tuple[object, object]]] = {}

    def record(item: object, failure: BatchFailure | None, error: Exception | None) -> None:
        answers.setdefault(str(item), []).append((failure, error))

    for item in ("ok-1", "bad", "ok-2"):
        batcher.send_soon(item, record, item)  # one callback; the token tells the items apart
    async with asyncio.TaskGroup() as group:
        runner = group.create_task(batcher.run(), name="batcher")
        await batcher.flush()
        runner.cancel()

    assert answers["ok-1"] == [(None, None)]
    assert answers["ok-2"] == [(None, None)]
    [(failure, error)] = answers["bad"]
    assert isinstance(failure, BatchFailure)
    assert failure.code == "ReceiptHandleIsInvalid"
    assert error is None


async def test_send_soon_gets_the_error_of_a_call_that_failed_for_good(sleeps: Sleeps) -> None:
    async def gone(_items: Sequence[str]) -> list[BatchFailure]:
        raise QueueDoesNotExist("gone")

    batcher: Batcher[str] = Batcher(gone, name="delete", max_wait_s=0, sleep=sleeps)
    answers: list[tuple[object, object, object]] = []
    batcher.send_soon("r-1", lambda token, f, e: answers.append((token, f, e)), "r-1's")
    async with asyncio.TaskGroup() as group:
        runner = group.create_task(batcher.run(), name="batcher")
        await batcher.flush()
        runner.cancel()

    [(given, failure, error)] = answers
    assert given == "r-1's"
    assert failure is None
    assert isinstance(error, QueueDoesNotExist)


async def test_a_callback_that_raises_is_logged_and_the_batcher_goes_on(
    sleeps: Sleeps, caplog: pytest.LogCaptureFixture
) -> None:
    batcher: Batcher[str] = Batcher(FakeCall(), name="delete", max_wait_s=0, sleep=sleeps)
    answered: list[str] = []

    def broken(_token: object, _failure: object, _error: object) -> None:
        raise RuntimeError("callback bug")

    batcher.send_soon("r-1", broken)
    batcher.send_soon("r-2", lambda _t, _f, _e: answered.append("r-2"))
    async with asyncio.TaskGroup() as group:
        runner = group.create_task(batcher.run(), name="batcher")
        await batcher.flush()
        runner.cancel()

    assert answered == ["r-2"]
    assert any(getattr(r, "action", None) == "delete_callback_failed" for r in caplog.records)


async def test_flush_waits_for_the_answer_of_a_batch_in_flight(sleeps: Sleeps) -> None:
    release = asyncio.Event()
    sent = asyncio.Event()

    async def slow(_items: Sequence[str]) -> list[BatchFailure]:
        sent.set()
        await release.wait()
        return []

    batcher: Batcher[str] = Batcher(slow, name="delete", max_wait_s=0, sleep=sleeps)
    answers: list[object] = []
    batcher.send_soon("r-1", lambda _t, f, _e: answers.append(f))
    future = batcher.enqueue("r-2")
    async with asyncio.TaskGroup() as group:
        runner = group.create_task(batcher.run(), name="batcher")
        flushed = group.create_task(batcher.flush(), name="flush")
        await sent.wait()
        assert not flushed.done()
        assert answers == []
        release.set()
        await flushed
        runner.cancel()

    assert answers == [None]
    assert future.result() is None


async def test_flush_with_nothing_queued_returns_at_once(sleeps: Sleeps) -> None:
    batcher: Batcher[str] = Batcher(FakeCall(), name="delete", max_wait_s=0, sleep=sleeps)
    await batcher.flush()
