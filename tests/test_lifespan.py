"""Lifespan and dependencies on the in-memory fake: resources by type, Depends, checks, order."""

from __future__ import annotations

import contextlib
import re
import sys
import types
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import pytest
from pydantic import BaseModel

from qworker import Depends, Message, QWorker, Router
from qworker.exceptions import HandlerSignatureError
from qworker.handler import HandlerSpec
from qworker.routing import TypeRouter, by_attribute
from qworker.testing import Drainer, FakeSqs, ManualClock


class Order(BaseModel):
    order_id: str


class Database:
    def __init__(self, events: list[str]) -> None:
        self.events = events
        self.rows: list[str] = []

    async def insert(self, row: str) -> None:
        self.rows.append(row)


class Unprovided: ...


class Cache:
    def __init__(self) -> None:
        self.hits = 0


@dataclass
class Resources:
    db: Database
    cache: Cache


@dataclass
class Two:
    primary: Database
    replica: Database


def replica(two: Two) -> Database:
    return two.replica


def make_app(events: list[str]) -> QWorker:
    @contextlib.asynccontextmanager
    async def lifespan(app: QWorker) -> AsyncIterator[Resources]:
        events.append(f"open {app.name}")
        try:
            yield Resources(Database(events), Cache())
        finally:
            events.append("close")

    return QWorker("orders-svc", lifespan=lifespan)


def tenant_of(message: Message) -> str:
    return message.attribute("tenant") or "none"


async def tenant_rows(db: Database, tenant: Annotated[str, Depends(tenant_of)]) -> list[str]:
    return [r for r in db.rows if r.startswith(tenant)]


def drain(sqs: FakeSqs, app: QWorker) -> None:
    Drainer(sqs)(app)


def test_handlers_receive_resources_by_type_and_through_depends() -> None:
    events: list[str] = []
    app = make_app(events)
    seen: list[object] = []

    @app.handler("orders")
    async def handle(
        order: Order,
        db: Database,
        resources: Resources,
        tenant: Annotated[str, Depends(tenant_of)],
        before: Annotated[list[str], Depends(tenant_rows)],
    ) -> None:
        seen.append((tenant, list(before), resources.db is db))
        await db.insert(f"{tenant}:{order.order_id}")
        events.append(f"handled {order.order_id}")

    @app.handler("sync")
    def sync(body: str, cache: Cache) -> None:  # a sync handler, in its thread
        cache.hits += 1
        seen.append(("sync", cache.hits))

    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq").put(
        '{"order_id": "o-1"}', attributes={"tenant": "acme"}
    )
    sqs.queue("orders").put('{"order_id": "o-2"}', attributes={"tenant": "acme"})
    sqs.create_queue("sync", dead_letter="sync-dlq").put("x")
    drained = Drainer(sqs)(app, concurrency=1)
    assert drained.succeeded == 3
    assert sorted(map(repr, seen)) == sorted(
        map(repr, [("acme", [], True), ("acme", ["acme:o-1"], True), ("sync", 1)])
    )
    assert events[0] == "open orders-svc"
    assert events[-1] == "close"  # after every message was handled
    assert not app.resources.running


def test_the_lifespan_closes_after_the_drain_and_opens_once_per_run() -> None:
    events: list[str] = []
    app = make_app(events)

    @app.handler("orders")
    async def handle(order: Order, db: Database) -> None:
        events.append(f"handled {order.order_id}")

    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq").put('{"order_id": "o-1"}')
    drain(sqs, app)
    sqs.queue("orders").put('{"order_id": "o-2"}')
    drain(sqs, app)
    assert events == [
        "open orders-svc",
        "handled o-1",
        "close",
        "open orders-svc",
        "handled o-2",
        "close",
    ]


def test_a_handler_asking_for_nothing_costs_nothing() -> None:
    async def handle(order: Order, message: Message) -> None: ...

    spec = HandlerSpec.from_function(handle)
    assert spec.inject is None
    assert spec.needs == ()


def test_a_missing_provider_is_a_registration_error() -> None:
    app = make_app([])

    with pytest.raises(HandlerSignatureError, match=r"'thing' cannot be filled.*Database, Cache"):

        @app.handler("orders")
        async def handle(order: Order, thing: Unprovided) -> None: ...

    assert app.handlers == {}


def test_without_a_lifespan_only_message_providers_work() -> None:
    app = QWorker("plain")

    @app.handler("orders")
    async def handle(order: Order, tenant: Annotated[str, Depends(tenant_of)]) -> None: ...

    with pytest.raises(HandlerSignatureError, match="no lifespan declares resources"):

        @app.handler("other")
        async def other(order: Order, db: Database) -> None: ...


def test_a_provider_asking_for_a_missing_resource_is_a_registration_error() -> None:
    app = QWorker("plain")

    with pytest.raises(HandlerSignatureError, match=r"provider tenant_rows.*'db' cannot be filled"):

        @app.handler("orders")
        async def handle(
            order: Order, rows: Annotated[list[str], Depends(tenant_rows)]
        ) -> None: ...


def test_two_fields_of_one_type_are_ambiguous_by_type() -> None:
    @contextlib.asynccontextmanager
    async def lifespan(app: QWorker) -> AsyncIterator[Two]:
        yield Two(Database([]), Database([]))

    app = QWorker("two", lifespan=lifespan)
    with pytest.raises(HandlerSignatureError, match="primary, replica"):

        @app.handler("orders")
        async def handle(order: Order, db: Database) -> None: ...

    @app.handler("orders")
    async def by_provider(order: Order, db: Annotated[Database, Depends(replica)]) -> None: ...


