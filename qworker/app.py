"""The app: a registry of handlers, one per queue, built with a typed decorator.

```python
app = QWorker("orders-service")

@app.handler("orders", max_in_flight=20)
async def handle_order(order: OrderPlaced) -> None: ...
```

`Router` collects handlers in another module; `app.include_router(router)` adds them. A module with
a plain module-level `handle` function needs no app: `QWorker.from_module()` wraps it.

The app also sends: inside `async with app.producer():` (which opens the clients the settings
describe), and inside a running worker (a handler sending on), `await app.send("queue", model)` and
`await app.send_batch("queue", models)` go through that producer (`qworker.producer`).
"""

from __future__ import annotations

import contextlib
import logging
import types
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, TypeVar, overload

from qworker._loading import load_app
from qworker.config import QUEUE_NAME
from qworker.envelopes import EnvelopeMode, check_mode
from qworker.exceptions import HandlerAlreadyRegistered, HandlerSignatureError
from qworker.handler import HandlerFunc, HandlerSpec
from qworker.lifespan import ResourceScope, resource_type_of
from qworker.middleware import Middleware
from qworker.producer import (
    AttributeValue,
    Body,
    Outgoing,
    Producer,
    ProducerSettings,
    Publisher,
    open_producer,
)
from qworker.routing import router_of

__all__ = ["DEFAULT_QUEUE", "Lifespan", "QWorker", "Router"]

log = logging.getLogger(__name__)

Lifespan = Callable[["QWorker"], AbstractAsyncContextManager[Any]]
"""An async context manager factory called with the app; it yields the resources."""

F = TypeVar("F", bound=HandlerFunc)
B = TypeVar("B", bound=Body)
M = TypeVar("M", bound=Middleware)

DEFAULT_QUEUE: Final = None
"""The queue key of a handler registered without a queue: the queue the settings name."""


class Router:
    """A set of handlers, one per queue, that can be included in an app."""

    def __init__(self, *, resources: Any | None = None) -> None:  # noqa: ANN401 (any type)
        """Create an empty router.

        Args:
            resources: The type of the resources its handlers may ask for (by this type, or by
                the type of one of its fields; `qworker.lifespan`); the including app's lifespan
                must provide them.
        """
        self._handlers: dict[str | None, HandlerSpec] = {}
        self.resources = ResourceScope(resources)

    def __repr__(self) -> str:
        """Show the queues."""
        return f"{type(self).__name__}({sorted(str(q) for q in self._handlers)})"

    @property
    def handlers(self) -> Mapping[str | None, HandlerSpec]:
        """The registered handlers by queue name (`None`: the configured queue)."""
        return types.MappingProxyType(self._handlers)

    @overload
    def handler(self, queue: F, /) -> F: ...

    @overload
    def handler(
        self,
        queue: str | None = None,
        /,
        *,
        max_in_flight: int | None = None,
        timeout_s: float | None = None,
        envelope: EnvelopeMode | None = None,
        batch_size: int | None = None,
        batch_wait_s: float = 1.0,
    ) -> Callable[[F], F]: ...

    def handler(
        self,
        queue: str | F | None = None,
        /,
        *,
        max_in_flight: int | None = None,
        timeout_s: float | None = None,
        envelope: EnvelopeMode | None = None,
        batch_size: int | None = None,
        batch_wait_s: float = 1.0,
    ) -> F | Callable[[F], F]:
        """Register a handler for a queue; use as `@app.handler` or `@app.handler("queue", ...)`.

        Args:
            queue: The queue's name; none means the queue the settings name.
            max_in_flight: At most this many messages of this queue run at once.
            timeout_s: A handler running longer fails.
            envelope: This handler's envelope mode (default: the app's): "auto", "sns",
                "eventbridge" or "none" (`qworker.envelopes`).
            batch_size: Make it a batch handler: called with up to this many bodies at once, its
                first parameter a `list[T]`; each message settled on its own
                (`qworker.batch_handler`).
            batch_wait_s: A batch handler's longest wait for a full batch (default 1 s).

        Raises:
            HandlerAlreadyRegistered: The queue has a handler already.
            HandlerSignatureError: The function cannot take a message.
        """
        if callable(queue):
            return self.handler()(queue)
        queue_name: str | None = queue

        def register(func: F) -> F:
            self.add(
                HandlerSpec.from_function(
                    func,
                    queue=queue_name,
                    max_in_flight=max_in_flight,
                    timeout_s=timeout_s,
                    envelope=envelope,
                    resources=self.resources,
                    batch_size=batch_size,
                    batch_wait_s=batch_wait_s,
                )
            )
            return func

        return register

    def add(self, spec: HandlerSpec) -> None:
        """Register a handler spec.

        Raises:
            HandlerAlreadyRegistered: The queue has a handler already.
            HandlerSignatureError: The queue's name is not one SQS allows.
        """
        if spec.queue is not None and not QUEUE_NAME.fullmatch(spec.queue):
            raise HandlerSignatureError(
                f"handler {spec.name}: {spec.queue!r} is not a queue name (up to 80 letters, "
                "digits, '-' and '_', ending '.fifo' for a FIFO queue)"
            )
        existing = self._handlers.get(spec.queue)
        if existing is not None:
            where = spec.queue or "the configured queue"
            raise HandlerAlreadyRegistered(
                f"{where} already has handler {existing.name}; cannot add {spec.name}"
            )
        router = router_of(spec.func)
        if router is not None:
            router.bind(self.resources)  # a TypeRouter's routes take this app's resources
        self._handlers[spec.queue] = spec

    def include_router(self, router: Router) -> None:
        """Add every handler of `router`; their resources come from this app's lifespan.

        Raises:
            HandlerSignatureError: A handler asks for a resource this app does not provide.
        """
        for spec in router.handlers.values():
            self.add(spec.rebind(self.resources))


