"""Handler specs: how a plain function is bound to a message.

A handler is a function (async, or sync: sync ones run in a worker thread) whose first parameter
says what it wants from the body, by its annotation:

- a pydantic model (or any type pydantic can validate, `dict[str, Any]`, `list[int]`, ...): the body
  is decoded as JSON and validated into it;
- `str`: the raw body; `bytes`: the body's UTF-8 bytes;
- `Message`: the whole message (id, attributes, receive count, receipt handle).

A further parameter annotated `Message` also receives the whole message; further ones receive the
app's lifespan resources by type, or a provider's value, `Annotated[T, Depends(provider)]`
(`qworker.lifespan`). The signature is checked once, when the handler is registered, so a mistake
fails at import time and not on the first message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast, final, get_args, get_origin, get_type_hints

from pydantic import PydanticUserError, TypeAdapter, ValidationError

from qworker.batch_handler import BatchOptions, BatchResult
from qworker.envelopes import EnvelopeMode, check_mode
from qworker.exceptions import HandlerSignatureError, MessageDecodeError
from qworker.lifespan import Injector, ResourceScope, bind, depends_of
from qworker.message import Message

__all__ = ["HandlerFunc", "HandlerSpec"]

HandlerFunc = Callable[..., Awaitable[BatchResult | None]] | Callable[..., BatchResult | None]
"""A handler: an async or sync function taking the decoded body (and optionally the message); a
batch handler may return a `BatchResult`."""

_RAW_TYPES: tuple[type, ...] = (str, bytes, Message)

_POSITIONAL = "/"
"""`message_param` value for a `Message` parameter that must be passed by position."""


def _qualified_name(func: Callable[..., object]) -> str:
    module = getattr(func, "__module__", None) or "?"
    return f"{module}.{getattr(func, '__qualname__', repr(func))}"


@final
@dataclass(frozen=True, slots=True)
class HandlerSpec:
    """A registered handler and what its parameters ask for.

    Attributes:
        func: The function.
        name: Its qualified name, used in logs, metrics properties and spans.
        queue: The queue it consumes (`None`: the queue given by the settings).
        body_type: What the first parameter asks for (`str`, `bytes`, `Message` or a validated
        type).
        message_param: The name of a further `Message` parameter, if any.
        max_in_flight: This handler's own concurrency limit, if any.
        timeout_s: This handler's own timeout, if any.
        envelope: This handler's envelope mode (None: the app's).
        needs: Further parameters filled per message: resources and `Depends` (name, annotation).
        inject: Fills them (None: the handler asks for none, and pays nothing).
        batch: A batch handler's batch (`qworker.batch_handler`): `body_type` is then the type
            of one item of its `list[...]` parameter, and `message_param` names its
            `list[Message]` parameter.
        is_async: Whether the handler is a coroutine function (worked out once: it is asked
            for every message).
    """

    func: HandlerFunc
    name: str
    queue: str | None
    body_type: Any
    message_param: str | None
    max_in_flight: int | None = None
    timeout_s: float | None = None
    envelope: EnvelopeMode | None = None
    needs: tuple[tuple[str, Any], ...] = ()
    inject: Injector | None = None
    batch: BatchOptions | None = None
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        """Work out once whether the handler is async."""
        object.__setattr__(self, "is_async", inspect.iscoroutinefunction(self.func))

    @classmethod
    def from_function(
        cls,
        func: HandlerFunc,
        *,
        queue: str | None = None,
        max_in_flight: int | None = None,
        timeout_s: float | None = None,
        envelope: EnvelopeMode | None = None,
        resources: ResourceScope | None = None,
        batch_size: int | None = None,
        batch_wait_s: float = 1.0,
    ) -> HandlerSpec:
        """Inspect `func` and bind its parameters.

        Args:
            func: The handler.
            queue: Its queue (None: the configured one).
            max_in_flight: Its own concurrency limit.
            timeout_s: Its own timeout.
            envelope: Its envelope mode (None: the app's).
            resources: What its further parameters may ask for by type (the app's lifespan
                resources); none: only `Message` and `Depends` providers that need no resource.
            batch_size: Make it a batch handler of up to this many messages: its first parameter
                is a `list[T]` of bodies (`qworker.batch_handler`).
            batch_wait_s: A batch handler's longest wait for a full batch.

        Raises:
            HandlerSignatureError: The function cannot take a message.
        """
        name = _qualified_name(func)
        if not callable(func):
            raise HandlerSignatureError(f"handler {name} is not callable")
        if max_in_flight is not None and max_in_flight < 1:
            raise HandlerSignatureError(f"handler {name}: max_in_flight must be at least 1")
        batch = None
        if batch_size is not None:
            if batch_size < 1:
                raise HandlerSignatureError(f"handler {name}: batch_size must be at least 1")
            if not batch_wait_s >= 0:
                raise HandlerSignatureError(f"handler {name}: batch_wait_s must be 0 or more")
            batch = BatchOptions(batch_size, batch_wait_s)
        body_type, message_param, needs = _bind(func, name, batch=batch is not None)
        scope = resources if resources is not None else ResourceScope()
        inject = bind(needs, scope, f"handler {name}: parameter")
        if body_type not in _RAW_TYPES:
            try:
                _adapter(body_type)  # fail now if pydantic cannot validate this type
            except PydanticUserError as exc:
                raise HandlerSignatureError(
                    f"handler {name}: pydantic cannot validate {body_type!r}: "
                    f"{str(exc).splitlines()[0]}"
                ) from None
        if envelope is not None:
            envelope = check_mode(envelope, f"handler {name}")
        return cls(
            func,
            name,
            queue,
            body_type,
            message_param,
            max_in_flight,
            timeout_s,
            envelope,
            tuple(needs.items()),
            inject,
            batch,
        )

    def rebind(self, resources: ResourceScope) -> HandlerSpec:
        """This handler with its resource parameters taken from `resources` (an app's).

        Raises:
            HandlerSignatureError: `resources` does not provide one of them.
        """
        if not self.needs:
            return self
        inject = bind(dict(self.needs), resources, f"handler {self.name}: parameter")
        return dataclasses.replace(self, inject=inject)

    def decode(self, message: Message) -> object:
        """Turn the message into the handler's first argument.

        Raises:
            MessageDecodeError: The body is not valid for the handler's type.
        """
        if self.body_type is Message:
            return message
        if self.body_type is str:
            return message.body
        if self.body_type is bytes:
            return message.body.encode()
        try:
            return _adapter(self.body_type).validate_json(message.body)
        except ValidationError as exc:
            summary = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors(include_url=False)[:5]
            )
            raise MessageDecodeError(f"invalid body: {summary}") from None

    def caller(self) -> Callable[[object, Message], Awaitable[None]]:
        """What calls the handler with `(argument, message)`.

        `call`, or, for an async handler with nothing to inject, one that returns the handler's
        own coroutine (awaited as it is: no coroutine of qworker's around it per message).
        """
        if not self.is_async or self.inject is not None:
            return self.call
        func = cast("Callable[..., Awaitable[None]]", self.func)  # checked by is_async
        if self.message_param == _POSITIONAL:
            return func
        name = self.message_param
        if not name:
            return lambda argument, _: func(argument)
        return lambda argument, message: func(argument, **{name: message})

    async def call(self, argument: object, message: Message) -> None:
        """Call the handler (a sync one in a worker thread).

        Whatever a sync handler raises in its thread, any `BaseException`, is raised here as it
        was: it is carried back as a value, since some (`StopIteration`) cannot cross an asyncio
        future and would leave the call waiting for ever.
        """
        if self.message_param == _POSITIONAL:
            args: tuple[object, ...] = (argument, message)
            kwargs: dict[str, object] = {}
        else:
            args = (argument,)
            kwargs = {self.message_param: message} if self.message_param else {}
        if self.inject is not None:
            kwargs = {**kwargs, **await self.inject(message)}
        if self.is_async:
            await self.func(*args, **kwargs)  # type: ignore[misc]  # checked by is_async
        else:
            raised = await asyncio.to_thread(_capture, self.func, args, kwargs)
            if raised is not None:
                raise raised


def _capture(
    func: Callable[..., object], args: tuple[object, ...], kwargs: dict[str, object]
) -> BaseException | None:
    """Run a sync handler in its thread; return what it raised instead of raising it."""
    try:
        func(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001 (handed back to the event loop, raised there)
        return exc
    return None


@functools.cache
def _adapter(tp: Any) -> TypeAdapter[Any]:  # noqa: ANN401 (any type pydantic can validate)
    return TypeAdapter(tp)


def _bind(
    func: HandlerFunc, name: str, *, batch: bool = False
) -> tuple[Any, str | None, dict[str, Any]]:
    try:
        signature = inspect.signature(func)
        hints = get_type_hints(func)
        extras = get_type_hints(func, include_extras=True)
    except (TypeError, ValueError, NameError) as exc:
        raise HandlerSignatureError(f"handler {name}: cannot read its signature: {exc}") from None
    params = [
        p
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if not params:
        raise HandlerSignatureError(f"handler {name} takes no parameter: it needs the message")
    first, rest = params[0], params[1:]
    if first.kind is first.KEYWORD_ONLY or first.name not in hints:
        raise HandlerSignatureError(
            f"handler {name}: annotate its first parameter {first.name!r} with the body's type "
            "(a pydantic model, dict, str, bytes or Message)"
        )
    body_type = hints[first.name]
    message_type: Any = Message
    if batch:
        if get_origin(body_type) is not list or len(get_args(body_type)) != 1:
            raise HandlerSignatureError(
                f"handler {name}: a batch handler's first parameter {first.name!r} is a list of "
                f"bodies, e.g. list[Order], not {body_type!r}"
            )
        (body_type,) = get_args(body_type)
        message_type = list[Message]
    message_param: str | None = None
    needs: dict[str, Any] = {}
    for param in rest:
        annotation = hints.get(param.name)
        if annotation == message_type and message_param is None:
            # A positional-only parameter cannot be passed by name: pass it by position.
            positional = param.kind is param.POSITIONAL_ONLY and param is params[1]
            message_param = _POSITIONAL if positional else param.name
        elif depends_of(extras.get(param.name)) is not None or (
            param.default is param.empty
            and annotation is not None
            and annotation != message_type
            and param.kind is not param.POSITIONAL_ONLY
        ):
            needs[param.name] = extras[param.name]
        elif param.default is param.empty:
            raise HandlerSignatureError(
                f"handler {name}: parameter {param.name!r} cannot be filled: only one further "
                "parameter, annotated Message, a lifespan resource or an "
                "Annotated[..., Depends(provider)] is passed"
            )
    return body_type, message_param, needs
