"""Large payloads through S3, in the AWS SQS Extended Client's pointer format.

A body too large for SQS (or every body, when asked) is put in an S3 bucket, and the message carries
a pointer instead: the body

    ["software.amazon.payloadoffloading.PayloadS3Pointer",{"s3BucketName":"b","s3Key":"k"}]

and the `ExtendedPayloadSize` message attribute (a `Number`: the payload's size in bytes). This is
what the Java extended client (`software.amazon.payloadoffloading.PayloadS3Pointer`) and the Python
extended client (`sqs_extended_client`) write and read, so qworker interoperates with both, either
side. On receive, a message carrying `ExtendedPayloadSize`, or the older clients'
`SQSLargePayloadSize`, is read as a pointer (the older class name
`com.amazon.sqs.javamessaging.MessageS3Pointer` too) and its object fetched before the handler
decodes the body: the handler, and the `Message` it may take, see the payload.

The object is deleted only once the message's delete was confirmed after a success, so nothing is
lost: a failed, retried or released message keeps its object for the next delivery, and a rejected
one keeps it for its dead-letter copy (which carries the same pointer). `keep=True` never deletes (a
bucket lifecycle rule then cleans up). A pointer whose object is gone (deleted after an earlier
delivery succeeded, or by a lifecycle rule) is rejected with a reason naming the object; an S3
outage fails the message, which is retried like any failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol, final

from qworker._aws import S3_PROFILE, AwsTarget, map_errors, open_client
from qworker.exceptions import MessageDecodeError, TransientTransportError, TransportError
from qworker.message import Message, MessageAttribute

__all__ = [
    "DEFAULT_THRESHOLD_BYTES",
    "LEGACY_POINTER_CLASS",
    "LEGACY_SIZE_ATTRIBUTE",
    "POINTER_CLASS",
    "SIZE_ATTRIBUTE",
    "Located",
    "PayloadError",
    "PayloadNotFound",
    "PayloadResolver",
    "PayloadStore",
    "PayloadUnavailable",
    "S3Pointer",
    "message_size",
    "open_s3_client",
    "pointer_of",
]

log = logging.getLogger(__name__)

POINTER_CLASS: Final = "software.amazon.payloadoffloading.PayloadS3Pointer"
"""The pointer's class name, first element of the pointer body."""

LEGACY_POINTER_CLASS: Final = "com.amazon.sqs.javamessaging.MessageS3Pointer"
"""The class name older Java clients wrote (read, never written)."""

SIZE_ATTRIBUTE: Final = "ExtendedPayloadSize"
"""The message attribute that marks a pointer body: the payload's size in bytes (a `Number`)."""

LEGACY_SIZE_ATTRIBUTE: Final = "SQSLargePayloadSize"
"""The marking attribute of older clients (read, never written)."""

DEFAULT_THRESHOLD_BYTES: Final = 262_144
"""Bodies (plus attributes) larger than this go through S3: SQS's long-standing 256 KiB limit."""

_MISSING_CODES: Final = frozenset({"NoSuchKey", "NoSuchBucket", "404"})


class PayloadError(TransportError):
    """S3 refused a payload operation (access denied, a bad bucket name, ...)."""


class PayloadNotFound(PayloadError):
    """A pointer's S3 object (or bucket) does not exist."""


class PayloadUnavailable(PayloadError, TransientTransportError):
    """S3 could not be reached, throttled, or failed on its side: worth trying again."""