class QWorker(Router):
    """A worker application: named handlers for one or more queues."""

    def __init__(
        self,
        name: str = "qworker",
        *,
        envelope: EnvelopeMode = "auto",
        lifespan: Lifespan | None = None,
        resources: Any | None = None,  # noqa: ANN401 (any type)
        middleware: Iterable[Middleware] = (),
    ) -> None:
        """Create an app.

        Args:
            name: The service name (the `Service` metric dimension unless the settings say).
            envelope: The handlers' default envelope mode: "auto" unwraps SNS and EventBridge
                envelopes where unambiguous; "sns", "eventbridge" insist; "none" never unwraps.
            lifespan: Called with the app, an async context manager entered before the first
                message and exited after the last one settled; what it yields are the
                resources handlers ask for (`qworker.lifespan`).
            resources: The type the lifespan yields (default: read from its return annotation,
                `AsyncIterator[T]`).
            middleware: Run around every handler call, the first outermost
                (`qworker.middleware`); `app.middleware(m)` adds more.

        Raises:
            HandlerSignatureError: `resources` without a lifespan.
        """
        if resources is None and lifespan is not None:
            resources = resource_type_of(lifespan)
        if resources is not None and lifespan is None:
            raise HandlerSignatureError(
                f"QWorker {name!r}: resources need a lifespan to yield them"
            )
        super().__init__(resources=resources)
        self.name = name
        self.lifespan = lifespan
        self._middleware: list[Middleware] = []
        for layer in middleware:
            self.middleware(layer)
        self.envelope: EnvelopeMode = check_mode(envelope, f"QWorker {name!r}")
        self._producers: list[Producer] = []

    @property
    def middlewares(self) -> tuple[Middleware, ...]:
        """The app's middleware, outermost first."""
        return tuple(self._middleware)

    def middleware(self, layer: M, /) -> M:
        """Add a middleware, run inside those added before (usable as a decorator).

        Raises:
            HandlerSignatureError: `layer` is not callable.
        """
        if not callable(layer):
            raise HandlerSignatureError(f"app {self.name!r}: middleware {layer!r} is not callable")
        self._middleware.append(layer)
        return layer

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[object]:
        """Run the lifespan around the block: its resources are the handlers' inside it.

        A worker enters this after its queues resolved and before the first receive, and leaves
        it after every consumer stopped receiving and drained (`Drainer(sqs)(app)` likewise).

        Raises:
            RuntimeError: The app is running already.
            TypeError: The lifespan yielded something other than its declared type.
        """
        if self.lifespan is None:
            yield None
            return
        if self.resources.running:
            raise RuntimeError(f"app {self.name!r} is running already")
        async with self.lifespan(self) as value:
            self.resources.start(value)
            log.info("lifespan started", extra={"action": "lifespan_started", "app": self.name})
            try:
                yield value
            finally:
                self.resources.stop()
                log.info("lifespan closing", extra={"action": "lifespan_closing", "app": self.name})

    @contextlib.asynccontextmanager
    async def producer(
        self,
        settings: ProducerSettings | None = None,
        *,
        endpoint_url: str | None = None,
        local: bool = False,
    ) -> AsyncIterator[Producer]:
        """Open a producer (its SQS client, and an S3 client when a large payload needs one).

        While the block runs, `app.send` and `app.send_batch` use it.

        Args:
            settings: Region, endpoint and payload settings (`QWorkerSettings`, or any object
                with those fields); none: the `QWORKER_*` variables, read here as the CLI reads
                them (this call is then the program's edge).
            endpoint_url: Overrides the settings' endpoint (e.g. LocalStack's).
            local: Use dummy credentials (a local server does not check them).
        """
        if settings is None:
            from qworker.settings import load_settings  # noqa: PLC0415 (the edge, when asked)

            settings = load_settings()
        async with open_producer(
            settings,
            endpoint_url=endpoint_url,
            local=local,
        ) as producer:
            with self.use_producer(producer):
                yield producer

    @contextlib.contextmanager
    def use_producer(self, producer: Producer) -> Iterator[Producer]:
        """Make `app.send` use `producer` inside the block (a running worker does this)."""
        self._producers.append(producer)
        try:
            yield producer
        finally:
            self._producers.remove(producer)

    def publisher(
        self, queue: str, body_type: type[B], *, message_type: str | None = None
    ) -> Publisher[B]:
        """A typed sender for one queue: `send` takes only `body_type` (checked by mypy).

        It sends with the app's open producer (`app.producer()`, or the running worker's).
        """
        return Publisher(self._producer, queue, body_type, message_type=message_type)

    def _producer(self) -> Producer:
        if not self._producers:
            raise RuntimeError(
                f"app {self.name!r} has no producer: send inside `async with app.producer():` "
                "or from a handler of a running worker"
            )
        return self._producers[-1]

    async def send(
        self,
        queue: str,
        body: Body,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
        deduplication_id: str | None = None,
        message_type: str | None = None,
    ) -> None:
        """Send one message; see `Producer.send`.

        Raises:
            RuntimeError: No producer is open.
            SendError: The message was not sent.
        """
        await self._producer().send(
            queue,
            body,
            attributes=attributes,
            delay_s=delay_s,
            group_id=group_id,
            deduplication_id=deduplication_id,
            message_type=message_type,
        )

    async def send_batch(
        self,
        queue: str,
        bodies: Iterable[Body | Outgoing],
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
        message_type: str | None = None,
    ) -> int:
        """Send many messages in batches of 10; return how many; see `Producer.send_batch`.

        Raises:
            RuntimeError: No producer is open.
            SendError: Some messages were not sent; it lists them.
        """
        return await self._producer().send_batch(
            queue,
            bodies,
            attributes=attributes,
            delay_s=delay_s,
            group_id=group_id,
            message_type=message_type,
        )

    @classmethod
    def from_module(cls, module_name: str) -> QWorker:
        """Load the app a module defines: a `QWorker` object, or a module-level `handle` function.

        Raises:
            HandlerNotFound: The module cannot be imported (not found, a syntax error, an
                exception at import: the message names the file and line), or has no handler.
            HandlerSignatureError: `handle` cannot take a message.
        """
        return load_app(module_name, QWorker, cls)
