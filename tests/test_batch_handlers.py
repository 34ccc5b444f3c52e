"""Batch handlers on the in-memory fake: batches, per-message settlement, checks, shutdown.

(Not `qworker.batch`, the worker's own SQS batch calls: see tests/test_batch.py.)
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import BaseModel

from qworker import BatchResult, Message, QWorker, Reject, Retry
from qworker.batch_handler import BatchRunner
from qworker.exceptions import ConfigError, HandlerSignatureError
from qworker.handler import HandlerSpec
from qworker.outcome import Outcome
from qworker.testing import Drainer, FakeSqs, ManualClock, consumer_for


class Order(BaseModel):
    n: int


def orders(count: int, name: str = "orders") -> FakeSqs:
    sqs = FakeSqs(clock=ManualClock())
    queue = sqs.create_queue(name, dead_letter=f"{name}-dlq")
    for n in range(count):
        queue.put(f'{{"n": {n}}}')
    return sqs


def test_messages_are_handled_in_batches_of_at_most_batch_size() -> None:
    sizes: list[int] = []
    seen: list[int] = []
    app = QWorker("batch")

    @app.handler("orders", batch_size=5, batch_wait_s=5.0)
    async def handle(items: list[Order]) -> None:
        sizes.append(len(items))
        seen.extend(o.n for o in items)

    sqs = orders(10)
    drained = Drainer(sqs)(app, concurrency=10)
    assert drained.outcomes.count(Outcome.SUCCEEDED) == 10
    assert sorted(seen) == list(range(10))
    assert max(sizes) <= 5
    assert len(sizes) < 10  # batched: fewer calls than messages
    assert sqs.queue("orders").messages == []


def test_partial_failure_settles_each_message_on_its_own() -> None:
    app = QWorker("batch")

    @app.handler("orders", batch_size=4, batch_wait_s=0.05)
    async def handle(items: list[Order], messages: list[Message]) -> BatchResult:
        assert len(messages) == len(items)  # aligned with the bodies
        result = BatchResult()
        for index, order in enumerate(items):
            if order.n == 1:
                result.fail(index, Retry(delay_s=30))
            elif order.n == 2:
                result.fail(index, Reject("bad order"))
            elif order.n == 3:
                result.fail(index, ValueError("boom"))
        return result

    sqs = FakeSqs(clock=ManualClock())
    queue = sqs.create_queue("orders", dead_letter="orders-dlq")
    ids = {queue.put(f'{{"n": {n}}}'): n for n in range(4)}
    drained = Drainer(sqs)(app, concurrency=4, max_receive_count=1)
    outcomes = {ids[r.message_id]: r.outcome for r in drained.records}
    assert outcomes == {
        0: Outcome.SUCCEEDED,
        1: Outcome.RETRIED,
        2: Outcome.REJECTED,
        3: Outcome.FAILED,
    }
    errors = {ids[r.message_id]: r.error for r in drained.records}
    assert errors[2] == "bad order"
    assert errors[3] == "ValueError: boom"
    dead = sqs.queue("orders-dlq").messages
    assert sorted(m.body for m in dead) == ['{"n": 2}', '{"n": 3}']  # rejected; failed at budget
    assert [m.body for m in queue.messages] == ['{"n": 1}']  # retried: hidden, not lost


def test_a_raising_batch_handler_gives_every_message_its_outcome() -> None:
    app = QWorker("batch")

    @app.handler("orders", batch_size=3, batch_wait_s=5.0)
    async def handle(items: list[Order]) -> None:
        raise Retry(delay_s=10)

    drained = Drainer(orders(3))(app, concurrency=3)
    assert drained.outcomes == [Outcome.RETRIED] * 3


def test_an_undecodable_body_is_rejected_alone_and_the_rest_batch() -> None:
    calls: list[list[int]] = []
    app = QWorker("batch")

    @app.handler("orders", batch_size=3, batch_wait_s=0.05)
    def handle(items: list[Order]) -> None:  # sync: in a worker thread
        calls.append(sorted(o.n for o in items))

    sqs = orders(2)
    sqs.queue("orders").put('{"n": "not a number"}')
    drained = Drainer(sqs)(app, concurrency=3)
    assert sorted(o.value for o in drained.outcomes) == ["rejected", "succeeded", "succeeded"]
    assert sorted(n for call in calls for n in call) == [0, 1]


@dataclass
class Resources:
    tag: str


def test_a_batch_handler_gets_resources() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: QWorker) -> AsyncIterator[Resources]:
        yield Resources("t")

    seen: list[str] = []
    app = QWorker("batch", resources=Resources, lifespan=lifespan)

    @app.handler("orders", batch_size=2, batch_wait_s=5.0)
    async def handle(items: list[Order], resources: Resources) -> None:
        seen.append(f"{resources.tag}{len(items)}")

    assert Drainer(orders(2))(app, concurrency=2).succeeded == 2
    assert seen == ["t2"]


def test_registration_and_wiring_checks() -> None:
    async def not_a_list(item: Order) -> None: ...

    with pytest.raises(HandlerSignatureError, match="is a list of bodies"):
        HandlerSpec.from_function(not_a_list, batch_size=5)

    async def handle(items: list[Order]) -> None: ...

    with pytest.raises(HandlerSignatureError, match="batch_size must be at least 1"):
        HandlerSpec.from_function(handle, batch_size=0)
    spec = HandlerSpec.from_function(handle, batch_size=20)
    sqs = FakeSqs(clock=ManualClock())
    with pytest.raises(ConfigError, match="batch_size 20 is more than QWORKER_CONCURRENCY"):
        consumer_for(sqs.create_queue("q"), spec, concurrency=16)
    with pytest.raises(ConfigError, match="needs a standard queue"):
        consumer_for(
            sqs.create_queue("q.fifo"),
            HandlerSpec.from_function(handle, batch_size=2),
            fifo=True,
        )
    # Without batch_size a list is a JSON array body, as before.
    assert HandlerSpec.from_function(handle).body_type == list[Order]


async def test_shutdown_releases_every_message_of_a_batch_cut_short() -> None:
    sqs = FakeSqs()
    queue = sqs.create_queue("orders")
    for n in range(3):
        queue.put(f'{{"n": {n}}}')
    started = asyncio.Event()

    async def handle(items: list[Order]) -> None:
        started.set()
        await asyncio.Event().wait()

    spec = HandlerSpec.from_function(handle, batch_size=3, batch_wait_s=5.0)
    consumer = consumer_for(queue, spec, shutdown_grace_s=0.01, concurrency=3)
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(10):
        await started.wait()
    consumer.stop()
    async with asyncio.timeout(10):
        await run
    assert queue.deleted == []
    assert len(queue.messages) == 3  # none deleted: released, or hidden for a retry
    statistics = consumer.statistics()
    assert statistics.acked == 0


def test_the_readme_example_runs_as_written() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Batch handlers", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    module = types.ModuleType("readme_bulk")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, "README.md", "exec"), module.__dict__)  # noqa: S102 (the README's code)
        sqs = FakeSqs(clock=ManualClock())
        queue = sqs.create_queue("orders", dead_letter="orders-dlq")
        for n in range(12):
            queue.put(f'{{"order_id": "o-{n}"}}')
        assert Drainer(sqs)(module.app).succeeded == 12
    finally:
        del sys.modules[module.__name__]


async def test_a_waiter_gone_before_the_answer_does_not_spoil_the_others() -> None:
    entered, release = asyncio.Event(), asyncio.Event()

    async def handle(items: list[Order]) -> None:
        entered.set()
        await release.wait()

    spec = HandlerSpec.from_function(handle, batch_size=2, batch_wait_s=60)
    assert spec.batch is not None
    runner = BatchRunner(spec, spec.batch)
    first = asyncio.create_task(runner.submit(Order(n=0), Message("m0", "r0", "{}")))
    await asyncio.sleep(0)  # the first waits for a full batch
    second = asyncio.create_task(runner.submit(Order(n=1), Message("m1", "r1", "{}")))
    async with asyncio.timeout(5):
        await entered.wait()  # the second filled the batch and runs it
    first.cancel()  # e.g. its own timeout
    with pytest.raises(asyncio.CancelledError):
        await first
    release.set()
    async with asyncio.timeout(5):
        await second  # answered: no error from the first's cancelled result
