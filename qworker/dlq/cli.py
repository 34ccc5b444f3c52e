"""`qworker dlq peek` and `qworker dlq redrive`: the command line of the DLQ tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import AsyncIterator
from typing import Any, Final

from qworker._aws import AwsTarget, open_client, sqs_profile
from qworker.dlq.move_task import MOVE_TASK_TIMEOUT_S, MoveTasks
from qworker.dlq.peek import PEEK_VISIBILITY_S, DeadLetter, peek
from qworker.dlq.queues import resolve
from qworker.dlq.redrive import RedriveMethod, RedriveReport, redrive
from qworker.exceptions import ConfigError
from qworker.local import read_state
from qworker.settings import load_settings
from qworker.transport import SqsTransport

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
        state = read_state()
        endpoint = state.endpoint_url if state is not None else None
        local = state is not None
    target = AwsTarget(settings.region, endpoint, local=local)
    async with open_client("sqs", target, sqs_profile()) as client:
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
