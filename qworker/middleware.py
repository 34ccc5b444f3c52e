"""Public middleware: code that runs around every handler call of an app.

```python
@app.middleware
async def tenant_context(message: Message, call_next: CallNext) -> None:
    token = tenant.set(message.attribute("tenant") or "-")
    try:
        await call_next()  # the next middleware, then the handler
    finally:
        tenant.reset(token)
```

A middleware is an async callable `(message, call_next) -> None` (`Middleware`); `call_next()` runs
the rest of the chain and the handler, and raises what they raise. It runs where the handler runs:
after the body was decoded (a message whose body does not validate is rejected before any
middleware), inside the handler's timeout, in the handler's task (so context variables it sets are
seen by the handler and by log lines written there), inside the worker's own span. What it raises
is the message's outcome exactly as if the handler had raised it: `Retry`, `Reject`, any other
exception fails the message, so a broken middleware cannot lose a message or stop the worker.
Returning without calling `call_next()` skips the handler and the message succeeds (it is deleted):
that is how a middleware drops a duplicate.

`MessageHooks` is the same as three methods, `before`, `after` and `on_error`, for a subclass to
fill in. Registered with `QWorker(middleware=[...])`, `app.middleware(m)` (also a decorator) or
`qworker run --middleware module:attribute`; the first registered runs outermost. An app without
middleware calls its handlers directly, at no cost per message.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

from qworker.message import Message

__all__ = ["CallNext", "MessageHooks", "Middleware"]

CallNext = Callable[[], Awaitable[None]]
"""Runs the rest of the chain and the handler; raises what they raise."""


class Middleware(Protocol):
    """Runs around each handler call: before, `await call_next()`, after; or on its exception."""

    async def __call__(self, message: Message, call_next: CallNext, /) -> None:
        """Process `message`: await `call_next()` to run the handler (or skip it by not calling)."""
        ...


class MessageHooks:
    """A middleware from three hooks; override the ones you need (each does nothing here).

    `before` runs first; then the handler; then `after` if it returned, or `on_error` with what it
    raised (`Retry` and `Reject` included), which is then raised on unless `on_error` raises
    something else. An exception in a hook is the message's outcome, as a handler's would be.
    """

    async def before(self, message: Message) -> None:
        """Before the handler."""

    async def after(self, message: Message) -> None:
        """After the handler returned."""

    async def on_error(self, message: Message, error: Exception) -> None:
        """After the handler raised `error` (raised on when this returns)."""

    async def __call__(self, message: Message, call_next: CallNext, /) -> None:
        """Run the hooks around the handler."""
        await self.before(message)
        try:
            await call_next()
        except Exception as exc:
            await self.on_error(message, exc)
            raise
        await self.after(message)
