"""Public middleware on the in-memory fake: order, hooks, outcomes, skipping, the docs' examples,
and `qworker run --middleware` loading."""

from __future__ import annotations

import contextvars
import logging
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest
from pydantic import BaseModel

from qworker import Message, QWorker, Reject, Retry
from qworker.dispatch import Dispatcher
from qworker.exceptions import ConfigError, HandlerSignatureError
from qworker.handler import HandlerSpec
from qworker.middleware import CallNext, MessageHooks
from qworker.outcome import Outcome
from qworker.role import Identity
from qworker.testing import Drainer, FakeSqs, ManualClock
from qworker.worker_cli import load_middleware

ROOT = Path(__file__).parent.parent


class Order(BaseModel):
    order_id: str


def fake(*bodies: str, **attributes: str) -> FakeSqs:
    sqs = FakeSqs(clock=ManualClock())
    queue = sqs.create_queue("orders", dead_letter="orders-dlq")
    for body in bodies:
        queue.put(body, attributes=dict(attributes))
    return sqs


class Recorder(MessageHooks):
    def __init__(self, name: str, events: list[str]) -> None:
        self.name = name
        self.events = events

    async def before(self, message: Message) -> None:  # noqa: ARG002
        self.events.append(f"{self.name} before")

    async def after(self, message: Message) -> None:  # noqa: ARG002
        self.events.append(f"{self.name} after")

    async def on_error(self, message: Message, error: Exception) -> None:  # noqa: ARG002
        self.events.append(f"{self.name} error {type(error).__name__}")


def test_middleware_runs_around_the_handler_first_added_outermost() -> None:
    events: list[str] = []
    app = QWorker("mw", middleware=[Recorder("outer", events)])
    app.middleware(Recorder("inner", events))

    @app.handler("orders")
    async def handle(order: Order) -> None:
        events.append(f"handler {order.order_id}")

    drained = Drainer(fake('{"order_id": "o-1"}'))(app)
    assert drained.outcomes == [Outcome.SUCCEEDED]
    assert events == ["outer before", "inner before", "handler o-1", "inner after", "outer after"]


@pytest.mark.parametrize(
    ("raised", "outcome"),
    [
        (Retry(delay_s=5), Outcome.RETRIED),
        (Reject("bad"), Outcome.REJECTED),
        (ValueError("boom"), Outcome.FAILED),
    ],
)
def test_on_error_sees_what_the_handler_raised_and_the_outcome_is_unchanged(
    raised: Exception, outcome: Outcome
) -> None:
    events: list[str] = []
    app = QWorker("mw", middleware=[Recorder("m", events)])

    @app.handler("orders")
    async def handle(order: Order) -> None:
        raise raised

    drained = Drainer(fake('{"order_id": "o-1"}'))(app, max_receive_count=1)
    assert drained.outcomes[0] is outcome
    assert events[:2] == ["m before", f"m error {type(raised).__name__}"]


def test_a_raising_middleware_fails_its_message_and_nothing_else() -> None:
    calls: list[str] = []

    async def broken(message: Message, call_next: CallNext) -> None:
        if message.body == '{"order_id": "bad"}':
            raise RuntimeError("middleware bug")
        await call_next()

    app = QWorker("mw", middleware=[broken])

    @app.handler("orders")
    async def handle(order: Order) -> None:
        calls.append(order.order_id)

    drained = Drainer(fake('{"order_id": "bad"}', '{"order_id": "ok"}'))(app)
    assert calls == ["ok"]
    failed = [r for r in drained.records if r.outcome is Outcome.FAILED]
    assert failed
    assert all("RuntimeError: middleware bug" in (r.error or "") for r in failed)
    assert Outcome.SUCCEEDED in drained.outcomes


def test_not_calling_call_next_skips_the_handler_and_the_message_succeeds() -> None:
    calls: list[str] = []
    app = QWorker("mw")

    @app.middleware
    async def skip_all(message: Message, call_next: CallNext) -> None:
        return

    @app.handler("orders")
    async def handle(order: Order) -> None:
        calls.append(order.order_id)

    sqs = fake('{"order_id": "o-1"}')
    assert Drainer(sqs)(app).outcomes == [Outcome.SUCCEEDED]
    assert calls == []
    assert sqs.queue("orders").messages == []  # deleted


