"""The exception tree: one root, control-flow signals for handlers, errors mapped at the edge.

```
QWorkerError
├── HandlerSignal                 raised by handlers to steer their message (not errors)
│   ├── Retry                     retry later, after `delay_s`
│   └── Reject                    never succeeds: dead-letter it now
├── ConfigError (ValueError)      bad settings or wiring, found at start-up
│   ├── HandlerAlreadyRegistered
│   ├── HandlerSignatureError (TypeError)
│   └── HandlerNotFound (LookupError)
├── TransportError                an AWS call failed (botocore errors are mapped to these in one
│   │                             place, `qworker._aws.map_errors`; `.code` is the server's code)
│   ├── TransientTransportError   worth retrying after a backoff
│   │   ├── QueueUnavailable      connection refused, timed out, reset
│   │   ├── Throttled             the server asked us to slow down
│   │   └── ServerError           5xx, internal errors
│   ├── QueueDoesNotExist (LookupError)
│   ├── AccessDenied (PermissionError)
│   ├── InvalidReceiptHandle      the receipt expired (the message was received again elsewhere)
│   └── BadRequest (ValueError)   the server refused the request as malformed
└── MessageDecodeError (ValueError)  a body that cannot become the handler's argument
```

A class docstring doubles as its default message.
"""

from __future__ import annotations

import math

__all__ = [
    "AccessDenied",
    "BadRequest",
    "ConfigError",
    "HandlerAlreadyRegistered",
    "HandlerNotFound",
    "HandlerSignal",
    "HandlerSignatureError",
    "InvalidReceiptHandle",
    "MessageDecodeError",
    "QWorkerError",
    "QueueDoesNotExist",
    "QueueUnavailable",
    "Reject",
    "Retry",
    "ServerError",
    "Throttled",
    "TransientTransportError",
    "TransportError",
]


class QWorkerError(Exception):
    """A qworker error."""

    def __init__(self, message: str | None = None) -> None:
        """Use the class docstring as the message when none is given."""
        super().__init__(message if message is not None else (self.__doc__ or "").strip())


class HandlerSignal(QWorkerError):
    """A handler steers its message."""


class Retry(HandlerSignal):
    """The handler asks for its message to be retried later."""

    def __init__(self, delay_s: float = 0.0, reason: str | None = None) -> None:
        """Retry after `delay_s` seconds (capped at SQS's 12 hours).

        Args:
            delay_s: How long the message stays hidden before its next delivery: a finite number
                of seconds, zero or more.
            reason: Why, for the log line.

        Raises:
            TypeError: `delay_s` is not a number, or `reason` not a string.
            ValueError: `delay_s` is negative, infinite or NaN.
        """
        if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
            raise TypeError(f"Retry delay_s must be a number of seconds, not {delay_s!r}")
        try:
            seconds = float(delay_s)
        except OverflowError:  # an int too large for a float
            seconds = math.inf
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError(
                f"Retry delay_s must be finite and must not be negative, not {delay_s!r}"
            )
        if reason is not None and not isinstance(reason, str):
            raise TypeError(f"Retry reason must be a string, not {reason!r}")
        self.delay_s = seconds
        self.reason = reason
        super().__init__(reason or f"retry in {delay_s:g} s")


class Reject(HandlerSignal):
    """The message can never succeed."""

    def __init__(self, reason: str = "rejected by handler") -> None:
        """Reject the message: it goes to the dead-letter queue with `reason`.

        Args:
            reason: Why, recorded on the dead-lettered message and in the log; a non-blank string
                (SQS refuses an empty attribute value).

        Raises:
            TypeError: `reason` is not a string.
            ValueError: `reason` is blank.
        """
        if not isinstance(reason, str):
            raise TypeError(f"Reject reason must be a string, not {reason!r}")
        if not reason.strip():
            raise ValueError("Reject reason must not be blank")
        self.reason = reason
        super().__init__(reason)


class ConfigError(QWorkerError, ValueError):
    """The configuration is invalid."""


class HandlerAlreadyRegistered(ConfigError):
    """A handler is already registered for this queue."""


class HandlerSignatureError(ConfigError, TypeError):
    """The handler's signature cannot be bound to a message."""


class HandlerNotFound(ConfigError, LookupError):
    """No handler was found in the module."""


class TransportError(QWorkerError):
    """A queue operation failed."""

    def __init__(self, message: str | None = None, *, code: str = "") -> None:
        """Record the server's error code (empty when there was no answer).

        Args:
            message: What failed (default: the class docstring).
            code: The server's error code, e.g. `AWS.SimpleQueueService.NonExistentQueue`.
        """
        super().__init__(message)
        self.code = code


class TransientTransportError(TransportError):
    """A queue operation failed in a way that is worth retrying."""


class QueueUnavailable(TransientTransportError):
    """The queue server cannot be reached."""


class Throttled(TransientTransportError):
    """The queue server asked us to slow down."""


class ServerError(TransientTransportError):
    """The queue server failed."""


class QueueDoesNotExist(TransportError, LookupError):
    """The queue does not exist."""


class AccessDenied(TransportError, PermissionError):
    """The credentials may not do this on the queue."""


class InvalidReceiptHandle(TransportError):
    """The receipt handle is no longer valid."""


class BadRequest(TransportError, ValueError):
    """The server refused the request as malformed."""


class MessageDecodeError(QWorkerError, ValueError):
    """The message body cannot be decoded into the handler's argument."""