@final
@dataclass(frozen=True, slots=True)
class S3Pointer:
    """Where a large payload is: an S3 bucket and key."""

    bucket: str
    key: str

    def __str__(self) -> str:
        """`s3://bucket/key`."""
        return f"s3://{self.bucket}/{self.key}"

    def to_body(self) -> str:
        """The message body, exactly as the Java extended client writes it (compact JSON)."""
        return json.dumps(
            [POINTER_CLASS, {"s3BucketName": self.bucket, "s3Key": self.key}],
            separators=(",", ":"),
        )

    @classmethod
    def from_body(cls, body: str) -> S3Pointer:
        """Parse a pointer body (either client's spelling).

        Raises:
            MessageDecodeError: The body is not a pointer.
        """
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = None
        if (
            isinstance(parsed, list)
            and len(parsed) == 2  # noqa: PLR2004 (class name and fields)
            and parsed[0] in {POINTER_CLASS, LEGACY_POINTER_CLASS}
            and isinstance(parsed[1], dict)
            and isinstance(parsed[1].get("s3BucketName"), str)
            and isinstance(parsed[1].get("s3Key"), str)
            and parsed[1]["s3BucketName"]
            and parsed[1]["s3Key"]
        ):
            return cls(parsed[1]["s3BucketName"], parsed[1]["s3Key"])
        raise MessageDecodeError(
            f"the message carries {SIZE_ATTRIBUTE} but its body is not an S3 pointer "
            f'(["{POINTER_CLASS}",{{"s3BucketName":...,"s3Key":...}}]): {body[:200]!r}'
        )


def pointer_of(message: Message) -> S3Pointer | None:
    """The S3 pointer a message carries, or None for an ordinary message.

    Raises:
        MessageDecodeError: The message is marked as a pointer, but its body is not one.
    """
    marks = message.message_attributes
    if SIZE_ATTRIBUTE not in marks and LEGACY_SIZE_ATTRIBUTE not in marks:
        return None
    return S3Pointer.from_body(message.body)


def message_size(body: str, attributes: Mapping[str, MessageAttribute]) -> int:
    """A message's size as SQS (and the extended clients) count it: body plus attributes, bytes."""
    size = len(body.encode())
    for name, attribute in attributes.items():
        value = attribute.value
        size += len(name.encode()) + len(attribute.data_type.encode())
        size += len(value) if isinstance(value, bytes) else len(value.encode())
    return size


@contextlib.contextmanager
def _s3_errors(operation: str, pointer: S3Pointer) -> Iterator[None]:
    """Map botocore errors to the `PayloadError` family (read like the SQS transport's errors)."""
    try:
        with map_errors(f"{operation} {pointer}"):
            yield
    except TransportError as exc:
        if exc.code in _MISSING_CODES:
            raise PayloadNotFound(f"{operation} {pointer}: {exc.code}", code=exc.code) from exc
        kind = PayloadUnavailable if isinstance(exc, TransientTransportError) else PayloadError
        raise kind(str(exc), code=exc.code) from exc


S3ClientFactory = Callable[[], contextlib.AbstractAsyncContextManager[Any]]
"""Opens an aiobotocore S3 client (an async context manager)."""


class Located(Protocol):
    """Where S3 is: a region and an optional custom endpoint (`QWorkerSettings` is one)."""

    @property
    def region(self) -> str | None:
        """The AWS region."""
        ...

    @property
    def endpoint_url(self) -> str | None:
        """A custom endpoint (LocalStack, moto, the embedded server), or None for AWS."""
        ...


@contextlib.asynccontextmanager
async def open_s3_client(
    target: AwsTarget | Located, *, endpoint_url: str | None = None, local: bool = False
) -> AsyncIterator[Any]:
    """Open an aiobotocore S3 client (`qworker._aws.S3_PROFILE`).

    A custom endpoint (LocalStack, moto) is addressed path-style: `http://host:port/bucket/key`.

    Args:
        target: Region, endpoint and credentials; or anything with a `region` and an
            `endpoint_url` (the settings, for the callers that still pass them).
        endpoint_url: Overrides the target's endpoint (the embedded server's); not with an
            `AwsTarget`.
        local: Use dummy credentials (a local server does not check them); not with an
            `AwsTarget`.
    """
    if not isinstance(target, AwsTarget):
        target = AwsTarget(target.region, endpoint_url or target.endpoint_url, local=local)
    elif endpoint_url is not None or local:
        raise TypeError("endpoint_url and local belong in the AwsTarget")
    async with open_client("s3", target, S3_PROFILE) as client:
        yield client


