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

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import enum
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, final

from qworker.exceptions import AccessDenied, BadRequest, ConfigError, ServerError, TransportError
from qworker.local import read_state
from qworker.settings import load_settings
from qworker.settle import REJECT_ATTRIBUTES
from qworker.transport import (
    MAX_BATCH,
    Message,
    QueueTransport,
    SendEntry,
    SqsTransport,
    map_errors,
    queue_name_from_arn,
)
from qworker.worker import open_sqs_client

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

log = logging.getLogger(__name__)

PEEK_VISIBILITY_S: Final = 15
"""How long peeked messages stay hidden if resetting them fails: long enough to collect a peek."""
COPY_VISIBILITY_S: Final = 60
"""How long a message being copied stays hidden: covers one send and one delete call."""
RECEIVE_WAIT_S: Final = 1.0
"""Long-poll wait per receive: a short poll (0 s) asks only some SQS hosts and can miss messages."""
MOVE_TASK_POLL_S: Final = 1.0
MOVE_TASK_TIMEOUT_S: Final = 300.0
EXCEEDED_REASON: Final = "exceeded maxReceiveCount"
"""The reason shown for messages SQS moved by the redrive policy (they carry no reject reason)."""
PREVIEW_CHARS: Final = 80
FIFO_DEFAULT_GROUP: Final = "default"
_RUNNING: Final = frozenset({"RUNNING", "CANCELLING"})


class MoveTaskUnsupported(TransportError):
    """The server does not support StartMessageMoveTask."""


