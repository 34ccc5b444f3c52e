"""`qworker queue create`: a queue and, with `--dlq`, its dead-letter queue and redrive policy.

Against LocalStack, moto or AWS alike: the endpoint comes from `--endpoint-url` (or
`QWORKER_ENDPOINT_URL`), else the embedded server `qworker run` started from this directory, else
AWS. Creating a queue that exists with the same attributes is a no-op, so the command is safe to
repeat; SQS refuses (and the command says so) when the attributes differ.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any, Final

from qworker._aws import AwsTarget, map_errors, open_client, sqs_profile
from qworker.exceptions import ConfigError
from qworker.local import DLQ_RETENTION_S, dead_letter_name, read_state
from qworker.settings import load_settings

__all__ = ["FIFO_SUFFIX", "create_queue", "register"]

FIFO_SUFFIX: Final = ".fifo"
_MAX_RECEIVE_COUNT: Final = 1000
"""SQS's upper bound on a redrive policy's maxReceiveCount."""
_MAX_VISIBILITY_S: Final = 43_200


def _bounded(low: int, high: int) -> Any:  # noqa: ANN401 (an argparse type callable)
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}: {value}")
        return value

    return parse


def register(subparsers: Any) -> None:  # noqa: ANN401 (argparse's subparsers action is private)
    """Add `qworker queue create` to the CLI."""
    queue = subparsers.add_parser("queue", help="create queues")
    commands = queue.add_subparsers(dest="queue_command", required=True, metavar="COMMAND")
    create = commands.add_parser(
        "create",
        help="create a queue (and its dead-letter queue)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    create.add_argument("name", help="queue name (`.fifo` is added with --fifo)")
    create.add_argument("--fifo", action="store_true", help="a FIFO queue (name ends in .fifo)")
    create.add_argument(
        "--dlq",
        action="store_true",
        help="also create NAME-dlq and a redrive policy pointing at it",
    )
    create.add_argument(
        "--max-receive-count",
        type=_bounded(1, _MAX_RECEIVE_COUNT),
        default=5,
        help="deliveries before SQS moves a message to the DLQ (with --dlq; default 5)",
    )
    create.add_argument(
        "--visibility-timeout-s",
        type=_bounded(0, _MAX_VISIBILITY_S),
        default=30,
        help="the queue's visibility timeout (default 30)",
    )
    create.add_argument("--endpoint-url", help="SQS endpoint, e.g. LocalStack's")
    create.add_argument("--region", help="AWS region")
    create.add_argument("--json", action="store_true", help="print the URLs as JSON")
    create.set_defaults(func=_cmd_create)


def _queue_name(name: str, *, fifo: bool) -> str:
    if fifo and not name.endswith(FIFO_SUFFIX):
        return name + FIFO_SUFFIX
    if not fifo and name.endswith(FIFO_SUFFIX):
        raise ConfigError(f"queue name {name!r} ends in {FIFO_SUFFIX}: add --fifo")
    return name


async def create_queue(
    client: Any,  # noqa: ANN401 (aiobotocore is untyped)
    name: str,
    *,
    dead_letter: bool,
    max_receive_count: int = 5,
    visibility_timeout_s: int = 30,
) -> tuple[str, str | None]:
    """Create `name` (FIFO when it ends in `.fifo`) and, if asked, its dead-letter queue.

    Returns:
        The queue's URL and the dead-letter queue's URL (None without one).
    """
    fifo = {"FifoQueue": "true"} if name.endswith(FIFO_SUFFIX) else {}
    attributes = {"VisibilityTimeout": str(visibility_timeout_s), **fifo}
    dlq_url = None
    with map_errors("CreateQueue"):
        if dead_letter:
            dlq = await client.create_queue(
                QueueName=dead_letter_name(name),
                Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_S), **fifo},
            )
            dlq_url = str(dlq["QueueUrl"])
            arn = await client.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])
            attributes["RedrivePolicy"] = json.dumps(
                {
                    "deadLetterTargetArn": arn["Attributes"]["QueueArn"],
                    "maxReceiveCount": str(max_receive_count),
                }
            )
        queue = await client.create_queue(QueueName=name, Attributes=attributes)
    return str(queue["QueueUrl"]), dlq_url


def _cmd_create(args: argparse.Namespace) -> int:
    name = _queue_name(args.name, fifo=args.fifo)
    settings = load_settings(endpoint_url=args.endpoint_url, region=args.region)
    endpoint, local = settings.endpoint_url, False
    if endpoint is None:
        state = read_state()
        endpoint, local = (state.endpoint_url, True) if state is not None else (None, False)

    async def run() -> tuple[str, str | None]:
        target = AwsTarget(settings.region, endpoint, local=local)
        async with open_client("sqs", target, sqs_profile()) as client:
            return await create_queue(
                client,
                name,
                dead_letter=args.dlq,
                max_receive_count=args.max_receive_count,
                visibility_timeout_s=args.visibility_timeout_s,
            )

    url, dlq_url = asyncio.run(run())
    if args.json:
        sys.stdout.write(json.dumps({"queue_url": url, "dead_letter_queue_url": dlq_url}) + "\n")
    else:
        sys.stdout.write(f"{url}\n")
        if dlq_url is not None:
            sys.stdout.write(
                f"{dlq_url}  (dead-letter queue, after {args.max_receive_count} receives)\n"
            )
    return 0
