"""The botocore errors the AWS-boundary tests feed to `map_errors` (tests/test_aws.py, for
`qworker._aws`, and tests/test_transport.py, for the transport's re-export of it)."""

from __future__ import annotations

from typing import Final

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    ProxyConnectionError,
    ReadTimeoutError,
)

__all__ = ["CONNECTION_ERRORS", "client_error", "error_id"]

CONNECTION_ERRORS: Final[tuple[Exception, ...]] = (
    EndpointConnectionError(endpoint_url="http://127.0.0.1:9"),
    ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"),
    ConnectionClosedError(endpoint_url="http://127.0.0.1:9"),
    ReadTimeoutError(endpoint_url="http://127.0.0.1:9"),
    # What aiobotocore raises for any other aiohttp error (a reset mid-response, a bad payload).
    HTTPClientError(error=OSError("connection reset by peer")),
    ProxyConnectionError(proxy_url="http://proxy:3128", error=OSError("refused")),
    ConnectionRefusedError("refused"),
    ConnectionResetError("reset"),
)
"""Every way of not reaching the server: each must map to a transient `QueueUnavailable`."""


def client_error(
    code: str, status: int = 400, message: str = "it broke", *, operation: str = "ReceiveMessage"
) -> ClientError:
    """The `ClientError` botocore raises when the server answers `operation` with `code`."""
    response = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, operation)


def error_id(error: object) -> str:
    """A parametrised test's id for an error: its class name."""
    return type(error).__name__
