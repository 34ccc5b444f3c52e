"""Dispatch: whatever a handler raises is an outcome of its message; only a real cancellation flows.

Fast unit tests on the in-memory fake (tests/test_faults_handlers.py runs the same crashes in real
worker processes on LocalStack).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable

import pytest

from qworker.dispatch import Dispatcher
from qworker.exceptions import Reject, Retry
from qworker.handler import HandlerSpec
from qworker.message import HOPS_ATTRIBUTE, RECEIVES_ATTRIBUTE, MessageAttribute
from qworker.outcome import Outcome
from qworker.role import Identity
from qworker.testing import FakeSqs, consumer_for
from qworker.transport import Message


class Custom(BaseException):
    """A handler's own BaseException."""


def message(message_id: str = "m-1") -> Message:
    return Message(
        message_id=message_id,
        receipt_handle="r-1",
        body="{}",
        attributes={"ApproximateReceiveCount": "1"},
    )


def dispatcher(handler: Callable[..., object], timeout_s: float | None = None) -> Dispatcher:
    spec = HandlerSpec.from_function(handler, queue="orders")  # type: ignore[arg-type]
    return Dispatcher(spec, queue="orders", identity=Identity(service="t"), timeout_s=timeout_s)


CRASHES: dict[str, Callable[[], BaseException]] = {
    "SystemExit": lambda: SystemExit(3),
    "KeyboardInterrupt": KeyboardInterrupt,
    "GeneratorExit": GeneratorExit,
    "BaseException": lambda: BaseException("bare"),
    "Custom": lambda: Custom("own"),
    "CancelledError": asyncio.CancelledError,
}


@pytest.mark.parametrize("kind", sorted(CRASHES))
@pytest.mark.parametrize("sync", [False, True], ids=["async", "sync"])
async def test_a_base_exception_from_a_handler_is_a_failed_outcome_logged_with_traceback(
    kind: str, *, sync: bool, caplog: pytest.LogCaptureFixture
) -> None:
    crash = CRASHES[kind]

    async def async_handle(body: str) -> None:
        raise crash()

    def sync_handle(body: str) -> None:
        raise crash()

    run = dispatcher(sync_handle if sync else async_handle)

    with caplog.at_level(logging.ERROR, logger="qworker.dispatch"):
        record = await run(message("m-crash"))

    assert record.outcome is Outcome.FAILED
    assert record.error is not None
    assert record.error.startswith(kind)
    (logged,) = caplog.records
    assert logged.action == "handler_crashed"  # type: ignore[attr-defined]
    assert logged.message_id == "m-crash"  # type: ignore[attr-defined]
    assert logged.exc_info is not None
    assert logged.exc_info[0] is not None
    assert logged.exc_info[0].__name__ == kind


async def test_stop_iteration_from_a_sync_handler_does_not_hang_the_call() -> None:
    """It cannot cross an asyncio future (set_exception refuses it): it is carried back."""

    def handle(body: str) -> None:
        raise StopIteration

    record = await asyncio.wait_for(dispatcher(handle)(message()), timeout=10)

    assert record.outcome is Outcome.FAILED
    # Raised again in the event loop, out of a coroutine: Python makes it a RuntimeError.
    assert record.error == "RuntimeError: coroutine raised StopIteration"


async def test_an_ordinary_exception_is_a_failure_with_its_traceback_not_a_crash_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def handle(body: str) -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.DEBUG, logger="qworker.dispatch"):
        record = await dispatcher(handle)(message())

    assert (record.outcome, record.error) == (Outcome.FAILED, "RuntimeError: boom")
    (logged,) = caplog.records
    assert logged.action == "handler_failed"  # type: ignore[attr-defined]
    assert logged.levelno == logging.WARNING
    assert logged.exc_info is not None
    assert logged.exc_info[0] is RuntimeError


async def test_a_real_cancellation_still_cancels() -> None:
    started = asyncio.Event()

    async def handle(body: str) -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(dispatcher(handle)(message()))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_handler_turning_a_real_cancellation_into_system_exit_still_cancels() -> None:
    """The task was cancelled: whatever the handler raised instead, the task ends cancelled."""
    started = asyncio.Event()

    async def handle(body: str) -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise SystemExit(1) from None

    task = asyncio.create_task(dispatcher(handle)(message()))
    await started.wait()
    task.cancel()

    with pytest.raises(asyncio.CancelledError):
        await task


async def test_the_handler_timeout_is_still_a_timeout_not_a_crash() -> None:
    async def handle(body: str) -> None:
        await asyncio.Event().wait()

    record = await dispatcher(handle, timeout_s=0.01)(message())

    assert (record.outcome, record.error) == (Outcome.FAILED, "handler timed out after 0.01 s")


