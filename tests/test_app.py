"""The app: handler registry, the typed decorator, routers and loading an app from a module."""

from __future__ import annotations

import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

import handlers.orders
from qworker import QWorker, Router
from qworker.app import DEFAULT_QUEUE
from qworker.exceptions import (
    ConfigError,
    HandlerAlreadyRegistered,
    HandlerNotFound,
    HandlerSignatureError,
)
from qworker.handler import HandlerSpec


class Order(BaseModel):
    order_id: str


# -- the decorator -------------------------------------------------------------------------------


def test_bare_decorator_registers_for_the_configured_queue() -> None:
    app = QWorker("svc")

    @app.handler
    async def handle(order: Order) -> None: ...

    assert list(app.handlers) == [DEFAULT_QUEUE]
    spec = app.handlers[DEFAULT_QUEUE]
    assert spec.func is handle
    assert spec.queue is None
    assert spec.body_type is Order
    assert (spec.max_in_flight, spec.timeout_s) == (None, None)


def test_decorator_with_queue_and_options() -> None:
    app = QWorker("svc")

    @app.handler("q", max_in_flight=5, timeout_s=1.0)
    async def handle(order: Order) -> None: ...

    spec = app.handlers["q"]
    assert spec.func is handle
    assert (spec.queue, spec.max_in_flight, spec.timeout_s) == ("q", 5, 1.0)


def test_decorator_returns_the_function_itself() -> None:
    app = QWorker()

    async def handle(order: Order) -> None: ...

    def sync_handle(body: str) -> None: ...

    assert app.handler(handle) is handle
    assert app.handler("sync")(sync_handle) is sync_handle
    assert set(app.handlers) == {None, "sync"}


def test_duplicate_queue_raises_and_keeps_the_first() -> None:
    app = QWorker()

    @app.handler("q")
    async def first(order: Order) -> None: ...

    async def second(order: Order) -> None: ...

    with pytest.raises(HandlerAlreadyRegistered, match=r"q already has handler .*first") as info:
        app.handler("q")(second)

    assert isinstance(info.value, ConfigError)
    assert app.handlers["q"].func is first


def test_duplicate_configured_queue_names_it() -> None:
    app = QWorker()

    @app.handler
    async def first(order: Order) -> None: ...

    with pytest.raises(HandlerAlreadyRegistered, match="the configured queue already has"):
        app.handler(first)


def test_bad_signature_registers_nothing() -> None:
    app = QWorker()

    async def handle() -> None: ...

    with pytest.raises(HandlerSignatureError):
        app.handler("q")(handle)
    assert dict(app.handlers) == {}


def test_handlers_mapping_is_read_only() -> None:
    app = QWorker()

    @app.handler
    async def handle(order: Order) -> None: ...

    with pytest.raises(TypeError):
        app.handlers["other"] = app.handlers[None]  # type: ignore[index]


def test_add_takes_a_prepared_spec() -> None:
    app = QWorker()

    async def handle(body: str) -> None: ...

    spec = HandlerSpec.from_function(handle, queue="raw")
    app.add(spec)

    assert app.handlers["raw"] is spec
    with pytest.raises(HandlerAlreadyRegistered):
        app.add(spec)


# -- routers -------------------------------------------------------------------------------------


def test_include_router_adds_every_handler() -> None:
    router = Router()

    @router.handler("a")
    async def handle_a(order: Order) -> None: ...

    @router.handler("b", max_in_flight=2)
    def handle_b(body: str) -> None: ...

    app = QWorker("svc")

    @app.handler("c")
    async def handle_c(order: Order) -> None: ...

    app.include_router(router)

    assert set(app.handlers) == {"a", "b", "c"}
    assert app.handlers["a"] is router.handlers["a"]
    assert app.handlers["b"].max_in_flight == 2
    assert repr(router) == "Router(['a', 'b'])"


def test_include_router_with_a_taken_queue_raises() -> None:
    router = Router()

    @router.handler("a")
    async def from_router(order: Order) -> None: ...

    app = QWorker()

    @app.handler("a")
    async def from_app(order: Order) -> None: ...

    with pytest.raises(HandlerAlreadyRegistered):
        app.include_router(router)
    assert app.handlers["a"].func is from_app


# -- from_module ---------------------------------------------------------------------------------


@pytest.fixture
def write_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], str]]:
    """Write a module under a fresh name on sys.path; return its name."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def write(source: str) -> str:
        name = f"qworker_test_mod_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        written.append(name)
        return name

    yield write
    for name in written:
        sys.modules.pop(name, None)


def test_from_module_wraps_a_module_level_handle() -> None:
    app = QWorker.from_module("handlers.orders")

    assert app.name == "orders"
    spec = app.handlers[None]
    assert spec.func is handlers.orders.handle
    assert spec.body_type is handlers.orders.Order
    assert spec.name == "handlers.orders.handle"


def test_from_module_returns_the_app_a_module_defines(write_module: Callable[[str], str]) -> None:
    name = write_module(
        """
        from qworker import QWorker

        app = QWorker("payments")

        @app.handler("payments", max_in_flight=3)
        async def handle_payment(body: str) -> None: ...

        async def handle(body: str) -> None: ...  # ignored: the app wins
        """
    )

    app = QWorker.from_module(name)

    assert app is sys.modules[name].app
    assert app.name == "payments"
    assert list(app.handlers) == ["payments"]
    assert app.handlers["payments"].max_in_flight == 3


def test_from_module_with_two_apps_raises(write_module: Callable[[str], str]) -> None:
    name = write_module(
        """
        from qworker import QWorker

        one = QWorker("one")
        two = QWorker("two")
        """
    )

    with pytest.raises(HandlerNotFound, match="defines 2 QWorker apps"):
        QWorker.from_module(name)


def test_from_module_without_app_or_handle_raises(write_module: Callable[[str], str]) -> None:
    name = write_module(
        """
        async def process(body: str) -> None: ...
        """
    )

    with pytest.raises(HandlerNotFound, match=f"module '{name}' has no QWorker app") as info:
        QWorker.from_module(name)
    assert isinstance(info.value, LookupError)


def test_from_module_with_a_bad_handle_raises(write_module: Callable[[str], str]) -> None:
    name = write_module(
        """
        async def handle(body, other): ...
        """
    )

    with pytest.raises(HandlerSignatureError):
        QWorker.from_module(name)


def test_from_module_missing_module_raises() -> None:
    with pytest.raises(HandlerNotFound, match="cannot import handler module 'no_such_module_xyz'"):
        QWorker.from_module("no_such_module_xyz")


def test_from_module_missing_submodule_raises() -> None:
    with pytest.raises(HandlerNotFound, match=r"cannot import handler module 'handlers\.nope'"):
        QWorker.from_module("handlers.nope")
