"""Handlers for the fault suite's `qworker run` subprocesses: faults on demand, and a journal.

Each body says what its handler does (`Job`): work for `work_s` seconds, then succeed; or always
raise (`fail`, a poison message); or raise `Reject` (`reject`); or hang far past any handler timeout
on deliveries up to `hang_attempts` (`ApproximateReceiveCount`), then behave. `pad` only adds bulk,
for the size tests.

The journal (`QWORKER_TEST_JOURNAL`) gets one line per event, written with a single append, so that
several worker processes (a killed one and its successor) can share one file:

    <event> <n> <receive_count> <message_id> <pid> <epoch_s>

with events `start`, `done` (the handler is about to return: success), `fail` (about to raise),
`reject` (about to raise `Reject`), `hang` (about to hang) and `cancel` (cancelled: a timeout or
the shutdown grace ran out).
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Final

from pydantic import BaseModel

from qworker import Message, Reject

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
    pad: str = ""


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
    if job.fail:
        _journal("fail", job, message)
        raise RuntimeError(f"poison message {job.n} always fails")
    if job.reject:
        _journal("reject", job, message)
        raise Reject(f"fault suite rejects message {job.n}")
    _journal("done", job, message)
