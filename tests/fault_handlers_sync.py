"""The fault suite's handler as a plain function: qworker runs it in a worker thread.

It does what tests/fault_handlers.py's handler does (the same `Job` bodies, the same journal), with
`time.sleep` for the work; a `hang` blocks its thread for `HANG_S`.
"""

from __future__ import annotations

import time

from fault_handlers import HANG_S, Job, _journal, finish

from qworker import Message


def handle(job: Job, message: Message) -> None:
    """Do what the body says, in a worker thread, journaling each step."""
    _journal("start", job, message)
    if message.receive_count <= job.hang_attempts:
        _journal("hang", job, message)
        time.sleep(HANG_S)
    time.sleep(job.work_s)  # the work this test worker pretends to do
    finish(job, message)
