"""Type tests for lifespan and dependencies: `mypy --strict` checks the `assert_type` calls and
misuse (`type: ignore[...]` with `warn_unused_ignores` locks each misuse as a type error). The
module also runs under pytest, on the in-memory fake.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Annotated, Any, assert_type

from pydantic import BaseModel

from qworker import Depends, Message, QWorker, Router
from qworker.app import Lifespan
from qworker.lifespan import ResourceScope
from qworker.testing import Drainer, FakeSqs, ManualClock


class Order(BaseModel):
    order_id: str


class Http:
    def __init__(self) -> None:
        self.calls: list[str] = []


@dataclass
class Resources:
    http: Http
    region: str


@contextlib.asynccontextmanager
async def lifespan(app: QWorker) -> AsyncIterator[Resources]:
    yield Resources(Http(), "eu-west-1")


def tenant(message: Message) -> str:
    return message.attribute("tenant") or "-"


async def url(resources: Resources, who: Annotated[str, Depends(tenant)]) -> str:
    return f"https://{resources.region}.example/{who}"


app = QWorker("typing-lifespan", lifespan=lifespan)
orders = Router(resources=Resources)


@orders.handler("orders")
async def handle(
    order: Order, http: Http, target: Annotated[str, Depends(url)], message: Message
) -> None:
    http.calls.append(f"{target}/{order.order_id}")


app.include_router(orders)


def misuse() -> None:
    """Type errors (never called)."""
    QWorker("x", lifespan=42)  # type: ignore[arg-type]
    Depends("tenant")  # type: ignore[arg-type]
    QWorker("x", envelope="raw")  # type: ignore[arg-type]


def test_the_names_are_typed() -> None:
    given: Lifespan = lifespan
    assert_type(app.lifespan, Lifespan | None)
    assert_type(app.resources, ResourceScope)
    running: contextlib.AbstractAsyncContextManager[object] = app.running()
    assert running is not None
    kept: Callable[[Order, Http, str, Message], Coroutine[Any, Any, None]] = handle  # the same
    assert kept is handle
    assert given is lifespan


def test_it_runs_on_the_fake() -> None:
    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq").put(
        '{"order_id": "o-1"}', attributes={"tenant": "acme"}
    )
    seen: list[list[str]] = []

    @contextlib.asynccontextmanager
    async def watched(inner: QWorker) -> AsyncIterator[Resources]:
        async with lifespan(inner) as resources:
            yield resources
            seen.append(resources.http.calls)

    local = QWorker("typing-lifespan", lifespan=watched)
    local.include_router(orders)
    assert Drainer(sqs)(local).succeeded == 1
    assert seen == [["https://eu-west-1.example/acme/o-1"]]
