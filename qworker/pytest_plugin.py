"""pytest fixtures for testing qworker handlers, installed with the package (`pytest11` entry).

Nothing to configure: the plugin loads whenever qworker is installed next to pytest, and its
fixtures are plain (sync) ones, so they work with or without pytest-asyncio and in any
`asyncio_mode`.

- `sqs_clock`: the `ManualClock` the fake SQS runs on (`sqs_clock.advance(60)`, or
  `fake_sqs.advance(60)`).
- `fake_sqs`: an empty in-memory SQS (`qworker.testing.FakeSqs`) on that clock.
- `drain`: runs a handler function, or every handler of a `QWorker` app, against `fake_sqs` until
  the queues are empty and returns each delivery's outcome (`qworker.testing.Drained`). Call
  `drain(handle, "orders")` in a plain test; in an async test, `await drain.run(handle, "orders")`.
- `make_consumer`: a `Consumer` of a fake queue for a handler, wired to the queue's dead-letter
  queue and to the fake's clock, for tests that drive it themselves (`run_until_empty()`,
  `run()` and `stop()`).

```python
def test_orders_are_booked(fake_sqs, drain):
    fake_sqs.create_queue("orders", dead_letter="orders-dlq").put('{"order_id": "o-1"}')
    assert drain(handle, "orders").succeeded == 1
```

qworker is imported when a fixture is first used, not when pytest loads the plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, final

import pytest

if TYPE_CHECKING:
    from qworker.consumer import Consumer
    from qworker.handler import HandlerFunc, HandlerSpec
    from qworker.testing import Drainer, FakeQueueTransport, FakeSqs, ManualClock

__all__ = ["ConsumerFactory", "drain", "fake_sqs", "make_consumer", "sqs_clock"]


@final
class ConsumerFactory:
    """Builds consumers of a `FakeSqs`'s queues (the `make_consumer` fixture)."""

    def __init__(self, sqs: FakeSqs) -> None:
        """Build consumers of `sqs`'s queues."""
        self.sqs = sqs

    def __repr__(self) -> str:
        """Show the fake it builds for."""
        return f"ConsumerFactory({self.sqs!r})"

    def __call__(
        self,
        handler: HandlerFunc | HandlerSpec,
        queue: FakeQueueTransport | str,
        **options: Any,  # noqa: ANN401 (passed on to consumer_for, which types them)
    ) -> Consumer:
        """A consumer of `queue` (created with `<name>-dlq` if new) running `handler`.

        Args:
            handler: The handler function, or a registered one (`app.handlers["orders"]`).
            queue: A fake queue, or its name.
            **options: `qworker.testing.consumer_for` keywords (`handler_timeout_s`,
                `concurrency`, `retry_policy`, `identity`, `sinks`, ...).
        """
        from qworker.testing import consumer_for  # noqa: PLC0415 (imported on first use)

        transport = queue if not isinstance(queue, str) else self.sqs.queue_or_create(queue)
        options.setdefault("dead_letter", self.sqs.dead_letter_of(transport))
        options.setdefault("clock", self.sqs.clock)
        if transport.fifo and transport.redrive is not None:
            options.setdefault("max_receive_count", transport.redrive.max_receive_count)
        return consumer_for(transport, handler, **options)


@pytest.fixture
def sqs_clock() -> ManualClock:
    """The clock `fake_sqs` runs on: it moves only when advanced."""
    from qworker.testing import ManualClock  # noqa: PLC0415 (imported on first use)

    return ManualClock()


@pytest.fixture
def fake_sqs(sqs_clock: ManualClock) -> FakeSqs:
    """An empty in-memory SQS on `sqs_clock`."""
    from qworker.testing import FakeSqs  # noqa: PLC0415 (imported on first use)

    return FakeSqs(clock=sqs_clock)


@pytest.fixture
def drain(fake_sqs: FakeSqs) -> Drainer:
    """Run handlers against `fake_sqs` until their queues are empty: `drain(handle, "orders")`."""
    from qworker.testing import Drainer  # noqa: PLC0415 (imported on first use)

    return Drainer(fake_sqs)


@pytest.fixture
def make_consumer(fake_sqs: FakeSqs) -> ConsumerFactory:
    """Build a `Consumer` of a `fake_sqs` queue: `make_consumer(handle, "orders")`."""
    return ConsumerFactory(fake_sqs)
