"""Redrive: move dead-lettered messages back to their source, by move task or by copy."""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass
from typing import Final, final

from qworker.dead_letter import REJECT_ATTRIBUTES
from qworker.dlq.move_task import (
    MOVE_TASK_TIMEOUT_S,
    MoveTasks,
    MoveTaskStatus,
    MoveTaskUnsupported,
    wait_move_task,
)
from qworker.dlq.peek import RECEIVE_WAIT_S, release
from qworker.exceptions import AccessDenied, BadRequest, ConfigError, TransportError
from qworker.message import (
    HOPS_ATTRIBUTE,
    RECEIVES_ATTRIBUTE,
    Message,
    SendEntry,
    queue_name_from_arn,
)
from qworker.transport import MAX_BATCH, QueueTransport

log = logging.getLogger("qworker.dlq")  # one logger for the whole DLQ tool, as before the split

COPY_VISIBILITY_S: Final = 60
"""How long a message being copied stays hidden: covers one send and one delete call."""
FIFO_DEFAULT_GROUP: Final = "default"


class RedriveMethod(enum.StrEnum):
    """How `redrive()` moves messages."""

    AUTO = "auto"
    MOVE_TASK = "move-task"
    COPY = "copy"


@final
@dataclass(frozen=True, slots=True)
class RedriveReport:
    """What a redrive did (or, dry, would do).

    Attributes:
        method: `move-task` or `copy`, the one used.
        moved: Messages moved (for a move task: as ListMessageMoveTasks last reported).
        failed: Copies the source refused; they stay in the DLQ.
        not_deleted: Copies sent whose DLQ delete failed; they come back in the DLQ (duplicates).
        would_move: For a dry run, how many messages would move.
        task: The move task's last status.
        fallback_reason: Why `auto` copied instead of starting a move task.
    """

    method: RedriveMethod
    moved: int = 0
    failed: int = 0
    not_deleted: int = 0
    would_move: int | None = None
    task: MoveTaskStatus | None = None
    fallback_reason: str | None = None


_DROPPED: Final = frozenset({*REJECT_ATTRIBUTES, HOPS_ATTRIBUTE, RECEIVES_ATTRIBUTE})
"""What a redriven message leaves behind: the reject reason and the hand-back budget it spent (a
redriven message starts with a fresh receive budget)."""


def _redrive_entry(message: Message, *, fifo: bool) -> SendEntry:
    attributes = {k: v for k, v in message.message_attributes.items() if k not in _DROPPED}
    if not fifo:
        return SendEntry(message.body, attributes)
    return SendEntry(
        message.body,
        attributes,
        group_id=message.group_id or FIFO_DEFAULT_GROUP,
        deduplication_id=message.message_id,
    )


async def copy_messages(
    dlq: QueueTransport,
    source: QueueTransport,
    *,
    limit: int,
    fifo: bool = False,
    wait_time_s: float = RECEIVE_WAIT_S,
) -> RedriveReport:
    """Move up to `limit` messages by receive, send, then delete: never lost, rarely duplicated.

    A message is deleted from the DLQ only after the source accepted its copy. Copies the source
    refuses are made visible in the DLQ again, and the move stops there.

    Args:
        dlq: Where the messages are.
        source: Where they go.
        limit: The most messages to move.
        fifo: The source is a FIFO queue (copies need a group and a deduplication id).
        wait_time_s: Long-poll wait of each receive.

    Raises:
        TransportError: A call failed; messages already moved stay moved, the rest stay put.
    """
    moved = not_deleted = 0
    while moved < limit:
        batch = await dlq.receive(
            min(MAX_BATCH, limit - moved),
            wait_time_s=wait_time_s,
            visibility_timeout_s=COPY_VISIBILITY_S,
        )
        if not batch:
            break
        try:
            failures = await source.send_batch([_redrive_entry(m, fifo=fifo) for m in batch])
        except TransportError:
            await release(dlq, batch)
            raise
        refused = {f.index for f in failures}
        sent = [m for i, m in enumerate(batch) if i not in refused]
        if sent:
            try:
                not_deleted += len(await dlq.delete_batch([m.receipt_handle for m in sent]))
            except TransportError as exc:
                log.warning(
                    "copies sent but not deleted from the dead-letter queue; they will come back",
                    extra={
                        "action": "dlq_delete_failed",
                        "queue": dlq.queue_name,
                        "error": str(exc),
                    },
                )
                raise
            moved += len(sent)
        if refused:
            await release(dlq, [batch[i] for i in sorted(refused)])
            log.warning(
                "the source queue refused redriven messages; they stay in the dead-letter queue",
                extra={
                    "action": "dlq_redrive_refused",
                    "queue": source.queue_name,
                    "error": f"{failures[0].code}: {failures[0].message}",
                },
            )
            return RedriveReport(
                RedriveMethod.COPY, moved=moved, failed=len(refused), not_deleted=not_deleted
            )
    return RedriveReport(RedriveMethod.COPY, moved=moved, not_deleted=not_deleted)


