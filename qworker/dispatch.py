"""Dispatch: run one message through its handler and say what happened, as an `OutcomeRecord`.

Decoding, the handler call, its timeout and the mapping of exceptions to outcomes live here, and
nothing else: the consumer acts on the record (delete, change visibility, dead-letter) and observers
(metrics, tracing) wrap the call as middleware. A handler error never escapes: whatever a handler
raises, `Exception` or any other `BaseException` (`SystemExit`, `KeyboardInterrupt`,
`GeneratorExit`, even `asyncio.CancelledError` raised by the handler itself), becomes a `failed`
outcome of its message. Only a real cancellation of the dispatching task (the shutdown grace ran
out, or the caller cancelled it) flows on, so shutdown can stop a handler. The two are told apart by
the task's pending cancel requests (`Task.cancelling()`): a handler that raises `CancelledError`
while nobody cancelled its task has failed. Exceptions that are not `Exception`s are logged with
their traceback (`handler_crashed`): they would otherwise leave no trace but the outcome.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, Protocol, final

from qworker.batch_handler import BatchRunner
from qworker.envelopes import EnvelopeMode, unwrapper
from qworker.exceptions import MessageDecodeError, Reject, Retry
from qworker.handler import HandlerSpec
from qworker.logs import RateLimit
from qworker.message import Message
from qworker.middleware import CallNext
from qworker.middleware import Middleware as HandlerMiddleware
from qworker.outcome import Outcome, OutcomeRecord
from qworker.role import Identity
from qworker.routing import message_type_of

__all__ = ["Dispatch", "Dispatcher", "Middleware"]

log = logging.getLogger(__name__)

Dispatch = Callable[[Message], Awaitable[OutcomeRecord]]
"""Runs one message and returns its outcome."""

MAX_ERROR_CHARS: Final = 500
"""Error texts are cut to this length in records (they end up in logs and DLQ attributes)."""


class Middleware(Protocol):
    """Wraps dispatch, e.g. to open a span around it; must return the inner outcome."""

    async def __call__(self, message: Message, call_next: Dispatch) -> OutcomeRecord:
        """Process `message` by awaiting `call_next(message)`, adding what the middleware adds."""
        ...


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_ERROR_CHARS]


@final
class Dispatcher:
    """Runs messages of one queue through one handler, inside the middleware chain."""

    def __init__(
        self,
        spec: HandlerSpec,
        *,
        queue: str,
        identity: Identity,
        timeout_s: float | None = None,
        middleware: Sequence[Middleware] = (),
        body: Callable[[Message], Awaitable[Message]] | None = None,
        clock: Callable[[], float] = time.perf_counter,
        wall_clock: Callable[[], float] = time.time,
        envelope: EnvelopeMode = "auto",
        handler_middleware: Sequence[HandlerMiddleware] = (),
    ) -> None:
        """Bind a handler to a queue.

        Args:
            spec: The handler.
            queue: The queue's name (for records).
            identity: The worker's identity (role and version go on every record).
            timeout_s: Fail a handler that runs longer (the handler's own timeout wins).
            middleware: Outermost first.
            body: Turns the received message into the one the handler decodes (a large
                payload fetched from S3); a `MessageDecodeError` rejects, anything else fails.
            clock: Measures handler duration.
            wall_clock: Epoch seconds, for message age.
            envelope: The envelope mode when the handler sets none (`qworker.envelopes`).
            handler_middleware: The app's public middleware (`qworker.middleware`), outermost
                first: run around the handler call, inside its timeout; what they raise is the
                outcome, as the handler's.
        """
        self.spec = spec
        self.queue = queue
        self.identity = identity
        self.timeout_s = spec.timeout_s if spec.timeout_s is not None else timeout_s
        self._clock = clock
        self._wall_clock = wall_clock
        self._tracebacks = RateLimit(clock=clock)
        self._body = body
        self._unwrap = unwrapper(
            spec.body_type, spec.envelope if spec.envelope is not None else envelope
        )
        self._message_type = message_type_of(spec.func)
        self._layers = tuple(reversed(handler_middleware))
        # A batch handler's message joins a batch; any other calls its handler.
        self._base: Callable[[object, Message], Awaitable[None]] = (
            BatchRunner(spec, spec.batch).submit if spec.batch is not None else spec.caller()
        )
        # No middleware: the handler is called directly (nothing added per message).
        self._call = self._around if self._layers else self._base
        chain: Dispatch = self._run
        for layer in reversed(middleware):
            chain = _wrap(layer, chain)
        self.process: Dispatch = chain
        """Process one message and return its outcome (what calling the dispatcher does)."""

    async def __call__(self, message: Message) -> OutcomeRecord:
        """Process one message and return its outcome."""
        return await self.process(message)

    def record(
        self,
        message: Message,
        outcome: Outcome,
        *,
        duration_s: float = 0.0,
        error: str | None = None,
        delay_s: float | None = None,
    ) -> OutcomeRecord:
        """Build the record of `message`'s outcome."""
        sent = message.sent_timestamp_s
        receive_count, hops = message.budget_counts()
        # (Positional, in the fields' order: a frozen record built by keyword costs a microsecond
        # more per message; tests/test_dispatch.py checks the order.)
        return OutcomeRecord(
            outcome,
            self.queue,
            self.spec.name,
            self.identity.role,
            self.identity.version,
            message.message_id,
            receive_count,
            duration_s,
            max(0.0, self._wall_clock() - sent) if sent is not None else 0.0,
            error,
            delay_s,
            True,  # noqa: FBT003 (settled)
            hops,
            self._message_type(message) if self._message_type is not None else None,
        )

    def _decode(self, message: Message) -> tuple[Message, object] | OutcomeRecord:
        """The message the handler sees and its argument, or the outcome of one that has none."""
        try:
            if self._unwrap is not None:
                message = self._unwrap(message)
            return message, self.spec.decode(message)
        except MessageDecodeError as exc:
            return self.record(message, Outcome.REJECTED, error=str(exc)[:MAX_ERROR_CHARS])

    async def _prepare(
        self, body: Callable[[Message], Awaitable[Message]], message: Message
    ) -> tuple[Message, object] | OutcomeRecord:
        """Run the body step (a large payload's fetch), then decode."""
        try:
            message = await body(message)
        except MessageDecodeError as exc:
            return self.record(message, Outcome.REJECTED, error=str(exc)[:MAX_ERROR_CHARS])
        except Exception as exc:  # noqa: BLE001 (the body step's error fails the message)
            return self.record(message, Outcome.FAILED, error=_describe(exc))
        return self._decode(message)

    async def _run(self, message: Message) -> OutcomeRecord:
        body = self._body
        if body is None and self._unwrap is None:  # (most handlers: the body is the argument)
            try:
                argument = self.spec.decode(message)
            except MessageDecodeError as exc:
                return self.record(message, Outcome.REJECTED, error=str(exc)[:MAX_ERROR_CHARS])
        else:
            decoded = self._decode(message) if body is None else await self._prepare(body, message)
            if isinstance(decoded, OutcomeRecord):
                return decoded
            message, argument = decoded
        started = self._clock()
        outcome, error, delay_s = Outcome.SUCCEEDED, None, None
        try:
            if self.timeout_s is None:
                await self._call(argument, message)
            else:
                async with asyncio.timeout(self.timeout_s):
                    await self._call(argument, message)
        except Exception as exc:  # noqa: BLE001 (a handler's error is an outcome, never a crash)
            outcome, error, delay_s = self._failure(exc, message, started)
        except BaseException as exc:
            if _cancelled():
                # A real cancellation (shutdown): the consumer releases the message. A handler
                # that turned it into something else still ends as a cancellation.
                if isinstance(exc, asyncio.CancelledError | GeneratorExit):
                    raise
                raise asyncio.CancelledError from exc
            outcome, error = Outcome.FAILED, _describe(exc)
            self._crashed(message, exc)
        return self.record(
            message, outcome, duration_s=self._clock() - started, error=error, delay_s=delay_s
        )

    def _failure(
        self, exc: Exception, message: Message, started: float
    ) -> tuple[Outcome, str, float | None]:
        """The outcome, error text and delay of a handler that raised `exc`."""
        if isinstance(exc, Retry):
            return Outcome.RETRIED, str(exc), exc.delay_s
        if isinstance(exc, Reject):
            return Outcome.REJECTED, exc.reason[:MAX_ERROR_CHARS], None
        if isinstance(exc, TimeoutError):
            timed_out = self.timeout_s is not None and self._clock() - started >= self.timeout_s
            return (
                Outcome.FAILED,
                f"handler timed out after {self.timeout_s:g} s" if timed_out else _describe(exc),
                None,
            )
        self._failed(message, exc)
        return Outcome.FAILED, _describe(exc), None

    async def _around(self, argument: object, message: Message) -> None:
        """The handler call inside the public middleware chain."""
        call: CallNext = functools.partial(self._base, argument, message)
        for layer in self._layers:
            call = functools.partial(layer, message, call)
        await call()

    def _failed(self, message: Message, exc: Exception) -> None:
        """Log a failing handler's traceback, at most a few a minute per handler."""
        allowed, held_back = self._tracebacks.take(self.spec.name)
        if not allowed or not log.isEnabledFor(logging.WARNING):
            return
        log.warning(
            "handler raised %s",
            type(exc).__name__,
            exc_info=exc,
            extra={
                "action": "handler_failed",
                "queue": self.queue,
                "handler": self.spec.name,
                "message_id": message.message_id,
                "receive_count": message.effective_receive_count,
                "tracebacks_held_back": held_back or None,
            },
        )

    def _crashed(self, message: Message, exc: BaseException) -> None:
        log.error(
            "handler raised %s: counted as a failure of its message",
            type(exc).__name__,
            exc_info=exc,
            extra={
                "action": "handler_crashed",
                "queue": self.queue,
                "handler": self.spec.name,
                "message_id": message.message_id,
                "receive_count": message.effective_receive_count,
                "error": _describe(exc),
                "error_type": type(exc).__name__,
            },
        )


def _cancelled() -> bool:
    """Whether this task is really being cancelled (a handler's own raise is not that).

    A task someone cancelled has a pending cancel request (`cancelling()`); a handler raising
    `CancelledError` (or anything else) on its own leaves none. A `GeneratorExit` thrown in by
    the coroutine being closed (outside any running task) must also flow on.
    """
    try:
        task = asyncio.current_task()
    except RuntimeError:  # no running loop: the coroutine is being closed
        return True
    if task is None:
        return True
    return task.cancelling() > 0


def _wrap(layer: Middleware, inner: Dispatch) -> Dispatch:
    async def call(message: Message) -> OutcomeRecord:
        return await layer(message, inner)

    return call