@final
class PayloadStore:
    """Puts, gets and deletes payload objects; opens its S3 client on first use.

    Opening nothing until a large payload shows up keeps a worker that never sees one free of an
    S3 client. `aclose()` closes the client, if one was opened.
    """

    def __init__(
        self,
        open_client: S3ClientFactory,
        *,
        bucket: str | None = None,
        threshold_bytes: int = DEFAULT_THRESHOLD_BYTES,
        always: bool = False,
        key_prefix: str = "",
    ) -> None:
        """Create a store.

        Args:
            open_client: Opens the S3 client (e.g. `functools.partial(open_s3_client, target)`).
            bucket: Where the producer puts large payloads (None: it never offloads).
            threshold_bytes: A message (body plus attributes) larger than this is offloaded.
            always: Offload every message, whatever its size.
            key_prefix: Prepended to each new object's key (a random UUID).
        """
        if threshold_bytes < 0:
            raise ValueError("threshold_bytes must not be negative")
        self.bucket = bucket
        self.threshold_bytes = threshold_bytes
        self.always = always
        self.key_prefix = key_prefix
        self._open_client = open_client
        self._client: Any = None
        self._stack = contextlib.AsyncExitStack()
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        """Show the bucket and threshold."""
        return (
            f"PayloadStore(bucket={self.bucket!r}, threshold_bytes={self.threshold_bytes}, "
            f"always={self.always})"
        )

    def offloads(self, size: int) -> bool:
        """Whether a message of `size` bytes goes through S3."""
        return self.bucket is not None and (self.always or size > self.threshold_bytes)

    async def _s3(self) -> Any:  # noqa: ANN401 (aiobotocore is untyped)
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    self._client = await self._stack.enter_async_context(self._open_client())
        return self._client

    async def check_bucket(self) -> None:
        """Check that the bucket exists and can be reached (HeadBucket).

        Raises:
            PayloadNotFound: No such bucket.
            PayloadError: Access denied, or another refusal.
            PayloadUnavailable: S3 could not be reached.
        """
        if self.bucket is None:
            return
        client = await self._s3()
        with _s3_errors("HeadBucket", S3Pointer(self.bucket, "")):
            await client.head_bucket(Bucket=self.bucket)

    async def put(self, body: str) -> S3Pointer:
        """Store a payload under a new key in the bucket; return its pointer.

        Raises:
            ValueError: The store has no bucket.
            TransportError: S3 refused or could not be reached.
        """
        if self.bucket is None:
            raise ValueError("no payload bucket: set QWORKER_PAYLOAD_BUCKET (--payload-bucket)")
        pointer = S3Pointer(self.bucket, f"{self.key_prefix}{uuid.uuid4()}")
        client = await self._s3()
        with _s3_errors("PutObject", pointer):
            await client.put_object(Bucket=pointer.bucket, Key=pointer.key, Body=body.encode())
        return pointer

    async def get(self, pointer: S3Pointer) -> str:
        """Fetch a payload.

        Raises:
            PayloadNotFound: The object does not exist.
            TransportError: S3 refused or could not be reached.
        """
        client = await self._s3()
        with _s3_errors("GetObject", pointer):
            response = await client.get_object(Bucket=pointer.bucket, Key=pointer.key)
            async with response["Body"] as stream:
                data: bytes = await stream.read()
        try:
            return data.decode()
        except UnicodeDecodeError:
            raise MessageDecodeError(f"payload {pointer} is not UTF-8 text") from None

    async def delete(self, pointer: S3Pointer) -> None:
        """Delete a payload's object.

        Raises:
            TransportError: S3 refused or could not be reached.
        """
        client = await self._s3()
        with _s3_errors("DeleteObject", pointer):
            await client.delete_object(Bucket=pointer.bucket, Key=pointer.key)

    async def aclose(self) -> None:
        """Close the S3 client, if one was opened."""
        await self._stack.aclose()
        self._client = None


from qworker.payload_resolver import PayloadResolver  # noqa: E402 (it imports this module)
