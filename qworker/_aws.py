"""The one AWS boundary: every AWS client is made here, and every botocore error is mapped here.

Clients: `open_client()` opens an aiobotocore client (an async context manager) for the worker,
the producer, the payload store, local metrics publishing and the DLQ tools; `sync_client()` builds
a boto3 client for the synchronous tools (the canary judge's reads, the drill). Both take an
`AwsTarget` (region, endpoint, whether the server is local and takes dummy credentials) and a
`ClientProfile` (timeouts, retries, connection pool), and stamp the user agent with
`qworker/<version>`; nothing else in the package calls `create_client` or `boto3.client`.

Errors: `map_errors()` turns botocore's exceptions raised inside it into qworker's
`TransportError` family (`qworker.exceptions`), so callers tell a transient outage (back off, try
again) from a lasting error without importing botocore; the server's error code stays on the
exception as `.code`. `ERROR_CODES` is the table of the codes this mapping claims.

This module is internal: its names may change between releases.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, final

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ProxyConnectionError,
    ReadTimeoutError,
)

from qworker.exceptions import (
    AccessDenied,
    BadRequest,
    InvalidReceiptHandle,
    QueueDoesNotExist,
    QueueUnavailable,
    ServerError,
    Throttled,
    TransportError,
)

__all__ = [
    "CLOUDWATCH_PROFILE",
    "CONTROL_CONNECT_TIMEOUT_S",
    "CONTROL_READ_TIMEOUT_S",
    "ERROR_CODES",
    "S3_PROFILE",
    "AwsTarget",
    "ClientProfile",
    "error_class",
    "map_errors",
    "open_client",
    "sqs_profile",
    "sync_client",
    "user_agent",
]

LOCAL_CREDENTIALS: Final = {"aws_access_key_id": "test", "aws_secret_access_key": "test"}
"""A local server (LocalStack, moto, the embedded server) does not check credentials."""

# Error codes we claim to handle, and the qworker class each maps to. Both the query-protocol codes
# and the JSON-protocol (`AWS.SimpleQueueService.*`) spellings appear, as servers use either.
ERROR_CODES: Final[Mapping[str, type[TransportError]]] = {
    "AWS.SimpleQueueService.NonExistentQueue": QueueDoesNotExist,
    "QueueDoesNotExist": QueueDoesNotExist,
    "AccessDenied": AccessDenied,
    "AccessDeniedException": AccessDenied,
    "InvalidClientTokenId": AccessDenied,
    "UnrecognizedClientException": AccessDenied,
    "ReceiptHandleIsInvalid": InvalidReceiptHandle,
    "InvalidParameterValue": BadRequest,
    "InvalidParameterCombination": BadRequest,
    "MissingParameter": BadRequest,
    "InvalidAttributeName": BadRequest,
    "InvalidMessageContents": BadRequest,
    "AWS.SimpleQueueService.BatchEntryIdsNotDistinct": BadRequest,
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest": BadRequest,
    "AWS.SimpleQueueService.UnsupportedOperation": BadRequest,
    "UnsupportedOperation": BadRequest,
    "ThrottlingException": Throttled,
    "Throttling": Throttled,
    "RequestThrottled": Throttled,
    "OverLimit": Throttled,
    "KmsThrottled": Throttled,
    "InternalError": ServerError,
    "InternalFailure": ServerError,
    "ServiceUnavailable": ServerError,
}

_CONNECTION_ERRORS: Final = (
    EndpointConnectionError,
    ConnectTimeoutError,
    ConnectionClosedError,
    ReadTimeoutError,
    HTTPClientError,  # aiobotocore's wrapper for any other aiohttp error
    ProxyConnectionError,
    ConnectionError,
)


def error_class(code: str, http_status: int) -> type[TransportError]:
    """The qworker class for a server error: by its code, else by its HTTP status."""
    known = ERROR_CODES.get(code)
    if known is not None:
        return known
    if http_status >= 500:  # noqa: PLR2004 (HTTP's server-error range)
        return ServerError
    if http_status == 429:  # noqa: PLR2004 (HTTP's Too Many Requests)
        return Throttled
    return TransportError


def map_errors(operation: str) -> _ErrorMap:
    """Translate botocore errors raised inside the `with` block into qworker's `TransportError`s.

    Works around synchronous and asynchronous calls alike. The server's error code, if any, is
    the raised error's `code`. (A small class, not a generator context manager: every SQS call
    goes through it.)

    Args:
        operation: The AWS operation (and what it acted on), for the error's message.

    Raises:
        TransportError: A subclass naming what went wrong.
    """
    return _ErrorMap(operation)


@final
class _ErrorMap:
    __slots__ = ("operation",)

    def __init__(self, operation: str) -> None:
        self.operation = operation

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, _type: type[BaseException] | None, exc: BaseException | None, _tb: object
    ) -> None:
        if exc is None:
            return
        operation = self.operation
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            text = f"{operation}: {code}: {error.get('Message', '')}".rstrip(": ")
            raise error_class(code, status)(text, code=code) from exc
        if isinstance(exc, _CONNECTION_ERRORS):
            raise QueueUnavailable(f"{operation}: {exc}") from exc
        if isinstance(exc, NoCredentialsError):
            raise AccessDenied(
                f"{operation}: no AWS credentials found: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, a profile, or a task role"
            ) from exc
        if isinstance(exc, BotoCoreError):
            # Anything else botocore raises (SSL, parameter validation, ...) is not worth retrying.
            raise TransportError(f"{operation}: {exc}") from exc


@final
@dataclass(frozen=True, slots=True)
class AwsTarget:
    """Where the calls go, and as whom.

    Attributes:
        region: The AWS region (None: botocore's own resolution, e.g. `AWS_REGION`).
        endpoint_url: A custom endpoint (LocalStack, moto, the embedded server); None for AWS.
        local: The server is local and takes dummy credentials; otherwise the default
            credential chain (environment, profile, task role) is used.
    """

    region: str | None = None
    endpoint_url: str | None = None
    local: bool = False

    def credentials(self) -> dict[str, str]:
        """The credential arguments of a client: dummy ones for a local server, else none."""
        return dict(LOCAL_CREDENTIALS) if self.local else {}


@final
@dataclass(frozen=True, slots=True)
class ClientProfile:
    """How a client behaves: timeouts, retries, connections.

    Attributes:
        connect_timeout_s: Connect timeout of each attempt.
        read_timeout_s: Read timeout of each attempt (a long poll must fit in it).
        retries: Retries after a call's first attempt (botocore's standard retry mode, whose
            `max_attempts` setting counts retries: 2 makes 3 attempts in all).
        max_pool_connections: Pooled connections (async clients: every call in flight needs one).
        fresh_connections: Open a new connection per call instead of pooling (async clients), so
            a pooled connection that silently died cannot hang a call.
        extra: Further `botocore.config.Config` arguments (e.g. `s3` addressing).
    """

    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    retries: int = 2
    max_pool_connections: int = 10
    fresh_connections: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def config_arguments(self) -> dict[str, Any]:
        """The arguments of botocore's `Config` (and aiobotocore's `AioConfig`)."""
        return {
            "connect_timeout": self.connect_timeout_s,
            "read_timeout": self.read_timeout_s,
            "retries": {"mode": "standard", "max_attempts": self.retries},
            "max_pool_connections": self.max_pool_connections,
            "user_agent_extra": user_agent(),
            **self.extra,
        }


CONTROL_CONNECT_TIMEOUT_S: Final = 2
"""Connect timeout of visibility calls (the heartbeat's extensions, releases)."""

CONTROL_READ_TIMEOUT_S: Final = 5
"""Read timeout of visibility calls: far below any visibility timeout worth extending."""

S3_PROFILE: Final = ClientProfile(connect_timeout_s=5, read_timeout_s=60, retries=3)
"""Large payloads: a minute to move one, three retries."""

CLOUDWATCH_PROFILE: Final = ClientProfile(connect_timeout_s=5, read_timeout_s=10, retries=2)
"""Local metrics publishing: best effort, short."""


def sqs_profile(
    *, pollers: int = 1, wait_time_s: float = 20.0, control: bool = False
) -> ClientProfile:
    """The profile of a long-lived SQS client.

    Args:
        pollers: Receive loops per queue: every poller and every batch call in flight needs a
            connection of the pool.
        wait_time_s: The long poll's wait: the read timeout must outlast it.
        control: The client for visibility calls: short connect and read timeouts of their own
            and a fresh connection per call (retries included), so a pooled connection that
            silently died cannot hang an extension.
    """
    pool = max(10, pollers * 2 + 16)
    if control:
        return ClientProfile(
            connect_timeout_s=CONTROL_CONNECT_TIMEOUT_S,
            read_timeout_s=CONTROL_READ_TIMEOUT_S,
            retries=3,
            max_pool_connections=pool,
            fresh_connections=True,
        )
    return ClientProfile(
        connect_timeout_s=5, read_timeout_s=wait_time_s + 15, retries=3, max_pool_connections=pool
    )


@functools.cache
def user_agent() -> str:
    """`qworker/<version>`, appended to botocore's user agent on every call."""
    try:
        version = importlib.metadata.version("qworker")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover (run from a bare checkout)
        version = "unknown"
    return f"qworker/{version}"


def _path_style(service: str, target: AwsTarget) -> dict[str, Any]:
    # A custom endpoint serves buckets on its path: http://host:port/bucket/key.
    if service == "s3" and target.endpoint_url:
        return {"s3": {"addressing_style": "path"}}
    return {}


@contextlib.asynccontextmanager
async def open_client(
    service: str, target: AwsTarget, profile: ClientProfile | None = None
) -> AsyncIterator[Any]:
    """Open an aiobotocore client; it closes when the block ends.

    Args:
        service: The botocore service name (`sqs`, `s3`, `cloudwatch`).
        target: Region, endpoint, credentials.
        profile: Timeouts, retries, connections (default: `ClientProfile()`).
    """
    from aiobotocore.config import AioConfig  # noqa: PLC0415 (light commands never load it)
    from aiobotocore.session import get_session  # noqa: PLC0415

    profile = profile or ClientProfile()
    arguments = {**_path_style(service, target), **profile.config_arguments()}
    if profile.fresh_connections:
        arguments["connector_args"] = {"force_close": True, "keepalive_timeout": None}
    async with get_session().create_client(
        service,
        region_name=target.region,
        endpoint_url=target.endpoint_url,
        config=AioConfig(**arguments),
        **target.credentials(),
    ) as client:
        yield client


def sync_client(service: str, target: AwsTarget, profile: ClientProfile | None = None) -> Any:  # noqa: ANN401 (boto3 is untyped)
    """Build a boto3 client (it needs no closing).

    Args:
        service: The botocore service name (`cloudwatch`, `sqs`, `ecs`).
        target: Region, endpoint, credentials.
        profile: Timeouts, retries, connections (default: `ClientProfile()`; `fresh_connections`
            does not apply).
    """
    import boto3  # noqa: PLC0415 (only the synchronous tools load it)
    import botocore.config  # noqa: PLC0415

    profile = profile or ClientProfile()
    arguments = {**_path_style(service, target), **profile.config_arguments()}
    session = boto3.session.Session(region_name=target.region, **target.credentials())
    return session.client(
        service, endpoint_url=target.endpoint_url, config=botocore.config.Config(**arguments)
    )
