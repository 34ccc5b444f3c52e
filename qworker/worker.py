"""The worker: an app's handlers wired to their queues, one consumer each, sharing one SQS client.

`Worker.run()` opens the aiobotocore client, resolves each handler's queue (URL, attributes, redrive
policy and dead-letter queue), reports what it found, and runs every consumer in one task group.
Start-up survives a server that is not up yet: transient errors are retried with backoff until the
server answers, `stop()` is called, or `startup_timeout_s` has passed (then the worker gives up with
a `ConfigError` naming the endpoint: a mistyped port must not look like a slow start for ever).
Lasting errors (no such queue, a redrive policy naming a dead-letter queue that does not exist,
access denied) stop the worker with a message that names the setting to fix. A queue deleted while
the worker runs is reported by name: the source queue, or its dead-letter queue.

The worker takes a plain `WorkerConfig` (`qworker.config`; the CLI builds it from the settings,
which also pass for one: `QWorkerSettings.worker_config()`). Queue resolution is
`qworker.resolve`; each consumer is built by `qworker.wiring.build_consumer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Final, Protocol, TypeVar, final

from qworker._aws import AwsTarget, open_client, sqs_profile
from qworker.app import QWorker
from qworker.concurrency import first, leaves
from qworker.config import SupportsWorkerConfig, WorkerConfig
from qworker.consumer import Consumer
from qworker.dispatch import Middleware
from qworker.exceptions import ConfigError, QueueDoesNotExist, TransientTransportError
from qworker.payload_resolver import PayloadResolver
from qworker.payloads import (
    PayloadError,
    PayloadStore,
    PayloadUnavailable,
    open_s3_client,
)
from qworker.producer import Producer
from qworker.resolve import Resolved, queue_of, resolve, which_is_missing
from qworker.role import Identity
from qworker.statistics import ConsumerStatistics, OutcomeSink
from qworker.wiring import build_consumer

__all__ = ["SqsClientOptions", "Worker", "open_sqs_client"]

log = logging.getLogger(__name__)

T = TypeVar("T")

STARTUP_BACKOFF_MAX_S: Final = 10.0
"""Longest pause between start-up attempts while the queue server is unreachable."""

_Resolved = Resolved  # the name tests knew


class SqsClientOptions(Protocol):
    """What an SQS client is opened with (`WorkerConfig`, or the settings)."""

    @property
    def region(self) -> str:
        """The AWS region."""
        ...

    @property
    def endpoint_url(self) -> str | None:
        """A custom endpoint, or None for AWS."""
        ...

    @property
    def pollers(self) -> int:
        """Receive loops per queue (the connection pool)."""
        ...

    @property
    def wait_time_s(self) -> int:
        """The long poll's wait (the read timeout outlasts it)."""
        ...


@contextlib.asynccontextmanager
async def open_sqs_client(
    options: SqsClientOptions,
    *,
    endpoint_url: str | None = None,
    local: bool = False,
    control: bool = False,
) -> AsyncIterator[Any]:
    """Open a long-lived aiobotocore SQS client (`qworker._aws.sqs_profile`).

    Args:
        options: Region, endpoint, pollers (the connection pool) and the long poll's wait.
        endpoint_url: Overrides the options' endpoint (the embedded server's).
        local: Use dummy credentials (a local server does not check them).
        control: The client for visibility calls: short connect and read timeouts of their own
            and a fresh connection per call (retries included), so a pooled connection that
            silently died cannot hang an extension. The heartbeat also cuts each extension
            short itself and tries again at once.
    """
    target = AwsTarget(options.region, endpoint_url or options.endpoint_url, local=local)
    profile = sqs_profile(pollers=options.pollers, wait_time_s=options.wait_time_s, control=control)
    async with open_client("sqs", target, profile) as client:
        yield client