async def test_a_handler_raising_cancelled_error_after_its_timeout_fired_is_a_timeout() -> None:
    """The timeout's own cancel is handled by the timeout, not mistaken for shutdown."""

    async def handle(body: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise KeyboardInterrupt from None

    record = await dispatcher(handle, timeout_s=0.01)(message())

    assert record.outcome is Outcome.FAILED
    assert record.error == "KeyboardInterrupt"


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: Retry(delay_s=math.nan), "ValueError"),
        (lambda: Retry(delay_s=math.inf), "ValueError"),
        (lambda: Retry(delay_s=-0.5), "ValueError"),
        (lambda: Retry(delay_s="5"), "TypeError"),  # type: ignore[arg-type]
        (lambda: Retry(delay_s=True), "TypeError"),
        (lambda: Retry(1, reason=7), "TypeError"),  # type: ignore[arg-type]
        (lambda: Reject(""), "ValueError"),
        (lambda: Reject("   "), "ValueError"),
        (lambda: Reject(None), "TypeError"),  # type: ignore[arg-type]
    ],
)
async def test_invalid_retry_or_reject_fails_where_it_is_built(
    build: Callable[[], BaseException], error: str
) -> None:
    async def handle(body: str) -> None:
        raise build()

    record = await dispatcher(handle)(message())

    assert record.outcome is Outcome.FAILED
    assert record.error is not None
    assert record.error.startswith(f"{error}: ")
    assert "Retry" in record.error or "Reject" in record.error  # it says which was misbuilt


async def test_a_handler_raising_cancelled_error_is_retried_with_backoff_not_released() -> None:
    """On the fake: the message fails (receive count climbs, it reaches the DLQ after
    maxReceiveCount), it is never released as "cancelled at shutdown", the consumer survives and
    the bystanders succeed."""
    sqs = FakeSqs()
    orders = sqs.create_queue("orders", dead_letter="orders-dlq", max_receive_count=3)
    for body in ["cancel", "ok-1", "ok-2"]:
        await orders.send(body)
    runs: list[str] = []

    async def handle(body: str) -> None:
        runs.append(body)
        if body == "cancel":
            raise asyncio.CancelledError

    consumer = consumer_for(orders, handle)
    await asyncio.wait_for(consumer.run_until_empty(), timeout=10)

    stats = consumer.statistics()
    assert (stats.acked, stats.failed, stats.released) == (2, 3, 0)
    assert runs.count("cancel") == 3  # maxReceiveCount, then the redrive policy took it
    assert [m.body for m in sqs.queue("orders-dlq").messages] == ["cancel"]


def test_valid_retry_and_reject_arguments_are_kept() -> None:
    assert Retry(delay_s=3).delay_s == 3.0
    assert isinstance(Retry(delay_s=3).delay_s, float)
    assert Retry(delay_s=0.25, reason="later").reason == "later"
    assert Reject("bad").reason == "bad"


async def test_a_failing_handler_logs_its_traceback_a_few_times_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]

    async def handle(body: str) -> None:
        raise ValueError("total must be positive")

    spec = HandlerSpec.from_function(handle, queue="orders")
    run = Dispatcher(spec, queue="orders", identity=Identity(service="t"), clock=lambda: now[0])

    with caplog.at_level(logging.WARNING, logger="qworker.dispatch"):
        outcomes = [(await run(message(f"m-{i}"))).outcome for i in range(20)]
        now[0] += 30.0  # one more traceback is due
        outcomes.append((await run(message("m-late"))).outcome)

    assert set(outcomes) == {Outcome.FAILED}
    logged = [r for r in caplog.records if getattr(r, "action", None) == "handler_failed"]
    assert [r.message_id for r in logged] == ["m-0", "m-1", "m-2", "m-3", "m-4", "m-late"]  # type: ignore[attr-defined]
    assert all(r.exc_info is not None and r.exc_info[0] is ValueError for r in logged)
    assert logged[-1].tracebacks_held_back == 15  # type: ignore[attr-defined]
    assert logged[0].tracebacks_held_back is None  # type: ignore[attr-defined]


def test_a_record_carries_every_field_where_it_belongs() -> None:
    """`Dispatcher.record` builds the record positionally (for speed): each value in its field."""

    async def handle(body: str) -> None:
        return None

    spec = HandlerSpec.from_function(handle, queue="orders")
    run = Dispatcher(
        spec,
        queue="orders",
        identity=Identity(service="t", role="canary", version="v7"),
        wall_clock=lambda: 1_700_000_010.5,
    )
    sent = Message(
        message_id="m-9",
        receipt_handle="r-9",
        body="x",
        attributes={"ApproximateReceiveCount": "2", "SentTimestamp": "1700000000000"},
        message_attributes={
            HOPS_ATTRIBUTE: MessageAttribute(data_type="Number", value="1"),
            RECEIVES_ATTRIBUTE: MessageAttribute(data_type="Number", value="3"),
        },
    )
    record = run.record(sent, Outcome.RETRIED, duration_s=0.25, error="boom", delay_s=4.0)
    assert record.outcome is Outcome.RETRIED
    assert (record.queue, record.handler, record.role, record.version) == (
        "orders",
        spec.name,
        "canary",
        "v7",
    )
    assert (record.message_id, record.receive_count, record.hops) == ("m-9", 5, 1)
    assert (record.duration_s, record.message_age_s) == (0.25, 10.5)
    assert (record.error, record.delay_s, record.settled, record.message_type) == (
        "boom",
        4.0,
        True,
        None,
    )
