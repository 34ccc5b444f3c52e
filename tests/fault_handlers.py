"""Handlers for the fault suite's `qworker run` subprocesses: faults on demand, and a journal.

Each body says what its handler does (`Job`): work for `work_s` seconds, then succeed; or always
raise (`fail`, a poison message); or raise `Reject` (`reject`); or hang far past any handler timeout
on deliveries up to `hang_attempts` (`ApproximateReceiveCount`), then behave. `crash` names
something a handler must never be able to take the worker down with (`CRASHES`: `SystemExit`,
`KeyboardInterrupt`, `GeneratorExit`, a bare `BaseException`, its own `CancelledError`, invalid
`Retry`/`Reject` arguments, ...): it is raised after the work on deliveries up to `crash_attempts`.
`pad` only adds bulk, for the size tests. tests/fault_handlers_sync.py has the same handler as a
plain function, which qworker runs in a worker thread.

The journal (`QWORKER_TEST_JOURNAL`) gets one line per event, written with a single append, so that
several worker processes (a killed one and its successor) can share one file:

    <event> <n> <receive_count> <message_id> <pid> <epoch_s>

with events `start`, `done` (the handler is about to return: success), `fail` (about to raise),
`reject` (about to raise `Reject`), `hang` (about to hang), `cancel` (cancelled: a timeout or
the shutdown grace ran out) and `crash` (about to raise the `crash` exception).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final, NoReturn

from pydantic import BaseModel

from qworker import Message, Reject, Retry

JOURNAL: Final = Path(os.environ.get("QWORKER_TEST_JOURNAL", "journal.txt"))
HANG_S: Final = 600.0
"""How long a hanging handler sleeps: far past any timeout the suite sets."""


class Job(BaseModel):
    """What one message asks its handler to do."""

    n: int
    work_s: float = 0.05
    fail: bool = False
    reject: bool = False
    hang_attempts: int = 0
    crash: str | None = None
    crash_attempts: int = 1_000
    pad: str = ""


class Custom(BaseException):
    """A `BaseException` subclass of the handler's own, outside `Exception`."""


class Sigil:
    """Not a string: what a careless handler might pass as a reason."""


def _raise(exc: BaseException) -> NoReturn:
    raise exc


CRASHES: Final[dict[str, Callable[[], NoReturn]]] = {
    "SystemExit": lambda: _raise(SystemExit(3)),
    "KeyboardInterrupt": lambda: _raise(KeyboardInterrupt()),
    "GeneratorExit": lambda: _raise(GeneratorExit()),
    "BaseException": lambda: _raise(BaseException("bare")),
    "Custom": lambda: _raise(Custom("a handler's own BaseException")),
    "CancelledError": lambda: _raise(asyncio.CancelledError()),
    "StopIteration": lambda: _raise(StopIteration("stop")),
    "Retry(nan)": lambda: _raise(Retry(delay_s=math.nan)),
    "Retry(inf)": lambda: _raise(Retry(delay_s=math.inf)),
    "Retry(-1)": lambda: _raise(Retry(delay_s=-1)),
    "Retry('soon')": lambda: _raise(Retry(delay_s="soon")),  # type: ignore[arg-type]
    "Reject('')": lambda: _raise(Reject("")),
    "Reject(object)": lambda: _raise(Reject(Sigil())),  # type: ignore[arg-type]
}
"""What `crash` may name; each raises (or fails to construct) its exception."""


def crash(job: Job, message: Message) -> None:
    """Raise the job's `crash`, journaled, on the deliveries it asks for."""
    if job.crash is not None and message.receive_count <= job.crash_attempts:
        _journal("crash", job, message)
        CRASHES[job.crash]()


def _journal(event: str, job: Job, message: Message) -> None:
    line = (
        f"{event} {job.n} {message.receive_count} {message.message_id} {os.getpid()} "
        f"{time.time():.3f}\n"
    )
    with JOURNAL.open("a", encoding="utf-8") as out:  # O_APPEND: one write per line
        out.write(line)


async def handle(job: Job, message: Message) -> None:
    """Do what the body says, journaling each step."""
    _journal("start", job, message)
    try:
        if message.receive_count <= job.hang_attempts:
            _journal("hang", job, message)
            await asyncio.sleep(HANG_S)
        await asyncio.sleep(job.work_s)  # the work this test worker pretends to do
    except asyncio.CancelledError:
        _journal("cancel", job, message)
        raise
    finish(job, message)


def finish(job: Job, message: Message) -> None:
    """The end of a handler: crash, fail, reject or succeed, as the job says."""
    crash(job, message)
    if job.fail:
        _journal("fail", job, message)
        raise RuntimeError(f"poison message {job.n} always fails")
    if job.reject:
        _journal("reject", job, message)
        raise Reject(f"fault suite rejects message {job.n}")
    _journal("done", job, message)
