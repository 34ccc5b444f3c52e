"""Type tests for public middleware: `mypy --strict` checks the `assert_type` calls and misuse
(`type: ignore[...]` with `warn_unused_ignores` locks each misuse as a type error). The module
also runs under pytest, on the in-memory fake.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

from qworker import Message, QWorker
from qworker.middleware import CallNext, MessageHooks, Middleware
from qworker.outcome import Outcome
from qworker.testing import Drainer, FakeSqs, ManualClock

calls: list[str] = []


async def timing(message: Message, call_next: CallNext) -> None:
    calls.append("before")
    await call_next()
    calls.append("after")


class Audit(MessageHooks):
    async def on_error(self, message: Message, error: Exception) -> None:
        calls.append(f"error {type(error).__name__} {message.message_id[:0]}")


app = QWorker("typing-middleware", middleware=[timing])
decorated = app.middleware(timing)
audit = app.middleware(Audit())


@app.handler("orders")
async def handle(body: str) -> None: ...


def misuse() -> None:
    """Type errors (never called)."""

    async def wrong(message: Message) -> None: ...

    async def no_next(message: Message, call_next: int) -> None: ...

    app.middleware(wrong)  # type: ignore[type-var]
    app.middleware(no_next)  # type: ignore[type-var]
    QWorker("x", middleware=[print])  # type: ignore[list-item]


def test_the_names_are_typed() -> None:
    kept: Callable[[Message, CallNext], Coroutine[Any, Any, None]] = decorated  # its own type
    assert kept is timing
    assert_type(audit, Audit)
    layers: tuple[Middleware, ...] = app.middlewares
    assert len(layers) == 3


def test_it_runs_on_the_fake() -> None:
    calls.clear()
    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq").put("x")
    assert Drainer(sqs)(app).outcomes == [Outcome.SUCCEEDED]
    assert calls == ["before", "before", "after", "after"]
