"""Type tests for batch handlers: `mypy --strict` checks the `assert_type` calls and misuse
(`type: ignore[...]` with `warn_unused_ignores` locks each misuse as a type error). The module
also runs under pytest, on the in-memory fake.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Mapping
from typing import Any, assert_type

from pydantic import BaseModel

from qworker import BatchResult, Message, QWorker, Retry
from qworker.outcome import Outcome
from qworker.testing import Drainer, FakeSqs, ManualClock


class Order(BaseModel):
    order_id: str


app = QWorker("typing-batch")


@app.handler("orders", batch_size=10, batch_wait_s=0.05)
async def handle(orders: list[Order], messages: list[Message]) -> BatchResult:
    result = BatchResult()
    for index, order in enumerate(orders):
        if order.order_id == "retry":
            result.fail(index, Retry(delay_s=5))
    return result


@app.handler("plain", batch_size=2)
def plain(bodies: list[str]) -> None: ...


def misuse() -> None:
    """Type errors (never called)."""
    app.handler("q", batch_size="10")  # type: ignore[call-overload]
    BatchResult().fail("0", ValueError())  # type: ignore[arg-type]
    BatchResult().fail(0, "boom")  # type: ignore[arg-type]


def test_the_names_are_typed() -> None:
    kept: Callable[[list[Order], list[Message]], Coroutine[Any, Any, BatchResult]] = handle
    assert kept is handle
    assert_type(BatchResult().failures, Mapping[int, BaseException])


def test_it_runs_on_the_fake() -> None:
    sqs = FakeSqs(clock=ManualClock())
    queue = sqs.create_queue("orders", dead_letter="orders-dlq")
    queue.put('{"order_id": "o-1"}')
    queue.put('{"order_id": "retry"}')
    drained = Drainer(sqs)(app, queue="plain")
    assert sorted(o.value for o in drained.outcomes) == sorted(
        [Outcome.SUCCEEDED.value, Outcome.RETRIED.value]
    )
