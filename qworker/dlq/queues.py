"""Finding the queues: a DLQ from its source's RedrivePolicy, or the source from the DLQ."""

from __future__ import annotations

from typing import Any

from qworker._aws import map_errors
from qworker.exceptions import ConfigError
from qworker.message import queue_name_from_arn
from qworker.transport import SqsTransport


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
