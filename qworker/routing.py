"""Several message types on one queue: a `TypeRouter` picks a handler by a discriminator.

```python
orders = TypeRouter(by_attribute("type"))          # or by_field("kind"), by_detail_type()

@orders.route("OrderPlaced")
async def placed(order: OrderPlaced) -> None: ...

@orders.route("OrderCancelled")
async def cancelled(order: OrderCancelled, message: Message) -> None: ...

app.handler("orders")(orders.handle)
```

The discriminator is a message attribute (`by_attribute`: SQS's, or the SNS publisher's when the
message came through a topic), a top-level field of the body (`by_field`: a route's name can be
left out when its model types that field as a one-value `Literal`, as in a pydantic discriminated
union), or an EventBridge event's `detail-type` (`by_detail_type`). Each route is bound like a
handler (its first parameter's type is what the payload is validated into, a further `Message`
parameter gets the message), checked when it is registered. Envelopes are taken off as a handler's
are (`qworker.envelopes`): a discriminator that finds no route in the body as received is asked
again of the payload inside an SNS notification or EventBridge event.

A message whose type has no route gets the router's explicit answer: `unknown="reject"` (the
default: rejected with a reason naming the type and the routes), `"retry"` (left for
`unknown_retry_s`, e.g. while a deployment brings the handler), `"ignore"` (deleted, logged), or a
`@router.fallback` handler.

Each message's route name is its `message_type` (`TypeRouter.message_type`): a route's name, or
`"unknown"`, never the raw value a sender wrote, so it is bounded by the routes declared. As the
opt-in `MessageType` metric dimension it is bounded harder (`metric_dimension`): the first
`METRIC_TYPE_LIMIT` (20) route names declared in the process (in import order, so the same code
gives every worker the same values) keep their names, later ones count as `"other"`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, final, get_args, get_origin, overload

from pydantic import BaseModel

from qworker._discriminators import Discriminator, by_attribute, by_detail_type, by_field
from qworker.envelopes import DEFAULT_ENVELOPE, EnvelopeMode, Unwrap, check_mode, unwrapper
from qworker.envelopes import unwrap as unwrap_auto
from qworker.exceptions import HandlerSignatureError, MessageDecodeError, Reject, Retry
from qworker.handler import HandlerFunc, HandlerSpec
from qworker.lifespan import ResourceScope
from qworker.message import Message

__all__ = [
    "METRIC_TYPE_LIMIT",
    "OTHER",
    "UNKNOWN",
    "Discriminator",
    "TypeRouter",
    "UnknownAnswer",
    "by_attribute",
    "by_detail_type",
    "by_field",
    "message_type_of",
    "metric_dimension",
]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=HandlerFunc)

UNKNOWN: Final = "unknown"
"""The `message_type` of a message no route takes (its own type is not repeated: unbounded)."""

OTHER: Final = "other"
"""The metric `MessageType` of the routes past `METRIC_TYPE_LIMIT`."""

METRIC_TYPE_LIMIT: Final = 20
"""At most this many route names become metric dimension values, per router; the rest `other`."""

UnknownAnswer = Literal["reject", "retry", "ignore"]
"""What a router does with a message whose type has no route (and no fallback)."""

_UNKNOWN_ANSWERS: Final[tuple[str, ...]] = get_args(UnknownAnswer)
_DECLARED: dict[str, None] = {}
"""Every route name declared in this process, in order (the metric dimension's values)."""
_MAX_TYPE_CHARS: Final = 100
_ATTRIBUTE: Final = "__qworker_type_router__"


@final
@dataclass(frozen=True, slots=True)
class _Route:
    name: str
    spec: HandlerSpec
    unwrap: Unwrap | None


class TypeRouter:
    """Handlers for several message types of one queue, chosen by a discriminator."""

    def __init__(
        self,
        by: Discriminator,
        *,
        unknown: UnknownAnswer = "reject",
        unknown_retry_s: float = 60.0,
        envelope: EnvelopeMode = DEFAULT_ENVELOPE,
        name: str = "TypeRouter",
        resources: Any | None = None,  # noqa: ANN401 (any type)
    ) -> None:
        """Create a router without routes.

        Args:
            by: What picks the route (`by_attribute`, `by_field`, `by_detail_type`).
            unknown: What to do with a message whose type has no route and no fallback:
                `"reject"` (with a reason), `"retry"` (after `unknown_retry_s`) or `"ignore"`.
            unknown_retry_s: How long an unknown message stays hidden with `unknown="retry"`.
            envelope: How routes take their payload out of SNS / EventBridge envelopes
                (`qworker.envelopes`).
            name: The handler's name in logs and metrics (`<module>.<name>`).
            resources: The type of the lifespan resources its routes may ask for (by this type,
                or by the type of one of its fields; `qworker.lifespan`). The app its `handle` is
                registered with (directly, or through an included `Router`) must provide them:
                the routes are bound to that app's resources then.

        Raises:
            HandlerSignatureError: An argument is invalid.
        """
        if unknown not in _UNKNOWN_ANSWERS:
            raise HandlerSignatureError(
                f"TypeRouter: unknown={unknown!r} is not one of "
                f"{', '.join(map(repr, _UNKNOWN_ANSWERS))}"
            )
        if isinstance(unknown_retry_s, bool) or not unknown_retry_s >= 0:
            raise HandlerSignatureError(
                f"TypeRouter: unknown_retry_s must be a number of seconds >= 0, "
                f"not {unknown_retry_s!r}"
            )
        self.by = by
        self.unknown: UnknownAnswer = unknown
        self.unknown_retry_s = float(unknown_retry_s)
        self.envelope: EnvelopeMode = check_mode(envelope, "TypeRouter")
        self.resources = ResourceScope(resources)
        self._routes: dict[str, _Route] = {}
        self._fallback: _Route | None = None
        # What opens an envelope to find the type inside: any unambiguous one for "auto".
        self._open: Unwrap | None = (
            unwrap_auto if self.envelope == "auto" else unwrapper(None, self.envelope)
        )

        async def handle(message: Message) -> None:
            await self.dispatch(message)

        handle.__qualname__ = name
        handle.__name__ = name
        handle.__module__ = _caller_module()
        setattr(handle, _ATTRIBUTE, self)
        self.handle: Callable[[Message], Awaitable[None]] = handle
        """The handler to register for the queue: `app.handler("orders")(router.handle)`."""

    def __repr__(self) -> str:
        """Show the discriminator and the routes."""
        return f"TypeRouter({self.by.description}: {', '.join(self._routes) or 'no routes'})"

    @property
    def routes(self) -> Mapping[str, HandlerSpec]:
        """The routes by name, in the order they were declared."""
        return {name: route.spec for name, route in self._routes.items()}

    @overload
    def route(self, name: F, /) -> F: ...

    @overload
    def route(self, name: str | None = None, /) -> Callable[[F], F]: ...

    def route(self, name: str | F | None = None, /) -> F | Callable[[F], F]:
        """Register a handler for one message type: `@router.route("OrderPlaced")`.

        Without a name (`@router.route`), a `by_field` router takes it from the handler's model:
        the field's one-value `Literal`.

        Raises:
            HandlerSignatureError: The name is missing, reserved or taken, or the function cannot
                take a message.
        """
        if callable(name):
            return self.route()(name)
        given: str | None = name

        def register(func: F) -> F:
            spec = HandlerSpec.from_function(func, resources=self.resources)
            route_name = given if given is not None else self._inferred_name(spec)
            self._add(route_name, spec)
            return func

        return register

    def fallback(self, func: F, /) -> F:
        """Register the handler of every message whose type has no route.

        Raises:
            HandlerSignatureError: There is one already, or the function cannot take a message.
        """
        if self._fallback is not None:
            raise HandlerSignatureError(
                f"TypeRouter: fallback {self._fallback.spec.name} is registered already"
            )
        spec = HandlerSpec.from_function(func, resources=self.resources)
        self._fallback = _Route(UNKNOWN, spec, unwrapper(spec.body_type, self.envelope))
        return func

    def bind(self, resources: ResourceScope) -> None:
        """Take the routes' resources from `resources` (the app's, when its `handle` is added).

        Raises:
            HandlerSignatureError: `resources` does not provide what a route asks for.
        """
        self._routes = {
            name: _Route(name, route.spec.rebind(resources), route.unwrap)
            for name, route in self._routes.items()
        }
        fallback = self._fallback
        if fallback is not None:
            self._fallback = _Route(fallback.name, fallback.spec.rebind(resources), fallback.unwrap)
        self.resources = resources  # routes added later are bound to them too

    def _inferred_name(self, spec: HandlerSpec) -> str:
        field = self.by.field
        model = spec.body_type
        if field is not None and isinstance(model, type) and issubclass(model, BaseModel):
            info = model.model_fields.get(field)
            if info is not None and get_origin(info.annotation) is Literal:
                values = get_args(info.annotation)
                if len(values) == 1 and isinstance(values[0], str):
                    return values[0]
        raise HandlerSignatureError(
            f"route {spec.name}: give the route's name (@router.route('name')); it is inferred "
            f"only for a by_field router from a model whose field is a one-value Literal"
        )

    def _add(self, name: str, spec: HandlerSpec) -> None:
        if not isinstance(name, str) or not name.strip():
            raise HandlerSignatureError(f"route {spec.name}: the name must be a non-blank string")
        if name in (UNKNOWN, OTHER):
            raise HandlerSignatureError(
                f"route {spec.name}: {name!r} is reserved (the type of unrouted messages / the "
                "metric value past the limit)"
            )
        if name in self._routes:
            raise HandlerSignatureError(
                f"route {name!r} has handler {self._routes[name].spec.name} already; "
                f"cannot add {spec.name}"
            )
        self._routes[name] = _Route(name, spec, unwrapper(spec.body_type, self.envelope))
        _DECLARED.setdefault(name)

    def _resolve(self, message: Message) -> tuple[str | None, Message]:
        """The message's type, read from the body as received or else inside its envelope."""
        value = self.by(message)
        if value in self._routes or self._open is None:
            return value, message
        try:
            opened = self._open(message)
        except MessageDecodeError:
            return value, message
        if opened is message:
            return value, message
        inner = self.by(opened)
        return (inner, opened) if inner is not None or value is None else (value, message)

    def message_type(self, message: Message) -> str:
        """The message's route name, or `"unknown"` (what its outcome records)."""
        value, _ = self._resolve(message)
        return value if value is not None and value in self._routes else UNKNOWN

    async def dispatch(self, message: Message) -> None:
        """Run the message through its route's handler.

        Raises:
            Reject: The type has no route (`unknown="reject"`), or the payload is not valid for
                the route's type.
            Retry: The type has no route and `unknown="retry"`.
        """
        value, message = self._resolve(message)
        route = self._routes.get(value) if value is not None else None
        if route is None:
            route = self._fallback
            if route is None:
                self._unknown(value, message)
                return
        try:
            if route.unwrap is not None:
                message = route.unwrap(message)
            argument = route.spec.decode(message)
        except MessageDecodeError as exc:
            raise Reject(f"{route.name}: {exc}") from None
        await route.spec.call(argument, message)

    def _unknown(self, value: str | None, message: Message) -> None:
        known = ", ".join(self._routes) or "none"
        if value is None:
            what = f"no message type ({self.by.description} absent)"
        else:
            what = f"unknown message type {value[:_MAX_TYPE_CHARS]!r} ({self.by.description})"
        reason = f"{what}; routes: {known}"
        if self.unknown == "retry":
            raise Retry(self.unknown_retry_s, reason)
        if self.unknown == "reject":
            raise Reject(reason)
        log.warning(
            "ignored: %s",
            reason,
            extra={"action": "message_type_ignored", "message_id": message.message_id},
        )


def metric_dimension(message_type: str | None) -> str | None:
    """The `MessageType` metric value of an outcome's `message_type` (None: a plain handler's).

    One of the first `METRIC_TYPE_LIMIT` route names declared in this process, `"unknown"`, or
    `"other"`: at most 22 values, whatever the senders write.
    """
    if message_type is None or message_type == UNKNOWN:
        return message_type
    for index, name in enumerate(_DECLARED):
        if index >= METRIC_TYPE_LIMIT:
            break
        if name == message_type:
            return message_type
    return OTHER


def message_type_of(func: object) -> Callable[[Message], str] | None:
    """The `message_type` function of a handler that is a router's `handle`, else None."""
    router = router_of(func)
    return router.message_type if router is not None else None


def router_of(func: object) -> TypeRouter | None:
    """The `TypeRouter` whose `handle` `func` is, else None."""
    router = getattr(func, _ATTRIBUTE, None)
    return router if isinstance(router, TypeRouter) else None


def _caller_module() -> str:
    """The module that created the router (two frames up), for the handler's name."""
    try:
        return str(sys._getframe(2).f_globals.get("__name__", __name__))  # noqa: SLF001
    except ValueError:  # pragma: no cover (a shallow stack)
        return __name__
