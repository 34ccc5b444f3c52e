"""A sync handler for the shutdown-bound tests: it runs in a worker thread, `work_s` long.

A thread cannot be cancelled: when the shutdown grace runs out the worker releases the message and
exits without waiting for the thread. The journal's `done` line is written when the work is over,
so a `done` after the worker exited would show a late success (it never comes: the process is gone).
"""

from __future__ import annotations

import time

from bound_handlers import Job, journal

from qworker import Message


def handle(job: Job, message: Message) -> None:
    """Sleep `work_s` in the thread (a long or hung sync handler), then succeed."""
    journal("start", job.n, message)
    time.sleep(job.work_s)
    journal("done", job.n, message)