def test_an_app_without_middleware_calls_the_handler_directly() -> None:
    async def handle(order: Order) -> None: ...

    spec = HandlerSpec.from_function(handle)
    plain = Dispatcher(spec, queue="q", identity=Identity())
    # The call returns the handler's own coroutine: nothing of qworker's runs around it.
    coroutine = plain._call(Order(order_id="o-1"), Message("m-1", "r-1", "{}"))
    assert isinstance(coroutine, types.CoroutineType)
    assert coroutine.cr_code is handle.__code__
    coroutine.close()
    wrapped = Dispatcher(
        spec, queue="q", identity=Identity(), handler_middleware=[Recorder("m", [])]
    )
    assert wrapped._call != plain._call


async def test_a_handler_called_directly_gets_its_message_by_keyword_or_by_position() -> None:
    seen: list[tuple[str, str]] = []

    async def by_name(order: Order, *, meta: Message) -> None:
        seen.append((order.order_id, meta.message_id))

    async def by_position(order: Order, message: Message, /) -> None:
        seen.append((order.order_id, message.message_id))

    for handle in (by_name, by_position):
        call = HandlerSpec.from_function(handle).caller()
        await call(Order(order_id="o-1"), Message("m-1", "r-1", "{}"))
    assert seen == [("o-1", "m-1"), ("o-1", "m-1")]


def test_a_context_variable_set_by_middleware_reaches_the_handler_and_its_logs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="-")
    app = QWorker("mw")

    @app.middleware
    async def context(message: Message, call_next: CallNext) -> None:
        token = tenant.set(message.attribute("tenant") or "-")
        try:
            await call_next()
        finally:
            tenant.reset(token)

    @app.handler("orders")
    def handle(order: Order) -> None:  # sync: in a thread, the context copied
        logging.getLogger("orders").warning("handled for %s", tenant.get())

    with caplog.at_level(logging.WARNING, logger="orders"):
        Drainer(fake('{"order_id": "o-1"}', tenant="acme"))(app)
    assert [r.getMessage() for r in caplog.records if r.name == "orders"] == ["handled for acme"]


def test_the_docs_examples_run_as_written(caplog: pytest.LogCaptureFixture) -> None:
    page = (ROOT / "docs" / "handlers.md").read_text(encoding="utf-8")
    section = page.split("\n## Middleware\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    assert len(blocks) == 2
    module = types.ModuleType("docs_middleware")
    sys.modules[module.__name__] = module
    try:
        for code in blocks:
            exec(compile(code, "docs/handlers.md", "exec"), module.__dict__)  # noqa: S102
        app: QWorker = module.app
        seen: list[tuple[str, str]] = []

        @app.handler("orders")
        async def handle(order: Order) -> None:
            seen.append((order.order_id, module.tenant.get()))

        sqs = fake('{"order_id": "o-1"}', tenant="acme")
        assert Drainer(sqs)(app).outcomes == [Outcome.SUCCEEDED]
        (idempotent,) = [m for m in app.middlewares if isinstance(m, module.Idempotent)]
        assert len(idempotent.done) == 1
        # The same message id again (a redelivery): skipped, deleted.
        again = fake()
        idempotent.done.add(again.queue("orders").put('{"order_id": "o-2"}'))
        assert Drainer(again)(app).outcomes == [Outcome.SUCCEEDED]
        assert seen == [("o-1", "acme")]
    finally:
        del sys.modules[module.__name__]


def test_run_middleware_flag_loads_objects_and_classes_and_says_what_is_wrong() -> None:
    assert isinstance(
        load_middleware("tests.test_middleware:Recorder.__call__"), types.FunctionType
    )
    loaded = load_middleware("qworker.middleware:MessageHooks")
    assert isinstance(loaded, MessageHooks)
    for bad, why in [
        ("nocolon", "is not module:attribute"),
        ("no_such_module_x:thing", "cannot load"),
        ("qworker.middleware:Missing", "cannot load"),
        ("qworker.middleware:__doc__", "is not callable"),
    ]:
        with pytest.raises(ConfigError, match=f"^invalid setting --middleware: .*{why}"):
            load_middleware(bad)


def test_a_middleware_that_is_not_callable_is_refused() -> None:
    with pytest.raises(HandlerSignatureError, match="is not callable"):
        QWorker("mw", middleware=[42])  # type: ignore[list-item]


def test_run_with_a_bad_middleware_exits_2_with_one_line_naming_the_flag(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qworker", "run", "handlers.orders", "--middleware", "nope:thing"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        "qworker: error: invalid setting --middleware: cannot load 'nope:thing'"
    )