# -- peek ------------------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-lettered message, as `peek()` shows it.

    Attributes:
        message_id: The id in the dead-letter queue.
        body: The body.
        reason: `qworker.reject_reason`, or `EXCEEDED_REASON` when the redrive policy moved it.
        rejected: Whether qworker rejected it (False: it failed `maxReceiveCount` times).
        source_queue: The queue it came from, when known.
        receive_count: `ApproximateReceiveCount` in the DLQ, this peek included (servers carry the
            source's deliveries over when the redrive policy moves a message).
        source_receive_count: Deliveries on the source when qworker rejected it.
        sent_at: When it was sent.
        original_message_id: Its id on the source queue (rejected messages get a new id).
    """

    message_id: str
    body: str
    reason: str
    rejected: bool
    source_queue: str | None
    receive_count: int
    source_receive_count: int | None
    sent_at: datetime | None
    original_message_id: str | None

    @classmethod
    def from_message(cls, message: Message, *, source_queue: str | None = None) -> DeadLetter:
        """Describe a received DLQ message; `source_queue` is the default source."""
        reason = message.attribute("qworker.reject_reason")
        source_arn = message.attributes.get("DeadLetterQueueSourceArn")
        count = message.attribute("qworker.receive_count")
        sent_s = message.sent_timestamp_s
        return cls(
            message_id=message.message_id,
            body=message.body,
            reason=reason or EXCEEDED_REASON,
            rejected=reason is not None,
            source_queue=message.attribute("qworker.source_queue")
            or (queue_name_from_arn(source_arn) if source_arn else source_queue),
            receive_count=message.receive_count,
            source_receive_count=int(count) if count and count.isdigit() else None,
            sent_at=datetime.fromtimestamp(sent_s, UTC) if sent_s is not None else None,
            original_message_id=message.attribute("qworker.original_message_id"),
        )

    @property
    def preview(self) -> str:
        """The body's start, on one line."""
        flat = self.body.replace("\r", "\\r").replace("\n", "\\n")
        return flat if len(flat) <= PREVIEW_CHARS else flat[: PREVIEW_CHARS - 1] + "…"

    def to_json(self) -> dict[str, object]:
        """The message as a JSON object (times in ISO 8601)."""
        data = dataclasses.asdict(self)
        data["sent_at"] = self.sent_at.isoformat() if self.sent_at else None
        return data


async def peek(
    dlq: QueueTransport,
    *,
    max_messages: int = 10,
    source_queue: str | None = None,
    wait_time_s: float = RECEIVE_WAIT_S,
    visibility_timeout_s: int = PEEK_VISIBILITY_S,
) -> list[DeadLetter]:
    """Show up to `max_messages` of a queue's messages and leave them there, visible.

    Messages are held (hidden for `visibility_timeout_s`) until the peek has collected them, so a
    receive does not return one twice, and then made visible again at once.

    Args:
        dlq: The dead-letter queue (any queue works).
        max_messages: The most messages to show.
        source_queue: The source queue, for messages that do not name theirs.
        wait_time_s: Long-poll wait of each receive.
        visibility_timeout_s: How long the messages stay hidden if resetting them fails.

    Raises:
        TransportError: A receive failed (messages already held are still made visible).
    """
    held: list[Message] = []
    shown: dict[str, DeadLetter] = {}
    try:
        while len(shown) < max_messages:
            batch = await dlq.receive(
                min(MAX_BATCH, max_messages - len(shown)),
                wait_time_s=wait_time_s,
                visibility_timeout_s=visibility_timeout_s,
            )
            held.extend(batch)
            fresh = [m for m in batch if m.message_id not in shown]
            if not fresh:
                break
            for message in fresh:
                shown[message.message_id] = DeadLetter.from_message(
                    message, source_queue=source_queue
                )
    finally:
        await _release(dlq, held)
    return list(shown.values())


async def _release(queue: QueueTransport, messages: Sequence[Message]) -> None:
    for start in range(0, len(messages), MAX_BATCH):
        chunk = messages[start : start + MAX_BATCH]
        try:
            failures = await queue.change_visibility_batch([(m.receipt_handle, 0) for m in chunk])
            error = f"{len(failures)} failed: {failures[0].code}" if failures else None
        except TransportError as exc:
            error = str(exc)
        if error is not None:
            # Not fatal: the messages become visible when their short visibility timeout ends.
            log.warning(
                "could not make held messages visible at once; they return after their timeout",
                extra={"action": "dlq_release_failed", "queue": queue.queue_name, "error": error},
            )


# -- move tasks -----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class MoveTaskStatus:
    """One entry of ListMessageMoveTasks."""

    status: str
    moved: int
    to_move: int | None = None
    failure_reason: str | None = None
    task_handle: str | None = None

    @classmethod
    def from_sqs(cls, raw: Mapping[str, Any]) -> MoveTaskStatus:
        """Build from a ListMessageMoveTasks result entry."""
        to_move = raw.get("ApproximateNumberOfMessagesToMove")
        return cls(
            status=str(raw.get("Status", "")),
            moved=int(raw.get("ApproximateNumberOfMessagesMoved", 0)),
            to_move=int(to_move) if to_move is not None else None,
            failure_reason=raw.get("FailureReason"),
            task_handle=raw.get("TaskHandle"),
        )

    @property
    def running(self) -> bool:
        """Whether the task is still moving messages."""
        return self.status in _RUNNING


# Codes servers answer with for an operation they lack; moto answers with a bare HTTP 500 instead.
_UNSUPPORTED_CODES: Final = frozenset(
    {
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "InvalidAction",
        "NotImplemented",
        "UnknownOperationException",
    }
)


def _unsupported(operation: str, exc: TransportError) -> TransportError:
    response = getattr(exc.__cause__, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    if isinstance(exc, ServerError) or code in _UNSUPPORTED_CODES:
        # The code alone: moto's message is a whole HTML error page.
        return MoveTaskUnsupported(f"the server does not support {operation} ({code or exc})")
    return exc


@final
class MoveTasks:
    """StartMessageMoveTask and ListMessageMoveTasks over an aiobotocore SQS client."""

    def __init__(self, client: Any) -> None:  # noqa: ANN401 (aiobotocore is untyped)
        """Use `client`, owned by the caller."""
        self._client = client

    async def start(
        self, *, source_arn: str, destination_arn: str, max_per_second: int | None = None
    ) -> str:
        """Start moving every message of `source_arn` to `destination_arn`; return the task handle.

        Raises:
            MoveTaskUnsupported: The server does not have StartMessageMoveTask.
            TransportError: The server refused (e.g. a task already runs for this DLQ).
        """
        params: dict[str, Any] = {"SourceArn": source_arn, "DestinationArn": destination_arn}
        if max_per_second is not None:
            params["MaxNumberOfMessagesPerSecond"] = max_per_second
        try:
            with map_errors("StartMessageMoveTask"):
                response = await self._client.start_message_move_task(**params)
        except TransportError as exc:
            raise _unsupported("StartMessageMoveTask", exc) from exc
        return str(response.get("TaskHandle", ""))

    async def recent(self, source_arn: str, *, max_results: int = 1) -> list[MoveTaskStatus]:
        """The most recent move tasks of a DLQ, newest first.

        Raises:
            MoveTaskUnsupported: The server does not have ListMessageMoveTasks.
        """
        try:
            with map_errors("ListMessageMoveTasks"):
                response = await self._client.list_message_move_tasks(
                    SourceArn=source_arn, MaxResults=max_results
                )
        except TransportError as exc:
            raise _unsupported("ListMessageMoveTasks", exc) from exc
        return [MoveTaskStatus.from_sqs(raw) for raw in response.get("Results", [])]


async def wait_move_task(
    move_tasks: MoveTasks,
    source_arn: str,
    *,
    timeout_s: float = MOVE_TASK_TIMEOUT_S,
    poll_s: float = MOVE_TASK_POLL_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> MoveTaskStatus | None:
    """Poll the newest move task of `source_arn` until it stops running or `timeout_s` passes."""
    status: MoveTaskStatus | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                tasks = await move_tasks.recent(source_arn)
                status = tasks[0] if tasks else None
                if status is None or not status.running:
                    return status
                await sleep(poll_s)  # the task runs on the server: there is nothing to await
    except TimeoutError:
        return status


# -- redrive ---------------------------------------------------------------------------------------


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


def _redrive_entry(message: Message, *, fifo: bool) -> SendEntry:
    attributes = {k: v for k, v in message.message_attributes.items() if k not in REJECT_ATTRIBUTES}
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
            await _release(dlq, batch)
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
            await _release(dlq, [batch[i] for i in sorted(refused)])
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


# -- finding the queues ---------------------------------------------------------------------------


async def _open_arn(client: Any, arn: str) -> SqsTransport:  # noqa: ANN401 (aiobotocore is untyped)
    account = arn.split(":")[4] if arn.count(":") >= 5 else None  # noqa: PLR2004 (ARN fields)
    params = {"QueueName": queue_name_from_arn(arn)}
    if account:
        params["QueueOwnerAWSAccountId"] = account
    with map_errors("GetQueueUrl"):
        response = await client.get_queue_url(**params)
    return SqsTransport(client, str(response["QueueUrl"]))


async def resolve(
    client: Any,  # noqa: ANN401 (aiobotocore is untyped)
    *,
    queue_name: str | None = None,
    queue_url: str | None = None,
    dlq_name: str | None = None,
) -> tuple[SqsTransport, SqsTransport | None]:
    """Find the DLQ from its source queue's RedrivePolicy, or the source from the DLQ.

    Returns:
        The dead-letter queue, and the source queue (None when the DLQ has not exactly one).

    Raises:
        ConfigError: No queue given, or the source has no RedrivePolicy and no `dlq_name`.
        QueueDoesNotExist: A queue does not exist.
    """
    if queue_name is not None or queue_url is not None:
        source = await SqsTransport.open(client, name=queue_name, url=queue_url)
        if dlq_name is not None:
            return await SqsTransport.open(client, name=dlq_name), source
        policy = (await source.get_attributes()).redrive_policy
        if policy is None:
            raise ConfigError(
                f"queue {source.queue_name!r} has no RedrivePolicy, so no dead-letter queue: "
                "name it with --dlq-name"
            )
        return await _open_arn(client, policy.dead_letter_arn), source
    if dlq_name is None:
        raise ConfigError(
            "which queue? give the source queue (--queue-name / --queue-url, or QWORKER_QUEUE_NAME"
            " / QWORKER_QUEUE_URL) or the dead-letter queue (--dlq-name)"
        )
    dlq = await SqsTransport.open(client, name=dlq_name)
    with map_errors("ListDeadLetterSourceQueues"):
        response = await client.list_dead_letter_source_queues(QueueUrl=dlq.queue_url)
    urls = [str(url) for url in response.get("queueUrls", [])]
    return dlq, SqsTransport(client, urls[0]) if len(urls) == 1 else None


# -- command line ----------------------------------------------------------------------------------

_PEEK_HELP: Final = (
    "Show a dead-letter queue's messages without consuming them: each is received with a "
    f"{PEEK_VISIBILITY_S} s visibility timeout and made visible again at once. Peeking is a "
    "receive, so it adds 1 to each message's ApproximateReceiveCount in the DLQ."
)
_REDRIVE_HELP: Final = (
    "Move dead-lettered messages back to their source queue. move-task (StartMessageMoveTask) "
    "keeps ids and attributes; copy (receive, send, then delete) sends new messages without "
    "qworker's reject attributes and never loses one. auto uses the move task when the server "
    "has it and no --count is given."
)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text}")
    return value


def _add_queue_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queue-name", help="the source queue (its RedrivePolicy names the DLQ)")
    parser.add_argument("--queue-url", help="the source queue's URL")
    parser.add_argument("--dlq-name", help="the dead-letter queue, when not found from the source")
    parser.add_argument("--endpoint-url", help="SQS endpoint, e.g. LocalStack's")
    parser.add_argument("--region", help="AWS region")
    parser.add_argument("--json", action="store_true", help="print JSON lines")


def register(subparsers: Any) -> None:  # noqa: ANN401 (argparse's subparsers action is private)
    """Add `qworker dlq peek` and `qworker dlq redrive` to the CLI."""
    dlq = subparsers.add_parser("dlq", help="look at and redrive dead-letter queues")
    commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="COMMAND")
    peek_parser = commands.add_parser("peek", help="show DLQ messages", description=_PEEK_HELP)
    _add_queue_flags(peek_parser)
    peek_parser.add_argument("--max", type=_positive, default=10, help="most messages to show")
    peek_parser.set_defaults(func=_cmd_peek)

    move = commands.add_parser("redrive", help="move DLQ messages back", description=_REDRIVE_HELP)
    _add_queue_flags(move)
    how_many = move.add_mutually_exclusive_group(required=True)
    how_many.add_argument("--count", type=_positive, help="move at most N messages (copies)")
    how_many.add_argument("--all", action="store_true", help="move every message")
    move.add_argument("--dry-run", action="store_true", help="only say what would move")
    move.add_argument(
        "--method",
        choices=[m.value for m in RedriveMethod],
        default=RedriveMethod.AUTO.value,
        help="auto (default): the move task when the server has it and no --count is given",
    )
    move.add_argument("--max-per-second", type=_positive, help="the move task's rate limit")
    move.add_argument("--wait", action="store_true", help="wait for the move task to finish")
    move.add_argument(
        "--wait-timeout-s",
        type=float,
        default=MOVE_TASK_TIMEOUT_S,
        help="the longest --wait waits",
    )
    move.set_defaults(func=_cmd_redrive)


@contextlib.asynccontextmanager
async def _queues(
    args: argparse.Namespace,
) -> AsyncIterator[tuple[Any, SqsTransport, SqsTransport | None]]:
    """Open a client and find the queues the flags (or `QWORKER_*` variables) name."""
    settings = load_settings(
        queue_name=args.queue_name,
        queue_url=args.queue_url,
        endpoint_url=args.endpoint_url,
        region=args.region,
    )
    endpoint, local = settings.endpoint_url, False
    if endpoint is None and settings.queue_url is None:
        # The embedded server `qworker run` started from this directory, as `qworker send` does.
        endpoint = read_state()
        local = endpoint is not None
    async with open_sqs_client(settings, endpoint_url=endpoint, local=local) as client:
        dlq, source = await resolve(
            client,
            queue_name=settings.queue_name,
            queue_url=settings.queue_url,
            dlq_name=args.dlq_name,
        )
        yield client, dlq, source


def _cmd_peek(args: argparse.Namespace) -> int:
    async def run() -> tuple[str, list[DeadLetter]]:
        async with _queues(args) as (_, dlq, source):
            name = source.queue_name if source else None
            return dlq.queue_name, await peek(dlq, max_messages=args.max, source_queue=name)

    dlq_name, letters = asyncio.run(run())
    if args.json:
        sys.stdout.writelines(json.dumps(letter.to_json()) + "\n" for letter in letters)
        return 0
    sys.stdout.write(f"{dlq_name}: {len(letters)} message(s)\n")
    for letter in letters:
        sent = letter.sent_at.strftime("%Y-%m-%dT%H:%M:%SZ") if letter.sent_at else "?"
        count = (
            f"{letter.source_receive_count} receive(s) on the source"
            if letter.source_receive_count is not None
            else f"{letter.receive_count} receive(s), this peek included"
        )
        sys.stdout.write(
            f"{letter.message_id}  sent {sent}  from {letter.source_queue or '?'}\n"
            f"  reason: {letter.reason} ({count})\n  body:   {letter.preview}\n"
        )
    return 0


def _cmd_redrive(args: argparse.Namespace) -> int:
    async def run() -> tuple[str, str, RedriveReport]:
        async with _queues(args) as (client, dlq, source):
            if source is None:
                raise ConfigError(
                    f"dead-letter queue {dlq.queue_name!r} has no single source queue: "
                    "name it with --queue-name"
                )
            report = await redrive(
                dlq,
                source,
                move_tasks=MoveTasks(client),
                count=args.count,
                method=RedriveMethod(args.method),
                dry_run=args.dry_run,
                max_per_second=args.max_per_second,
                wait=args.wait,
                wait_timeout_s=args.wait_timeout_s,
            )
            return dlq.queue_name, source.queue_name, report

    dlq_name, source_name, report = asyncio.run(run())
    if args.json:
        data = {"dlq": dlq_name, "source": source_name, **dataclasses.asdict(report)}
        sys.stdout.write(json.dumps(data) + "\n")
    else:
        sys.stdout.write(format_report(report, dlq_name, source_name) + "\n")
    task_failed = report.task is not None and report.task.status == "FAILED"
    return 1 if report.failed or task_failed else 0


def format_report(report: RedriveReport, dlq: str, source: str) -> str:
    """Say what a redrive did, in a line or a few."""
    how = "StartMessageMoveTask" if report.method is RedriveMethod.MOVE_TASK else "copy"
    lines: list[str] = []
    if report.fallback_reason:
        lines.append(f"(move task unavailable, copying: {report.fallback_reason})")
    if report.would_move is not None:
        lines.append(
            f"dry run: would move {report.would_move} message(s) {dlq} -> {source} ({how})"
        )
    elif report.task is not None:
        task = report.task
        total = f" of ~{task.to_move}" if task.to_move is not None else ""
        why = f" ({task.failure_reason})" if task.failure_reason else ""
        lines.append(f"move task {dlq} -> {source}: {task.status}{why}, {task.moved}{total} moved")
    else:
        lines.append(f"moved {report.moved} message(s) {dlq} -> {source} ({how})")
        if report.failed:
            lines.append(f"{report.failed} refused by {source}: still in {dlq}")
        if report.not_deleted:
            lines.append(f"{report.not_deleted} sent but not deleted from {dlq}: will come back")
    return "\n".join(lines)
