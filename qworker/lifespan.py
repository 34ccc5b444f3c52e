"""Lifespan and dependencies: resources opened once per worker, handed to handlers by type.

```python
@dataclass
class Resources:
    db: Database
    http: httpx.AsyncClient

@contextlib.asynccontextmanager
async def lifespan(app: QWorker) -> AsyncIterator[Resources]:
    async with Database.connect() as db, httpx.AsyncClient() as http:
        yield Resources(db, http)

app = QWorker("orders", lifespan=lifespan)

@app.handler("orders")
async def handle(order: Order, db: Database) -> None: ...
```

The lifespan is an async context manager factory, as Starlette's and FastStream's: called with the
app, entered once before the first message is received and exited after the last one settled
(the worker stops receiving, drains what it holds, then closes the lifespan). What it yields is the
*resources*: its declared type (the `AsyncIterator[T]` of the lifespan's return annotation, or
`QWorker(resources=T)`) and the type of each of that type's fields (a dataclass, a pydantic model,
a `NamedTuple` or any annotated class) are what handlers may ask for by annotation. A parameter
`Annotated[T, Depends(provider)]` is filled by calling `provider` (sync or async), whose own
parameters are filled the same way (resources, `Message`, further `Depends`), once per message.

Everything is checked when the handler is registered, like its `Message` parameter: a parameter
nothing provides is a `HandlerSignatureError` naming it and what the lifespan provides. A `Router`
declares the resources its handlers use (`Router(resources=T)`); `include_router` checks them again
against the app's. A handler that asks for nothing costs nothing per message.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import inspect
import logging
import operator
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, Final, final, get_args, get_origin, get_type_hints

from pydantic import BaseModel

from qworker.exceptions import HandlerSignatureError
from qworker.message import Message

__all__ = ["Depends", "Injector", "ResourceScope", "resource_type_of"]

log = logging.getLogger(__name__)

Injector = Callable[[Message], Awaitable[dict[str, object]]]
"""Fills a handler's resource and `Depends` parameters for one message."""

_UNSET: Final = object()

_ITERATORS: Final = frozenset(
    {
        collections.abc.AsyncIterator,
        collections.abc.AsyncGenerator,
        collections.abc.AsyncIterable,
        contextlib.AbstractAsyncContextManager,
    }
)


@final
class Depends:
    """Marks a handler parameter filled by a provider: `Annotated[T, Depends(provider)]`.

    `provider` is a function (sync or async) returning the value; its parameters are filled like
    a handler's: lifespan resources by type, `Message`, further `Depends`.
    """

    __slots__ = ("provider",)

    def __init__(self, provider: Callable[..., object]) -> None:
        """Mark a parameter as filled by `provider`."""
        if not callable(provider):
            raise TypeError(f"Depends() needs a callable, not {provider!r}")
        self.provider = provider

    def __repr__(self) -> str:
        """Name the provider."""
        return f"Depends({getattr(self.provider, '__qualname__', self.provider)!r})"


def resource_type_of(lifespan: Callable[..., object]) -> Any | None:  # noqa: ANN401 (any type)
    """The type a lifespan yields, read from its return annotation (`AsyncIterator[T]`); or None."""
    func = inspect.unwrap(lifespan)
    try:
        declared = get_type_hints(func).get("return")
    except (NameError, TypeError):
        return None
    if get_origin(declared) in _ITERATORS:
        (declared, *_) = get_args(declared) or (None,)
    if declared is None or declared is type(None) or declared is Any:
        return None
    return declared


