"""Structured logs: one JSON object per line, with stable keys and the worker's identity on each.

Every record carries `ts`, `level`, `logger`, `msg`, the identity (`service`, `role`, `version`, and
`task_id` on ECS) and whatever `extra` keys the call gave (`action`, `queue`, `message_id`,
`outcome`, ...). The keys never change spelling: people grep and alert on them.

The text format (`--log-format text`, for a terminal) shows the same fields: the message, then each
`extra` key as `key=value` (values with spaces quoted), then the traceback, if any, on the lines
below. JSON keeps a traceback in one field, `exception`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO, final

from qworker.role import Identity

__all__ = ["JsonFormatter", "RateLimit", "TextFormatter", "configure_logging"]

_RESERVED: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "taskName",
}


@final
class JsonFormatter(logging.Formatter):
    """Formats records as one JSON object per line, stamped with the worker's identity."""

    def __init__(self, identity: Identity) -> None:
        """Stamp records with `identity`."""
        super().__init__()
        self._identity = {
            "service": identity.service,
            "role": identity.role,
            "version": identity.version,
        }
        if identity.task_id:
            self._identity["task_id"] = identity.task_id

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as a JSON line."""
        entry: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **self._identity,
        }
        entry.update(_extra_fields(record))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


@final
class RateLimit:
    """At most `burst` events at once and one more every `every_s` seconds, per key.

    For log lines that a flood would repeat (a failing handler's traceback): `take(key)` says
    whether this one may be written and how many were held back since the last one written.
    """

    __slots__ = ("_buckets", "_burst", "_clock", "_every_s")

    def __init__(
        self, *, burst: int = 5, every_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        """Allow `burst` at once, then one per `every_s` seconds, on `clock`."""
        if burst < 1 or every_s <= 0:
            raise ValueError("burst must be at least 1 and every_s positive")
        self._burst = burst
        self._every_s = every_s
        self._clock = clock
        self._buckets: dict[str, tuple[float, float, int]] = {}  # key: (tokens, at, held back)

    def take(self, key: str) -> tuple[bool, int]:
        """Whether an event of `key` may be written now, and how many were held back before it."""
        now = self._clock()
        tokens, at, held = self._buckets.get(key, (float(self._burst), now, 0))
        tokens = min(float(self._burst), tokens + (now - at) / self._every_s)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now, held + 1)
            return False, held + 1
        self._buckets[key] = (tokens - 1.0, now, 0)
        return True, held


def _extra_fields(record: logging.LogRecord) -> list[tuple[str, object]]:
    return [
        (key, value)
        for key, value in vars(record).items()
        if key not in _RESERVED and not key.startswith("_") and value is not None
    ]


def _text_value(value: object) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text)
    return text


@final
class TextFormatter(logging.Formatter):
    """Formats records for a terminal: time, level, role, logger, message, `key=value` fields."""

    def __init__(self, identity: Identity) -> None:
        """Show `identity.role` on every line."""
        super().__init__()
        self._role = identity.role

    def format(self, record: logging.LogRecord) -> str:
        """Return the record as one line, plus its traceback on the lines below."""
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        line = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} [{self._role}] "
            f"{record.name}: {record.getMessage()}"
        )
        fields = " ".join(f"{key}={_text_value(value)}" for key, value in _extra_fields(record))
        if fields:
            line = f"{line}  {fields}"
        if record.exc_info:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def configure_logging(
    identity: Identity, *, level: str = "INFO", fmt: str = "json", stream: TextIO | None = None
) -> None:
    """Send logs to stderr (EMF metrics own stdout), as JSON or plain text.

    Args:
        identity: Stamped on every JSON line.
        level: The root level.
        fmt: `json` or `text`.
        stream: Where to write (default stderr).
    """
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = JsonFormatter(identity) if fmt == "json" else TextFormatter(identity)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # botocore's and moto's own chatter is noise at INFO.
    for noisy in ("botocore", "aiobotocore", "werkzeug", "moto", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
