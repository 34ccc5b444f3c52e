"""The embedded local SQS server: a worker with no queue configured runs against its own.

With no queue URL and no endpoint set, `qworker run` starts moto's SQS server in-process on
127.0.0.1, creates the handlers' queues, each with a dead-letter queue and a redrive policy, and
consumes. It is for trying handlers out with a few messages: moto is slow (tens of messages a
second) and can hand one message to two receivers under load; volume runs belong on LocalStack.

The server's endpoint is written to `.qworker/embedded.json`, so `qworker send` in another terminal
finds it without flags.
"""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, final

from qworker._aws import map_errors
from qworker.exceptions import ConfigError

__all__ = [
    "STATE_FILE",
    "EmbeddedSqs",
    "EmbeddedState",
    "create_queue_with_dlq",
    "dead_letter_name",
    "read_state",
]

log = logging.getLogger(__name__)

STATE_FILE: Final = Path(".qworker") / "embedded.json"
LOOPBACK: Final = "127.0.0.1"
DLQ_RETENTION_S: Final = 14 * 24 * 3600


def dead_letter_name(queue: str) -> str:
    """The dead-letter queue's name for `queue` (`orders` → `orders-dlq`, FIFO keeps `.fifo`)."""
    if queue.endswith(".fifo"):
        return f"{queue.removesuffix('.fifo')}-dlq.fifo"
    return f"{queue}-dlq"


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex((LOOPBACK, port)) != 0


