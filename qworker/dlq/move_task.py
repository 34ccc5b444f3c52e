"""SQS's own redrive: StartMessageMoveTask, and ListMessageMoveTasks to follow its progress."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, final

from qworker._aws import map_errors
from qworker.exceptions import ServerError, TransportError

MOVE_TASK_POLL_S: Final = 1.0
MOVE_TASK_TIMEOUT_S: Final = 300.0
_RUNNING: Final = frozenset({"RUNNING", "CANCELLING"})


class MoveTaskUnsupported(TransportError):
    """The server does not support StartMessageMoveTask."""


@final
@dataclass(frozen=True, slots=True)
class MoveTaskStatus:
    """One entry of ListMessageMoveTasks."""

    status: str
    moved: int
    to_move: int | None = None
    failure_reason: str | None = None
    task_handle: str | None = None

    @classmethod
    def from_sqs(cls, raw: Mapping[str, Any]) -> MoveTaskStatus:
        """Build from a ListMessageMoveTasks result entry."""
        to_move = raw.get("ApproximateNumberOfMessagesToMove")
        return cls(
            status=str(raw.get("Status", "")),
            moved=int(raw.get("ApproximateNumberOfMessagesMoved", 0)),
            to_move=int(to_move) if to_move is not None else None,
            failure_reason=raw.get("FailureReason"),
            task_handle=raw.get("TaskHandle"),
        )

    @property
    def running(self) -> bool:
        """Whether the task is still moving messages."""
        return self.status in _RUNNING


# Codes servers answer with for an operation they lack; moto answers with a bare HTTP 500 instead.
_UNSUPPORTED_CODES: Final = frozenset(
    {
        "UnsupportedOperation",
        "AWS.SimpleQueueService.UnsupportedOperation",
        "InvalidAction",
        "NotImplemented",
        "UnknownOperationException",
    }
)


def _unsupported(operation: str, exc: TransportError) -> TransportError:
    response = getattr(exc.__cause__, "response", None)
    code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
    if isinstance(exc, ServerError) or code in _UNSUPPORTED_CODES:
        # The code alone: moto's message is a whole HTML error page.
        return MoveTaskUnsupported(f"the server does not support {operation} ({code or exc})")
    return exc


@final
class MoveTasks:
    """StartMessageMoveTask and ListMessageMoveTasks over an aiobotocore SQS client."""

    def __init__(self, client: Any) -> None:  # noqa: ANN401 (aiobotocore is untyped)
        """Use `client`, owned by the caller."""
        self._client = client

    async def start(
        self, *, source_arn: str, destination_arn: str, max_per_second: int | None = None
    ) -> str:
        """Start moving every message of `source_arn` to `destination_arn`; return the task handle.

        Raises:
            MoveTaskUnsupported: The server does not have StartMessageMoveTask.
            TransportError: The server refused (e.g. a task already runs for this DLQ).
        """
        params: dict[str, Any] = {"SourceArn": source_arn, "DestinationArn": destination_arn}
        if max_per_second is not None:
            params["MaxNumberOfMessagesPerSecond"] = max_per_second
        try:
            with map_errors("StartMessageMoveTask"):
                response = await self._client.start_message_move_task(**params)
        except TransportError as exc:
            raise _unsupported("StartMessageMoveTask", exc) from exc
        return str(response.get("TaskHandle", ""))

    async def recent(self, source_arn: str, *, max_results: int = 1) -> list[MoveTaskStatus]:
        """The most recent move tasks of a DLQ, newest first.

        Raises:
            MoveTaskUnsupported: The server does not have ListMessageMoveTasks.
        """
        try:
            with map_errors("ListMessageMoveTasks"):
                response = await self._client.list_message_move_tasks(
                    SourceArn=source_arn, MaxResults=max_results
                )
        except TransportError as exc:
            raise _unsupported("ListMessageMoveTasks", exc) from exc
        return [MoveTaskStatus.from_sqs(raw) for raw in response.get("Results", [])]


async def wait_move_task(
    move_tasks: MoveTasks,
    source_arn: str,
    *,
    timeout_s: float = MOVE_TASK_TIMEOUT_S,
    poll_s: float = MOVE_TASK_POLL_S,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> MoveTaskStatus | None:
    """Poll the newest move task of `source_arn` until it stops running or `timeout_s` passes."""
    status: MoveTaskStatus | None = None
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                tasks = await move_tasks.recent(source_arn)
                status = tasks[0] if tasks else None
                if status is None or not status.running:
                    return status
                await sleep(poll_s)  # the task runs on the server: there is nothing to await
    except TimeoutError:
        return status
