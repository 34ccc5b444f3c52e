"""Queue resolution for the worker: a handler's queue, its attributes and its dead-letter queue.

`resolve()` opens the queue a handler consumes (by name or URL), reads its attributes (visibility
timeout, FIFO, redrive policy), opens the dead-letter queue the redrive policy names, and reports
what it found in one log line. Lasting errors become a `ConfigError` that names the setting to fix;
transient ones are raised as they are (the worker retries them at start-up). `which_is_missing()`
tells, once a queue went missing while the worker ran, whether it was a source queue or a DLQ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, final

from qworker.exceptions import (
    AccessDenied,
    BadRequest,
    ConfigError,
    QueueDoesNotExist,
    TransientTransportError,
    TransportError,
)
from qworker.handler import HandlerSpec
from qworker.message import QueueAttributes
from qworker.transport import SqsTransport

__all__ = ["Resolved", "queue_of", "resolve", "which_is_missing"]

log = logging.getLogger("qworker.worker")  # the logger these lines always had


@final
@dataclass(frozen=True, slots=True)
class Resolved:
    """A handler's queue as found at start-up."""

    spec: HandlerSpec
    transport: SqsTransport
    attributes: QueueAttributes
    dead_letter: SqsTransport | None


def queue_of(
    spec: HandlerSpec, *, queue_url: str | None, queue_name: str | None
) -> tuple[str | None, str | None]:
    """The (name, URL) a handler consumes: its own queue, else the configured URL, else name.

    Raises:
        ConfigError: Neither the handler nor the configuration names a queue.
    """
    if spec.queue is not None:
        return spec.queue, None
    if queue_url:
        return None, queue_url
    if queue_name:
        return queue_name, None
    raise ConfigError(
        f"handler {spec.name} has no queue: set QWORKER_QUEUE_URL or QWORKER_QUEUE_NAME "
        "(--queue-url / --queue-name)"
    )


async def resolve(
    client: Any,  # noqa: ANN401 (aiobotocore is untyped)
    spec: HandlerSpec,
    *,
    name: str | None,
    url: str | None,
    control_client: Any = None,  # noqa: ANN401
) -> Resolved:
    """Open a handler's queue (`name` or `url`) and its dead-letter queue; report them.

    Raises:
        ConfigError: The queue does not exist, is refused, or the server cannot be used.
        TransientTransportError: The server did not answer (retry).
    """
    try:
        transport = await SqsTransport.open(
            client, name=name, url=url, control_client=control_client
        )
        attributes = await transport.get_attributes()
    except QueueDoesNotExist as exc:
        raise ConfigError(
            f"queue {name or url!r} does not exist ({exc}); create it, or fix "
            "QWORKER_QUEUE_NAME / QWORKER_QUEUE_URL (--queue-name / --queue-url)"
        ) from None
    except AccessDenied as exc:
        raise ConfigError(
            f"access denied to queue {name or url!r} ({exc}); check the task role's SQS permissions"
        ) from None
    except BadRequest as exc:
        raise ConfigError(
            f"the server refused queue {name or url!r} ({exc}); fix "
            "QWORKER_QUEUE_NAME / QWORKER_QUEUE_URL (--queue-name / --queue-url)"
        ) from None
    except TransientTransportError:
        raise
    except TransportError as exc:
        endpoint = str(client.meta.endpoint_url)
        raise ConfigError(
            f"queue server {endpoint} cannot be used ({exc}); check QWORKER_ENDPOINT_URL "
            "(--endpoint-url) and the region"
        ) from None
    dead_letter = await _dead_letter(client, transport.queue_name, attributes)
    _report(transport, attributes, dead_letter)
    return Resolved(spec, transport, attributes, dead_letter)


async def _dead_letter(
    client: Any,  # noqa: ANN401 (aiobotocore is untyped)
    queue: str,
    attributes: QueueAttributes,
) -> SqsTransport | None:
    policy = attributes.redrive_policy
    if policy is None:
        return None
    try:
        return await SqsTransport.open(client, name=policy.dead_letter_name)
    except TransientTransportError:
        raise
    except QueueDoesNotExist:
        raise ConfigError(
            f"dead-letter queue {policy.dead_letter_name!r} named by the redrive policy of "
            f"queue {queue!r} does not exist; create it, or fix the queue's "
            "RedrivePolicy (deadLetterTargetArn)"
        ) from None
    except TransportError as exc:
        log.warning(
            "dead-letter queue not usable; rejected messages are left for the redrive policy",
            extra={"action": "dead_letter_unusable", "error": str(exc)},
        )
        return None


def _report(
    transport: SqsTransport, attributes: QueueAttributes, dead_letter: SqsTransport | None
) -> None:
    policy = attributes.redrive_policy
    log.info(
        "queue resolved",
        extra={
            "action": "queue_resolved",
            "queue": transport.queue_name,
            "queue_url": transport.queue_url,
            "fifo": attributes.fifo,
            "visibility_timeout_s": attributes.visibility_timeout_s,
            "dead_letter_queue": policy.dead_letter_name if policy else None,
            "max_receive_count": policy.max_receive_count if policy else None,
            "dead_letter_writable": dead_letter is not None,
        },
    )
    if policy is None:
        log.warning(
            "queue has no redrive policy: a message that always fails is retried until it "
            "expires; give the queue a dead-letter queue",
            extra={"action": "no_redrive_policy", "queue": transport.queue_name},
        )


async def which_is_missing(
    client: Any,  # noqa: ANN401 (aiobotocore is untyped)
    resolved: Sequence[Resolved],
    error: QueueDoesNotExist,
) -> Exception:
    """Name the queue that went missing while the worker ran: a source queue or a DLQ.

    Some servers refuse a receive on a queue whose dead-letter queue was deleted with the very
    error a deleted source queue gives; the queues are looked at again to tell which it is.
    """
    for found in resolved:
        queue = found.transport.queue_name
        try:
            await found.transport.get_attributes()
        except QueueDoesNotExist:
            return QueueDoesNotExist(f"queue {queue!r} was deleted while the worker ran ({error})")
        except TransportError:
            continue
        policy = found.attributes.redrive_policy
        if policy is None:
            continue
        try:
            await SqsTransport.open(client, name=policy.dead_letter_name)
        except QueueDoesNotExist:
            return ConfigError(
                f"dead-letter queue {policy.dead_letter_name!r} named by the redrive policy of "
                f"queue {queue!r} was deleted while the worker ran ({error}); recreate it, or "
                "fix the queue's RedrivePolicy (deadLetterTargetArn)"
            )
        except TransportError:
            continue
    return error