@final
class EmbeddedSqs:
    """moto's server, in a thread of this process, on 127.0.0.1."""

    def __init__(self, port: int = 0, state_file: Path | None = STATE_FILE) -> None:
        """Prepare the server; `start()` it.

        Args:
            port: The port (0, or a busy one: any free port).
            state_file: Where to write the endpoint for `qworker send` (None: nowhere).
        """
        self._port = port if port and _port_free(port) else 0
        self._state_file = state_file
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.endpoint_url = ""

    def start(self) -> str:
        """Start the server and return its endpoint URL.

        Raises:
            ConfigError: moto is not installed.
        """
        self._server = _make_moto_server(self._port)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="embedded-sqs", daemon=True
        )
        self._thread.start()
        host, port = self._server.server_address[:2]
        self.endpoint_url = f"http://{host}:{port}"
        self.record_queues([])
        log.info(
            "embedded SQS server started (moto, for trying things out; use LocalStack for volume)",
            extra={"action": "embedded_started", "endpoint_url": self.endpoint_url},
        )
        return self.endpoint_url

    def record_queues(self, queues: list[str]) -> None:
        """Write the endpoint and the queues to the state file, for `qworker send` and `dlq`."""
        if self._state_file is None:
            return
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        state = {"endpoint_url": self.endpoint_url, "queues": queues}
        self._state_file.write_text(json.dumps(state))

    def stop(self) -> None:
        """Stop the server and remove the state file."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._state_file is not None:
            self._state_file.unlink(missing_ok=True)


def _make_moto_server(port: int) -> Any:  # noqa: ANN401 (werkzeug's server, untyped here)
    """Serve moto's WSGI app from a threaded werkzeug server on 127.0.0.1.

    moto's own request handler sends a second `Server` header (getmoto/moto#9930), which some
    aiohttp versions reject; this handler drops moto's copy.
    """
    try:
        from moto.moto_server.werkzeug_app import (  # noqa: PLC0415 (an optional extra)
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server  # noqa: PLC0415 (comes with moto[server])
    except ImportError:
        raise ConfigError(
            "the embedded SQS server needs moto: pip install 'qworker[local]', or set "
            "QWORKER_QUEUE_URL / QWORKER_ENDPOINT_URL to use a real server"
        ) from None

    class OneServerHeader(MotoRequestHandler):
        def send_header(self, keyword: str, value: str) -> None:
            if keyword.lower() != "server" or keyword == "Server":
                super().send_header(keyword, value)

    app = _AnswerErrors(DomainDispatcherApplication(create_backend_app))
    return make_server(LOOPBACK, port, app, threaded=True, request_handler=OneServerHeader)


_WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@final
class _AnswerErrors:
    """Answers a request moto fails on with an SQS error, logging one warning line.

    moto raises inside the server for actions it lacks (StartMessageMoveTask, for one); werkzeug
    would print the whole traceback into the worker's terminal and answer a bare 500, which the
    client retries. A missing action is answered `UnsupportedOperation` (HTTP 400, as SQS answers
    an action it does not take, so the client does not retry); any other failure `InternalFailure`
    (HTTP 500).
    """

    def __init__(self, app: _WsgiApp) -> None:
        self._app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        try:
            return self._app(environ, start_response)
        except Exception as exc:  # noqa: BLE001 (every failure is answered, none kills the server)
            return self._answer(environ, start_response, exc)

    @staticmethod
    def _answer(
        environ: dict[str, Any], start_response: Callable[..., Any], exc: Exception
    ) -> list[bytes]:
        operation = _operation(environ)
        unsupported = isinstance(exc, NotImplementedError)
        code = "UnsupportedOperation" if unsupported else "InternalFailure"
        reason = " ".join(str(exc).split()) or type(exc).__name__
        log.warning(
            "embedded SQS server (moto) %s %s: %s",
            "does not support" if unsupported else "failed on",
            operation,
            reason,
            extra={"action": "embedded_server_error", "operation": operation, "code": code},
        )
        body = json.dumps({"__type": f"com.amazonaws.sqs#{code}", "message": reason}).encode()
        status = "400 Bad Request" if unsupported else "500 Internal Server Error"
        headers = [
            ("Content-Type", "application/x-amz-json-1.0"),
            ("Content-Length", str(len(body))),
            ("x-amzn-query-error", f"AWS.SimpleQueueService.{code};Sender"),
        ]
        start_response(status, headers, sys.exc_info())
        return [body]


def _operation(environ: dict[str, Any]) -> str:
    """The SQS action a request asks for (JSON protocol's target header, or the query's Action)."""
    target = str(environ.get("HTTP_X_AMZ_TARGET", ""))
    if target:
        return target.rpartition(".")[2]
    query = urllib.parse.parse_qs(str(environ.get("QUERY_STRING", "")))
    return query.get("Action", ["an unnamed action"])[0]


@final
@dataclass(frozen=True, slots=True)
class EmbeddedState:
    """What a running embedded server wrote: its endpoint and its queues."""

    endpoint_url: str
    queues: tuple[str, ...] = ()


def read_state(state_file: Path = STATE_FILE) -> EmbeddedState | None:
    """The state of a running embedded server started from this directory, if any."""
    try:
        state = json.loads(state_file.read_text())
        return EmbeddedState(str(state["endpoint_url"]), tuple(state.get("queues", ())))
    except (OSError, ValueError, KeyError, TypeError):
        return None


async def create_queue_with_dlq(
    client: Any,  # noqa: ANN401 (aiobotocore is untyped)
    name: str,
    *,
    max_receive_count: int = 3,
    visibility_timeout_s: int = 30,
) -> str:
    """Create `name` and its dead-letter queue with a redrive policy; return the queue URL."""
    fifo = {"FifoQueue": "true"} if name.endswith(".fifo") else {}
    with map_errors("CreateQueue"):
        dlq = await client.create_queue(
            QueueName=dead_letter_name(name),
            Attributes={"MessageRetentionPeriod": str(DLQ_RETENTION_S), **fifo},
        )
        dlq_attrs = await client.get_queue_attributes(
            QueueUrl=dlq["QueueUrl"], AttributeNames=["QueueArn"]
        )
        redrive = {
            "deadLetterTargetArn": dlq_attrs["Attributes"]["QueueArn"],
            "maxReceiveCount": str(max_receive_count),
        }
        queue = await client.create_queue(
            QueueName=name,
            Attributes={
                "VisibilityTimeout": str(visibility_timeout_s),
                "RedrivePolicy": json.dumps(redrive),
                **fifo,
            },
        )
    return str(queue["QueueUrl"])
