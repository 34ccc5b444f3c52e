"""A handler module for subprocess tests: it journals every start and success to a file.

The journal (`QWORKER_TEST_JOURNAL`) has one line per event, `start <n>` and `done <n>`, so a test
can count successful handler runs per message after the worker process is gone. Each message takes
`work_s` seconds of work from its body (default 0.2).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from pydantic import BaseModel

JOURNAL = Path(os.environ.get("QWORKER_TEST_JOURNAL", "journal.txt"))


class Job(BaseModel):
    n: int
    work_s: float = 0.2


def _journal(line: str) -> None:
    with JOURNAL.open("a", encoding="utf-8") as out:
        out.write(line + "\n")


async def handle(job: Job) -> None:
    _journal(f"start {job.n}")
    await asyncio.sleep(job.work_s)  # the work this test worker pretends to do
    _journal(f"done {job.n}")