@final
class Worker:
    """Runs an app: one consumer per handler."""

    def __init__(
        self,
        app: QWorker,
        config: WorkerConfig | SupportsWorkerConfig,
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
            config: Queues, start-up, payloads, consumers (or settings, turned into one).
            identity: Role, version, service.
            endpoint_url: Overrides the configured endpoint (the embedded server's).
            local: A local server: dummy credentials.
            middleware: Wraps every handler call (tracing).
            sinks: Receive every outcome (metrics, health).
            sleep: Injectable sleep.
        """
        if not app.handlers:
            raise ConfigError(f"app {app.name!r} has no handlers")
        self.app = app
        config = config if isinstance(config, WorkerConfig) else config.worker_config()
        self.config = config
        self.identity = identity
        self._endpoint_url = endpoint_url
        self._local = local
        self._middleware = list(middleware)
        self._sinks = list(sinks)
        self._sleep = sleep
        self._stopping = asyncio.Event()
        self.consumers: list[Consumer] = []
        self.ready = asyncio.Event()
        # Large payloads: fetched before decoding, deleted once a success's delete is confirmed;
        # the S3 client opens on first use.
        self.payloads = PayloadResolver(
            PayloadStore(
                functools.partial(
                    open_s3_client,
                    AwsTarget(config.region, endpoint_url or config.endpoint_url, local=local),
                ),
                bucket=config.payload_bucket,
                threshold_bytes=config.payload_threshold_bytes,
                always=config.payload_always,
            ),
            keep=config.payload_keep,
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
                self.config, endpoint_url=self._endpoint_url, local=self._local
            ) as client,
            open_sqs_client(
                self.config, endpoint_url=self._endpoint_url, local=self._local, control=True
            ) as control_client,
        ):
            resolved = []
            deadline = asyncio.get_running_loop().time() + self.config.startup_timeout_s
            endpoint = str(client.meta.endpoint_url)
            for spec in self.app.handlers.values():
                name, url = queue_of(
                    spec, queue_url=self.config.queue_url, queue_name=self.config.queue_name
                )
                found = await self._until_up(
                    functools.partial(
                        resolve, client, spec, name=name, url=url, control_client=control_client
                    ),
                    deadline,
                    endpoint,
                )
                if found is None:
                    return
                resolved.append(found)
            await self._check_payload_bucket()
            self.consumers = [self._consumer(r) for r in resolved]
            if self.stopping:
                self.ready.set()
                return
            producer = Producer.for_client(client, payloads=self.payloads.store)
            try:
                with self.app.use_producer(producer):
                    # Ready once the lifespan's resources are open; the lifespan closes only after
                    # every consumer stopped receiving and drained.
                    async with self.app.running():
                        self.ready.set()
                        async with asyncio.TaskGroup() as group:
                            for consumer in self.consumers:
                                group.create_task(
                                    consumer.run(),
                                    name=f"consume {consumer.transport.queue_name}",
                                )
            except BaseExceptionGroup as group:
                missing = [e for e in leaves(group) if isinstance(e, QueueDoesNotExist)]
                if not missing:
                    raise
                raise await which_is_missing(client, resolved, missing[0]) from None

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
        bucket = self.config.payload_bucket
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
        timeout_s = self.config.startup_timeout_s
        return ConfigError(
            f"queue server {endpoint} not reachable for {timeout_s:g} s at start-up ({error}); "
            "check QWORKER_ENDPOINT_URL (--endpoint-url) and the region, or raise "
            "QWORKER_STARTUP_TIMEOUT_S (--startup-timeout-s)"
        )

    def _consumer(self, resolved: Resolved) -> Consumer:
        policy = resolved.attributes.redrive_policy
        return build_consumer(
            resolved.transport,
            resolved.spec,
            identity=self.identity,
            config=self.config.consumer,
            queue_visibility_timeout_s=resolved.attributes.visibility_timeout_s,
            fifo=resolved.attributes.fifo,
            max_receive_count=policy.max_receive_count if policy else None,
            dead_letter=resolved.dead_letter,
            middleware=self._middleware,
            sinks=[*self._sinks, self.payloads],
            body=self.payloads.resolve,
            sleep=self._sleep,
            envelope=self.app.envelope,
            handler_middleware=self.app.middlewares,
        )