@final
class ResourceScope:
    """What a lifespan provides: by its declared type and by each of that type's fields' types.

    `value` is the running lifespan's yield (between `start` and `stop`).
    """

    __slots__ = ("_ambiguous", "_getters", "_value", "resource_type")

    def __init__(self, resource_type: Any | None = None) -> None:  # noqa: ANN401 (any type)
        """Describe the resources of `resource_type` (None: no resources)."""
        self.resource_type = resource_type
        self._value: object = _UNSET
        self._getters: dict[Any, Callable[[object], object]] = {}
        self._ambiguous: dict[Any, list[str]] = {}
        if resource_type is None:
            return
        self._getters[resource_type] = _identity
        names: dict[Any, str] = {resource_type: _type_name(resource_type)}
        for name, field_type in _fields(resource_type).items():
            if field_type in self._ambiguous:
                self._ambiguous[field_type].append(name)
            elif field_type in names:
                del self._getters[field_type]
                self._ambiguous[field_type] = [names[field_type], name]
            else:
                names[field_type] = name
                self._getters[field_type] = operator.attrgetter(name)

    def __repr__(self) -> str:
        """Name the resource type."""
        return f"ResourceScope({self.resource_type!r})"

    @property
    def provided(self) -> list[str]:
        """The types handlers may ask for, by name (for error messages)."""
        return [_type_name(t) for t in self._getters]

    @property
    def running(self) -> bool:
        """Whether a lifespan has yielded its resources and not stopped."""
        return self._value is not _UNSET

    @property
    def value(self) -> object:
        """The running lifespan's resources.

        Raises:
            RuntimeError: No lifespan is running (a handler of an app called outside its run).
        """
        value = self._value
        if value is _UNSET:
            raise RuntimeError(
                "the app's lifespan is not running: its resources exist only while a worker "
                "(or Drainer(sqs)(app)) runs the app"
            )
        return value

    def start(self, value: object) -> None:
        """Hold the lifespan's yield.

        Raises:
            TypeError: It is not of the declared resource type.
        """
        expected = self.resource_type
        cls = get_origin(expected) or expected
        if isinstance(cls, type) and not isinstance(value, cls):
            raise TypeError(
                f"the lifespan yielded {type(value).__name__}, but declares {_type_name(expected)}"
            )
        self._value = value

    def stop(self) -> None:
        """Forget the resources (the lifespan is closing)."""
        self._value = _UNSET

    def getter(self, annotation: Any, where: str) -> Callable[[object], object]:  # noqa: ANN401
        """How to take `annotation` from the resources.

        Raises:
            HandlerSignatureError: Nothing provides it, or two fields of its type do.
        """
        getter = self._getters.get(annotation)
        if getter is not None:
            return getter
        if annotation in self._ambiguous:
            names = ", ".join(self._ambiguous[annotation])
            raise HandlerSignatureError(
                f"{where}: several resources are {_type_name(annotation)} ({names}); ask for one "
                "with Annotated[..., Depends(provider)]"
            )
        provided = ", ".join(self.provided) or "nothing (no lifespan declares resources)"
        raise HandlerSignatureError(
            f"{where} cannot be filled: no resource is {_type_name(annotation)}; the app's "
            f"lifespan provides {provided}; only one further parameter, annotated Message, a "
            "lifespan resource or an Annotated[..., Depends(provider)] is passed"
        )


def _identity(value: object) -> object:
    return value


def _type_name(tp: Any) -> str:  # noqa: ANN401 (any type)
    return tp.__name__ if isinstance(tp, type) else repr(tp)


def _fields(resource_type: Any) -> dict[str, Any]:  # noqa: ANN401 (any type)
    """The public, annotated fields of a resources type (none for a builtin or a generic)."""
    if not isinstance(resource_type, type) or resource_type.__module__ == "builtins":
        return {}
    try:
        hints = get_type_hints(resource_type)
    except (NameError, TypeError):
        return {}
    if dataclasses.is_dataclass(resource_type):
        names = [f.name for f in dataclasses.fields(resource_type)]
    elif issubclass(resource_type, BaseModel):
        names = list(resource_type.model_fields)
    else:
        names = list(hints)
    return {
        n: hints[n]
        for n in names
        if n in hints and not n.startswith("_") and get_origin(hints[n]) is not typing.ClassVar
    }


