"""The canary drill's handler, under the name it had before it moved into the package.

The handler is `qworker.drill.handlers` (installed with qworker, so `qworker drill` works outside
a source checkout); this module re-exports it, so `qworker run handlers.drill` (the README's drill
section, the release rehearsal) runs the same code.
"""

from qworker.drill.handlers import (
    BEHAVIOURS,
    CRASH_EXIT_CODE,
    WORK_S,
    Behaviour,
    DownstreamTimeoutError,
    DrillEvent,
    LedgerRejectedError,
    handle,
    outage_rate,
    process,
)

__all__ = [
    "BEHAVIOURS",
    "CRASH_EXIT_CODE",
    "WORK_S",
    "Behaviour",
    "DownstreamTimeoutError",
    "DrillEvent",
    "LedgerRejectedError",
    "handle",
    "outage_rate",
    "process",
]