async def redrive(
    dlq: QueueTransport,
    source: QueueTransport,
    *,
    move_tasks: MoveTasks | None = None,
    count: int | None = None,
    method: RedriveMethod = RedriveMethod.AUTO,
    dry_run: bool = False,
    max_per_second: int | None = None,
    wait: bool = False,
    wait_timeout_s: float = MOVE_TASK_TIMEOUT_S,
    wait_time_s: float = RECEIVE_WAIT_S,
) -> RedriveReport:
    """Move messages from `dlq` back to `source`.

    Without `count`, the messages the DLQ holds at the start are moved (a copy stops there, so a
    handler that dead-letters them again cannot keep it going).

    Args:
        dlq: The dead-letter queue.
        source: The queue the messages go back to.
        move_tasks: StartMessageMoveTask access (None: the server has none, e.g. the fake).
        count: The most messages to move (None: all); a move task cannot count, so this copies.
        method: `auto`, `move-task` or `copy`.
        dry_run: Only report what would move.
        max_per_second: The move task's rate limit.
        wait: Wait for the move task to finish.
        wait_timeout_s: The longest to wait for it.
        wait_time_s: Long-poll wait of each receive of a copy.

    Raises:
        ConfigError: `count` with the `move-task` method.
        MoveTaskUnsupported: `move-task` on a server without it.
        TransportError: A queue operation failed.
    """
    if count is not None and method is RedriveMethod.MOVE_TASK:
        raise ConfigError("a move task cannot stop after --count messages: use --method copy")
    dlq_attrs = await dlq.get_attributes()
    held = dlq_attrs.approximate_visible + dlq_attrs.approximate_in_flight
    limit = held if count is None else count
    use_task = count is None and method is not RedriveMethod.COPY
    fallback: str | None = None
    if use_task and move_tasks is None:
        if method is RedriveMethod.MOVE_TASK:
            raise MoveTaskUnsupported("no SQS client to start a move task with")
        use_task, fallback = False, "no SQS client to start a move task with"
    if dry_run:
        if use_task and move_tasks is not None:
            use_task, fallback = await _probe(move_tasks, dlq_attrs.arn, method)
        chosen = RedriveMethod.MOVE_TASK if use_task else RedriveMethod.COPY
        return RedriveReport(chosen, would_move=min(limit, held), fallback_reason=fallback)
    source_attrs = await source.get_attributes()
    if use_task and move_tasks is not None:
        try:
            await move_tasks.start(
                source_arn=dlq_attrs.arn,
                destination_arn=source_attrs.arn,
                max_per_second=max_per_second,
            )
        except (MoveTaskUnsupported, AccessDenied, BadRequest) as exc:
            if method is RedriveMethod.MOVE_TASK:
                raise
            fallback = str(exc)
        else:
            return await _task_report(
                move_tasks, dlq_attrs.arn, wait=wait, timeout_s=wait_timeout_s
            )
    report = await copy_messages(
        dlq, source, limit=limit, fifo=source_attrs.fifo, wait_time_s=wait_time_s
    )
    log.info(
        "dead-letter messages copied back",
        extra={"action": "dlq_redrive", "queue": source.queue_name, "moved": report.moved},
    )
    return dataclasses.replace(report, fallback_reason=fallback)


async def _probe(
    move_tasks: MoveTasks, dlq_arn: str, method: RedriveMethod
) -> tuple[bool, str | None]:
    """Whether a move task would be used, asked with the read-only ListMessageMoveTasks."""
    try:
        await move_tasks.recent(dlq_arn)
    except (MoveTaskUnsupported, AccessDenied) as exc:
        if method is RedriveMethod.MOVE_TASK:
            raise
        return False, str(exc)
    return True, None


async def _task_report(
    move_tasks: MoveTasks, dlq_arn: str, *, wait: bool, timeout_s: float
) -> RedriveReport:
    if wait:
        status = await wait_move_task(move_tasks, dlq_arn, timeout_s=timeout_s)
    else:
        tasks = await move_tasks.recent(dlq_arn)
        status = tasks[0] if tasks else None
    log.info(
        "message move task started",
        extra={"action": "dlq_move_task", "queue": queue_name_from_arn(dlq_arn)},
    )
    return RedriveReport(RedriveMethod.MOVE_TASK, moved=status.moved if status else 0, task=status)