# -- binding a function's parameters ------------------------------------------------------------

_Plan = tuple[tuple[str, "_Step"], ...]


@final
@dataclasses.dataclass(frozen=True, slots=True)
class _Step:
    """How one parameter is filled: a resource getter, the message, or a provider call."""

    getter: Callable[[object], object] | None = None
    provider: Callable[..., object] | None = None
    is_async: bool = False
    plan: _Plan = ()


_MESSAGE: Final = _Step()


def depends_of(annotation: Any) -> Depends | None:  # noqa: ANN401 (any annotation)
    """The `Depends` marker of an `Annotated[..., Depends(...)]`, if any."""
    if get_origin(annotation) is not Annotated:
        return None
    for extra in annotation.__metadata__:
        if isinstance(extra, Depends):
            return extra
    return None


def bind(
    needs: Mapping[str, Any], scope: ResourceScope, where: str, *, depth: int = 0
) -> Injector | None:
    """Build the injector of a handler's further parameters (`needs`: name -> annotation).

    Raises:
        HandlerSignatureError: A parameter nothing provides.
    """
    if not needs:
        return None
    plan = _plan(needs, scope, where, depth)
    return _injector(plan, scope)


def _plan(needs: Mapping[str, Any], scope: ResourceScope, where: str, depth: int) -> _Plan:
    if depth > 8:  # noqa: PLR2004 (a provider chain this deep is a cycle)
        raise HandlerSignatureError(f"{where}: Depends providers nest too deep (a cycle?)")
    steps: list[tuple[str, _Step]] = []
    for name, annotation in needs.items():
        marker = depends_of(annotation)
        if marker is not None:
            steps.append((name, _provider_step(marker.provider, scope, where, depth)))
        elif annotation is Message:
            steps.append((name, _MESSAGE))
        else:
            steps.append((name, _Step(getter=scope.getter(annotation, f"{where} {name!r}"))))
    return tuple(steps)


def _provider_step(
    provider: Callable[..., object], scope: ResourceScope, where: str, depth: int
) -> _Step:
    label = f"{where} provider {getattr(provider, '__qualname__', repr(provider))}"
    try:
        signature = inspect.signature(provider)
        hints = get_type_hints(provider, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise HandlerSignatureError(f"{label}: cannot read its signature: {exc}") from None
    needs: dict[str, Any] = {}
    for param in signature.parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD, param.POSITIONAL_ONLY):
            raise HandlerSignatureError(f"{label}: parameter {param.name!r} cannot be filled")
        if param.name not in hints:
            if param.default is not param.empty:
                continue
            raise HandlerSignatureError(f"{label}: annotate its parameter {param.name!r}")
        needs[param.name] = hints[param.name]
    return _Step(
        provider=provider,
        is_async=inspect.iscoroutinefunction(provider),
        plan=_plan(needs, scope, label, depth + 1),
    )


def _injector(plan: _Plan, scope: ResourceScope) -> Injector:
    if all(step.getter is not None for _, step in plan):
        getters = tuple((name, step.getter) for name, step in plan if step.getter is not None)

        async def resources_only(message: Message) -> dict[str, object]:  # noqa: ARG001
            value = scope.value
            return {name: getter(value) for name, getter in getters}

        return resources_only

    async def inject(message: Message) -> dict[str, object]:
        return await _fill(plan, scope, message)

    return inject


async def _fill(plan: _Plan, scope: ResourceScope, message: Message) -> dict[str, object]:
    filled: dict[str, object] = {}
    for name, step in plan:
        if step.getter is not None:
            filled[name] = step.getter(scope.value)
        elif step.provider is None:
            filled[name] = message
        else:
            kwargs = await _fill(step.plan, scope, message) if step.plan else {}
            result = step.provider(**kwargs)
            filled[name] = await result if step.is_async else result  # type: ignore[misc]
    return filled