def test_a_router_declares_its_resources_and_the_app_must_provide_them() -> None:
    router = Router(resources=Resources)

    @router.handler("orders")
    async def handle(order: Order, db: Database) -> None:
        await db.insert(order.order_id)

    events: list[str] = []
    app = make_app(events)
    app.include_router(router)
    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq").put('{"order_id": "o-1"}')
    assert Drainer(sqs)(app).succeeded == 1
    with pytest.raises(HandlerSignatureError, match="'db' cannot be filled"):
        QWorker("bare").include_router(router)


def test_resources_without_a_lifespan_and_a_wrong_yield_are_errors() -> None:
    with pytest.raises(HandlerSignatureError, match="need a lifespan"):
        QWorker("x", resources=Resources)

    @contextlib.asynccontextmanager
    async def wrong(app: QWorker) -> AsyncIterator[Resources]:
        yield Cache()  # type: ignore[misc]  # the runtime check under test

    app = QWorker("x", lifespan=wrong)

    @app.handler("orders")
    async def handle(order: Order) -> None: ...

    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq")
    with pytest.raises(TypeError, match="yielded Cache, but declares Resources"):
        Drainer(sqs)(app)


def test_a_handler_run_outside_its_app_fails_its_message_with_the_reason() -> None:
    app = make_app([])

    @app.handler("orders")
    async def handle(order: Order, db: Database) -> None: ...

    sqs = FakeSqs(clock=ManualClock())
    queue = sqs.create_queue("orders", dead_letter="orders-dlq")
    queue.put('{"order_id": "o-1"}')
    drained = Drainer(sqs)(handle_spec_only(app), queue="orders")
    assert drained.records[0].error is not None
    assert "lifespan is not running" in drained.records[0].error


def handle_spec_only(app: QWorker) -> Router:
    """The app's handlers in a plain router: run without the app's lifespan."""
    router = Router()
    for spec in app.handlers.values():
        router.add(spec)
    return router


def test_the_readme_example_runs_as_written() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Lifespan and dependencies", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.DOTALL)
    module = types.ModuleType("readme_enrich")
    sys.modules[module.__name__] = module  # dataclasses and get_type_hints look the module up
    try:
        exec(compile(code, "README.md", "exec"), module.__dict__)  # noqa: S102 (the README's own code)
        app = module.app
        assert isinstance(app, QWorker)
        sqs = FakeSqs(clock=ManualClock())
        sqs.create_queue("orders", dead_letter="orders-dlq").put(
            '{"order_id": "o-1"}', attributes={"tenant": "acme"}
        )
        assert Drainer(sqs)(app).succeeded == 1
    finally:
        del sys.modules[module.__name__]


def test_a_type_routers_routes_take_the_apps_resources() -> None:
    """Routes ask for resources by type and through Depends, like any handler."""
    router = TypeRouter(by_attribute("type"), resources=Resources)
    seen: list[object] = []

    @router.route("placed")
    async def placed(order: Order, db: Database) -> None:
        await db.insert(f"placed:{order.order_id}")

    events: list[str] = []
    app = make_app(events)
    app.handler("orders")(router.handle)

    @router.route("cancelled")  # a route added after the app took the router: bound too
    async def cancelled(
        order: Order, cache: Cache, tenant: Annotated[str, Depends(tenant_of)]
    ) -> None:
        cache.hits += 1
        seen.append((tenant, order.order_id, cache.hits))

    @router.fallback
    async def other(body: str, resources: Resources) -> None:
        seen.append(("other", len(resources.db.rows)))

    sqs = FakeSqs(clock=ManualClock())
    queue = sqs.create_queue("orders", dead_letter="orders-dlq")
    queue.put('{"order_id": "o-1"}', attributes={"type": "placed"})
    queue.put('{"order_id": "o-2"}', attributes={"type": "cancelled", "tenant": "acme"})
    drained = Drainer(sqs)(app, concurrency=1)
    queue.put("?", attributes={"type": "renamed"})
    drained = Drainer(sqs)(app, concurrency=1)
    assert drained.succeeded == 1
    assert seen == [("acme", "o-2", 1), ("other", 0)]  # a new lifespan: a new database
    assert events.count("close") == 2


def test_a_type_router_needs_an_app_that_provides_its_routes_resources() -> None:
    router = TypeRouter(by_attribute("type"), resources=Resources)

    @router.route("placed")
    async def placed(order: Order, db: Database) -> None: ...

    with pytest.raises(HandlerSignatureError, match="'db' cannot be filled"):
        QWorker("bare").handler("orders")(router.handle)
    with pytest.raises(HandlerSignatureError, match="'db' cannot be filled"):
        Router().handler("orders")(router.handle)  # a router must declare them, as for handlers
    through = Router(resources=Resources)
    through.handler("orders")(router.handle)
    app = make_app([])
    app.include_router(through)
    sqs = FakeSqs(clock=ManualClock())
    sqs.create_queue("orders", dead_letter="orders-dlq").put(
        '{"order_id": "o-1"}', attributes={"type": "placed"}
    )
    assert Drainer(sqs)(app).succeeded == 1
    with pytest.raises(HandlerSignatureError, match="'db' cannot be filled"):
        TypeRouter(by_attribute("type")).route("placed")(placed)  # undeclared: refused at once
