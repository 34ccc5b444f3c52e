"""Async handlers for the heartbeat, shutdown-bound and health fault tests: faults on demand.

Each body (`Job`) says what the handler does: `work` sleeps `work_s` then succeeds; `hang` ignores
every cancellation and never returns (a hung async handler); `block` calls `time.sleep(work_s)`
inside the async handler, blocking the event loop (the mistake the loop-lag watch names).
The journal (`QWORKER_TEST_JOURNAL`) has the format of tests/fault_handlers.py, read by
`accounting.Journal`.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel

from qworker import Message

JOURNAL: Final = Path(os.environ.get("QWORKER_TEST_JOURNAL", "journal.txt"))
HANG_S: Final = 600.0


class Job(BaseModel):
    """What one message asks its handler to do."""

    n: int
    work_s: float = 0.05
    mode: Literal["work", "hang", "block"] = "work"


def journal(event: str, n: int, message: Message) -> None:
    """Append one journal line (one write: several processes may share the file)."""
    line = (
        f"{event} {n} {message.receive_count} {message.message_id} {os.getpid()} "
        f"{time.time():.3f}\n"
    )
    with JOURNAL.open("a", encoding="utf-8") as out:
        out.write(line)


async def handle(job: Job, message: Message) -> None:
    """Do what the body says, journaling each step."""
    journal("start", job.n, message)
    if job.mode == "block":
        time.sleep(job.work_s)  # noqa: ASYNC251 (the fault under test: a blocked event loop)
    elif job.mode == "hang":
        while True:
            try:
                await asyncio.sleep(HANG_S)
            except asyncio.CancelledError:
                journal("ignore-cancel", job.n, message)  # a handler that will not stop
    else:
        try:
            await asyncio.sleep(job.work_s)
        except asyncio.CancelledError:
            journal("cancel", job.n, message)
            raise
    journal("done", job.n, message)
