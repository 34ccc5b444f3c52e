"""Handlers for the hand-back and FIFO fault tests' `qworker run` subprocesses.

A canary (`QWORKER_DEPLOYMENT_ROLE=canary`) has the defect named by `HANDBACK_DEFECT`: `fail`
(raise), `reject` (raise `Reject`), `retry` (raise `Retry(1)`) or none; a primary always does the
work, unless `HANDBACK_PRIMARY_DEFECT` says otherwise: `first` fails every message's first counted
attempt (effective receive count 1, a transient error) and succeeds on later ones, `flaky` fails a
random 30 % of its attempts. Independently of the
role, a body with `poison` always raises (a FIFO group's poison head, a standard queue's poison).
Each run is journaled like tests/fault_handlers.py does (one appended line per event, so several
worker processes can share the file), with the effective receive count (`ApproximateReceiveCount`
plus the deliveries a hand-back copy's message spent before: the same on a message never handed
back):

    <event> <n> <receive_count> <message_id> <pid> <epoch_s>

with events `start`, `done`, `fail`, `reject`, `retry` and `cancel`.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Final

from pydantic import BaseModel

from qworker import Message, Reject, Retry

JOURNAL: Final = Path(os.environ.get("QWORKER_TEST_JOURNAL", "journal.txt"))
ROLE: Final = os.environ.get("QWORKER_DEPLOYMENT_ROLE", "primary")
DEFECT: Final = os.environ.get("HANDBACK_DEFECT", "") if ROLE == "canary" else ""
PRIMARY_DEFECT: Final = os.environ.get("HANDBACK_PRIMARY_DEFECT", "") if ROLE == "primary" else ""
FLAKY_RATE: Final = 0.3


class Job(BaseModel):
    """What one message asks its handler to do."""

    n: int
    work_s: float = 0.02
    poison: bool = False


def _journal(event: str, job: Job, message: Message) -> None:
    line = (
        f"{event} {job.n} {message.effective_receive_count} {message.message_id} {os.getpid()} "
        f"{time.time():.3f}\n"
    )
    with JOURNAL.open("a", encoding="utf-8") as out:  # O_APPEND: one write per line
        out.write(line)


def _primary_fails(message: Message) -> bool:
    """Whether the primary's transient defect fails this attempt."""
    if PRIMARY_DEFECT == "first":
        return message.effective_receive_count == 1
    if PRIMARY_DEFECT == "flaky":
        return random.random() < FLAKY_RATE  # noqa: S311 (a test's coin, not cryptography)
    return False


async def handle(job: Job, message: Message) -> None:
    """Do the work, or fail the way the canary's defect (or a poison body) says."""
    _journal("start", job, message)
    try:
        await asyncio.sleep(job.work_s)  # the work this test worker pretends to do
    except asyncio.CancelledError:
        _journal("cancel", job, message)
        raise
    if job.poison or DEFECT == "fail" or _primary_fails(message):
        _journal("fail", job, message)
        raise RuntimeError(f"message {job.n} fails ({ROLE})")
    if DEFECT == "reject":
        _journal("reject", job, message)
        raise Reject(f"canary rejects message {job.n}")
    if DEFECT == "retry":
        _journal("retry", job, message)
        raise Retry(1, f"canary retries message {job.n}")
    _journal("done", job, message)
