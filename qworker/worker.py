"""The worker: an app's handlers wired to their queues, one consumer each, sharing one SQS client.

`Worker.run()` opens the aiobotocore client, resolves each handler's queue (URL, attributes, redrive
policy and dead-letter queue), reports what it found, and runs every consumer in one task group.
Start-up survives a server that is not up yet: transient errors are retried with backoff until the
server answers, `stop()` is called, or `startup_timeout_s` has passed (then the worker gives up with
a `ConfigError` naming the endpoint: a mistyped port must not look like a slow start for ever).
Lasting errors (no such queue, a redrive policy naming a dead-letter queue that does not exist,
access denied) stop the worker with a message that names the setting to fix. A queue deleted while
the worker runs is reported by name: the source queue, or its dead-letter queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar, final

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from qworker.app import QWorker
from qworker.concurrency import first, leaves
from qworker.consumer import Consumer, ConsumerStatistics, OutcomeSink
from qworker.dispatch import Dispatcher, Middleware
from qworker.exceptions import (
    AccessDenied,
    BadRequest,
    ConfigError,
    QueueDoesNotExist,
    TransientTransportError,
    TransportError,
)
from qworker.handler import HandlerSpec
from qworker.outcome import RetryPolicy
from qworker.payloads import (
    PayloadError,
    PayloadResolver,
    PayloadStore,
    PayloadUnavailable,
    open_s3_client,
)
from qworker.producer import Producer
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.settle import Settler
from qworker.transport import QueueAttributes, SqsTransport

__all__ = ["Worker", "open_sqs_client"]

log = logging.getLogger(__name__)

T = TypeVar("T")

STARTUP_BACKOFF_MAX_S: Final = 10.0
"""Longest pause between start-up attempts while the queue server is unreachable."""


CONTROL_CONNECT_TIMEOUT_S: Final = 2
"""Connect timeout of visibility calls (the heartbeat's extensions, releases)."""

CONTROL_READ_TIMEOUT_S: Final = 5
"""Read timeout of visibility calls: far below any visibility timeout worth extending."""


@contextlib.asynccontextmanager
async def open_sqs_client(
    settings: QWorkerSettings,
    *,
    endpoint_url: str | None = None,
    local: bool = False,
    control: bool = False,
) -> AsyncIterator[Any]:
    """Open a long-lived aiobotocore SQS client.

    Args:
        settings: Region, endpoint, concurrency (for the connection pool).
        endpoint_url: Overrides the settings' endpoint (the embedded server's).
        local: Use dummy credentials (a local server does not check them).
        control: The client for visibility calls: short connect and read timeouts of their own
            and a fresh connection per call (retries included), so a pooled connection that
            silently died cannot hang an extension. The heartbeat also cuts each extension
            short itself and tries again at once.
    """
    if control:
        config = AioConfig(
            max_pool_connections=max(10, settings.pollers * 2 + 16),
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=CONTROL_CONNECT_TIMEOUT_S,
            read_timeout=CONTROL_READ_TIMEOUT_S,
            connector_args={"force_close": True, "keepalive_timeout": None},
        )
    else:
        config = AioConfig(
            # Every poller and every batch call in flight needs a connection.
            max_pool_connections=max(10, settings.pollers * 2 + 16),
            retries={"mode": "standard", "max_attempts": 3},
            connect_timeout=5,
            # A long poll holds the connection for wait_time_s: the read timeout must outlast it.
            read_timeout=settings.wait_time_s + 15,
        )
    credentials: dict[str, str] = (
        {"aws_access_key_id": "test", "aws_secret_access_key": "test"} if local else {}
    )
    session = get_session()
    async with session.create_client(
        "sqs",
        region_name=settings.region,
        endpoint_url=endpoint_url or settings.endpoint_url,
        config=config,
        **credentials,
    ) as client:
        yield client


@final
@dataclass(frozen=True, slots=True)
class _Resolved:
    spec: HandlerSpec
    transport: SqsTransport
    attributes: QueueAttributes
    dead_letter: SqsTransport | None


@final
class Worker:
    """Runs an app: one consumer per handler."""

    def __init__(
        self,
        app: QWorker,
        settings: QWorkerSettings,
        *,
        identity: Identity,
        endpoint_url: str | None = None,
        local: bool = False,
        middleware: Sequence[Middleware] = (),
        sinks: Sequence[OutcomeSink] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Create a worker; `run()` it.

        Args:
            app: The handlers.
            settings: The settings.
            identity: Role, version, service.
            endpoint_url: Overrides the settings' endpoint (the embedded server's).
            local: A local server: dummy credentials.
            middleware: Wraps every handler call (tracing).
            sinks: Receive every outcome (metrics, health).
            sleep: Injectable sleep.
        """
        if not app.handlers:
            raise ConfigError(f"app {app.name!r} has no handlers")
        self.app = app
        self.settings = settings
        self.identity = identity
        self._endpoint_url = endpoint_url
        self._local = local
        self._middleware = list(middleware)
        self._sinks = list(sinks)
        self._sleep = sleep
        self._stopping = asyncio.Event()
        self.consumers: list[Consumer] = []
        self.ready = asyncio.Event()
        self._control_client: Any = None
        # Large payloads: fetched before decoding, deleted once a success's delete is confirmed;
        # the S3 client opens on first use.
        self.payloads = PayloadResolver(
            PayloadStore(
                functools.partial(open_s3_client, settings, endpoint_url=endpoint_url, local=local),
                bucket=settings.payload_bucket,
                threshold_bytes=settings.payload_threshold_bytes,
                always=settings.payload_always,
            ),
            keep=settings.payload_keep,
        )

    def stop(self) -> None:
        """Stop every consumer; synchronous and idempotent."""
        self._stopping.set()
        for consumer in self.consumers:
            consumer.stop()

    @property
    def stopping(self) -> bool:
        """Whether `stop()` was called."""
        return self._stopping.is_set()

    def statistics(self) -> dict[str, ConsumerStatistics]:
        """Each consumer's counters, by queue."""
        return {c.transport.queue_name: c.statistics() for c in self.consumers}

    async def run(self) -> None:
        """Open the client, resolve the queues, consume until `stop()`."""
        try:
            await self._run()
        finally:
            await self.payloads.aclose()

    async def _run(self) -> None:
        async with (
            open_sqs_client(
                self.settings, endpoint_url=self._endpoint_url, local=self._local
            ) as client,
            open_sqs_client(
                self.settings, endpoint_url=self._endpoint_url, local=self._local, control=True
            ) as control_client,
        ):
            self._control_client = control_client
            resolved = []
            deadline = asyncio.get_running_loop().time() + self.settings.startup_timeout_s
            endpoint = str(client.meta.endpoint_url)
            for spec in self.app.handlers.values():
                found = await self._until_up(
                    functools.partial(self._resolve, client, spec), deadline, endpoint
                )
                if found is None:
                    return
                resolved.append(found)
            await self._check_payload_bucket()
            self.consumers = [self._consumer(r) for r in resolved]
            self.ready.set()
            if self.stopping:
                return
            producer = Producer.for_client(client, payloads=self.payloads.store)
            try:
                with self.app.use_producer(producer):
                    async with asyncio.TaskGroup() as group:
                        for consumer in self.consumers:
                            group.create_task(
                                consumer.run(), name=f"consume {consumer.transport.queue_name}"
                            )
            except BaseExceptionGroup as group:
                missing = [e for e in leaves(group) if isinstance(e, QueueDoesNotExist)]
                if not missing:
                    raise
                raise await _which_is_missing(client, resolved, missing[0]) from None

    async def _until_up(
        self, attempt: Callable[[], Awaitable[T]], deadline: float, endpoint: str
    ) -> T | None:
        """Run a start-up step, retrying transient errors until it works, `stop()` or `deadline`.

        Raises:
            ConfigError: The server could not be reached before `deadline` (loop time), or
                refused the worker in a way no retry mends (e.g. TLS to a plain-HTTP port).
        """
        failures = 0
        last_error = "no answer in time"
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                async with asyncio.timeout_at(deadline):
                    return await attempt()
            except TimeoutError:
                raise self._unreachable(endpoint, last_error) from None
            except TransientTransportError as exc:
                last_error = str(exc)
                if loop.time() >= deadline:
                    raise self._unreachable(endpoint, last_error) from None
                failures += 1
                delay = random.uniform(0.5, min(STARTUP_BACKOFF_MAX_S, 0.5 * 2**failures))  # noqa: S311 (jitter)
                log.warning(
                    "queue server not reachable at start-up; retrying",
                    extra={"action": "startup_retry", "error": str(exc), "attempt": failures},
                )
                await first(
                    self._stopping.wait(), self._sleep(min(delay, max(0.0, deadline - loop.time())))
                )
        return None

    async def _check_payload_bucket(self) -> None:
        """A payload bucket that does not exist, or is refused, stops the start with its name."""
        bucket = self.settings.payload_bucket
        if bucket is None:
            return
        try:
            await self.payloads.store.check_bucket()
        except PayloadUnavailable as exc:
            log.warning(
                "payload bucket not reachable at start-up; large bodies sent will fail until it is",
                extra={"action": "payload_bucket_unreachable", "error": str(exc)},
            )
        except PayloadError as exc:
            raise ConfigError(
                f"payload bucket {bucket!r} cannot be used ({exc}); create it, grant the task "
                "role s3:PutObject on it, or fix QWORKER_PAYLOAD_BUCKET (--payload-bucket)"
            ) from None

    def _unreachable(self, endpoint: str, error: str) -> ConfigError:
        timeout_s = self.settings.startup_timeout_s
        return ConfigError(
            f"queue server {endpoint} not reachable for {timeout_s:g} s at start-up ({error}); "
            "check QWORKER_ENDPOINT_URL (--endpoint-url) and the region, or raise "
            "QWORKER_STARTUP_TIMEOUT_S (--startup-timeout-s)"
        )

    async def _resolve(self, client: Any, spec: HandlerSpec) -> _Resolved:  # noqa: ANN401 (aiobotocore)
        name, url = self._queue_of(spec)
        try:
            transport = await SqsTransport.open(
                client, name=name, url=url, control_client=self._control_client
            )
            attributes = await transport.get_attributes()
        except QueueDoesNotExist as exc:
            raise ConfigError(
                f"queue {name or url!r} does not exist ({exc}); create it, or fix "
                "QWORKER_QUEUE_NAME / QWORKER_QUEUE_URL (--queue-name / --queue-url)"
            ) from None
        except AccessDenied as exc:
            raise ConfigError(
                f"access denied to queue {name or url!r} ({exc}); "
                "check the task role's SQS permissions"
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
        dead_letter = await self._dead_letter(client, transport.queue_name, attributes)
        self._report(transport, attributes, dead_letter)
        return _Resolved(spec, transport, attributes, dead_letter)

    def _queue_of(self, spec: HandlerSpec) -> tuple[str | None, str | None]:
        if spec.queue is not None:
            return spec.queue, None
        if self.settings.queue_url:
            return None, self.settings.queue_url
        if self.settings.queue_name:
            return self.settings.queue_name, None
        raise ConfigError(
            f"handler {spec.name} has no queue: set QWORKER_QUEUE_URL or QWORKER_QUEUE_NAME "
            "(--queue-url / --queue-name)"
        )

    async def _dead_letter(
        self,
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
        self, transport: SqsTransport, attributes: QueueAttributes, dead_letter: SqsTransport | None
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

    def _consumer(self, resolved: _Resolved) -> Consumer:
        settings = self.settings
        spec = resolved.spec
        visibility = settings.visibility_timeout_s or resolved.attributes.visibility_timeout_s
        policy = resolved.attributes.redrive_policy
        dispatcher = Dispatcher(
            spec,
            queue=resolved.transport.queue_name,
            identity=self.identity,
            timeout_s=settings.handler_timeout_s,
            middleware=self._middleware,
            body=self.payloads.resolve,
        )
        settler = Settler(
            resolved.transport,
            dead_letter=resolved.dead_letter,
            retry_policy=RetryPolicy(base_s=settings.retry_base_s, max_s=settings.retry_max_s),
            release_failed=settings.release_failed_effective,
            # A canary's non-success goes back to the primary as a fresh copy (not on FIFO).
            max_hops=(
                settings.canary_max_hops
                if self.identity.is_canary and not resolved.attributes.fifo
                else 0
            ),
            # The primary dead-letters a copy at the end of the budget its original had left.
            max_receive_count=(
                policy.max_receive_count if policy and not self.identity.is_canary else None
            ),
        )
        return Consumer(
            resolved.transport,
            dispatcher,
            visibility_timeout_s=visibility,
            request_visibility=settings.visibility_timeout_s is not None,
            concurrency=spec.max_in_flight or settings.concurrency,
            pollers=settings.pollers,
            wait_time_s=settings.wait_time_s,
            fifo=resolved.attributes.fifo,
            shutdown_grace_s=settings.shutdown_grace_s,
            max_hold_s=settings.max_hold_s,
            max_receive_count=policy.max_receive_count if policy else None,
            settler=settler,
            sinks=[*self._sinks, self.payloads],
            sleep=self._sleep,
        )


async def _which_is_missing(
    client: Any,  # noqa: ANN401 (aiobotocore is untyped)
    resolved: Sequence[_Resolved],
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
