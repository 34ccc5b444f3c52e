"""Structured logs: one JSON object per line, with stable keys and the worker's identity on each.

Every record carries `ts`, `level`, `logger`, `msg`, the identity (`service`, `role`, `version`, and
`task_id` on ECS) and whatever `extra` keys the call gave (`action`, `queue`, `message_id`,
`outcome`, ...). The keys never change spelling: people grep and alert on them.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Final, TextIO, final

from qworker.role import Identity

__all__ = ["JsonFormatter", "configure_logging"]

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
        entry.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _RESERVED and not key.startswith("_") and value is not None
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, separators=(",", ":"))


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
    if fmt == "json":
        handler.setFormatter(JsonFormatter(identity))
    else:
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s %(levelname)s [{identity.role}] %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # botocore's and moto's own chatter is noise at INFO.
    for noisy in ("botocore", "aiobotocore", "werkzeug", "moto", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
