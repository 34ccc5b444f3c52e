"""Dead-letter queue operations: look at what failed, and move it back once the cause is fixed.

`peek()` shows a dead-letter queue's messages without consuming them: it receives them with a short
visibility timeout and makes them visible again at once (ChangeMessageVisibilityBatch). Each peek
is a receive, so it adds 1 to every shown message's `ApproximateReceiveCount`.

`redrive()` moves messages back to their source queue in one of two ways:

- **move task**: SQS's own `StartMessageMoveTask`, run by the server; it keeps message ids and
  attributes (qworker's reject attributes included) and cannot stop after N messages.
  `ListMessageMoveTasks` reports its progress.
- **copy**: receive, send to the source, and delete from the DLQ only after the send succeeded, so
  a crash can duplicate a message but never lose it (at-least-once). The copy is a new message
  (new id, receive count 0) with the body and attributes, minus qworker's reject attributes; FIFO
  copies keep their group and use the DLQ message id as deduplication id, so a retried copy within
  SQS's 5-minute window is not sent twice.

`auto` uses the move task where the server has it and no count is given, and copies otherwise.
`qworker dlq peek` and `qworker dlq redrive` wrap these functions.
"""

# `peek` reads a DLQ without consuming it, `move_task` drives StartMessageMoveTask, `redrive`
# copies or moves messages back, `queues` finds a DLQ and its source, `cli` is `qworker dlq`.

from __future__ import annotations

from qworker.dlq.cli import format_report, register
from qworker.dlq.move_task import MoveTasks, MoveTaskStatus, MoveTaskUnsupported, wait_move_task
from qworker.dlq.peek import EXCEEDED_REASON, DeadLetter, peek
from qworker.dlq.queues import resolve
from qworker.dlq.redrive import (
    COPY_VISIBILITY_S,
    RedriveMethod,
    RedriveReport,
    copy_messages,
    redrive,
)

__all__ = [
    "COPY_VISIBILITY_S",
    "EXCEEDED_REASON",
    "DeadLetter",
    "MoveTaskStatus",
    "MoveTaskUnsupported",
    "MoveTasks",
    "RedriveMethod",
    "RedriveReport",
    "copy_messages",
    "format_report",
    "peek",
    "redrive",
    "register",
    "resolve",
    "wait_move_task",
]
