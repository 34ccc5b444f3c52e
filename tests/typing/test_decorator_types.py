"""Type tests for the handler decorator: `mypy --strict` checks the `assert_type` calls.

`@app.handler` and `@app.handler("queue", ...)` must hand back the decorated function with its own
type, so a registered handler can still be called (and type-checked) like the plain function it is.
mypy spells a function's type with its parameter names, so the handlers here take their body
positionally (`/`) to compare equal to a plain `Callable`. The `type: ignore[...]` comments lock
misuse as type errors: with `warn_unused_ignores`, mypy fails if a misuse stops being one. At run
time `assert_type` returns its argument, so this module also runs as an ordinary pytest module.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, assert_type

import pytest
from pydantic import BaseModel

from qworker import QWorker, Router
from qworker.exceptions import HandlerSignatureError


class Order(BaseModel):
    order_id: str


app = QWorker("typing")
router = Router()


@app.handler
async def bare(order: Order, /) -> None: ...


@app.handler("orders", max_in_flight=5, timeout_s=1.0)
async def configured(order: Order, /) -> None: ...


@router.handler("sync")
def sync_handler(body: str, /) -> None: ...


@router.handler
def sync_bare(body: bytes, /) -> None: ...


def test_bare_decorator_keeps_the_function_type() -> None:
    assert_type(bare, Callable[[Order], Coroutine[Any, Any, None]])
    assert app.handlers[None].func is bare


def test_decorator_with_arguments_keeps_the_function_type() -> None:
    assert_type(configured, Callable[[Order], Coroutine[Any, Any, None]])
    assert app.handlers["orders"].func is configured


def test_router_decorators_keep_sync_function_types() -> None:
    assert_type(sync_handler, Callable[[str], None])
    assert_type(sync_bare, Callable[[bytes], None])
    assert router.handlers["sync"].func is sync_handler
    assert router.handlers[None].func is sync_bare


def test_decorated_handler_is_still_callable_with_its_own_arguments() -> None:
    coroutine = assert_type(bare(Order(order_id="o-1")), Coroutine[Any, Any, None])
    coroutine.close()
    assert_type(sync_handler("body"), None)


def test_misuse_is_a_type_error() -> None:
    local = QWorker()
    local.handler(42)  # type: ignore[call-overload]
    local.handler("q", max_in_flight="5")  # type: ignore[call-overload]
    with pytest.raises(HandlerSignatureError):
        local.handler("q")(42)  # type: ignore[type-var]
