"""The consumer's side of large payloads: fetch before decoding, delete after a confirmed success.

See `qworker.payloads` for the pointer format and the store; `qworker.payloads` re-exports
`PayloadResolver`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Final, final

from qworker.exceptions import MessageDecodeError, TransportError
from qworker.message import Message
from qworker.outcome import Outcome, OutcomeRecord
from qworker.payloads import PayloadNotFound, PayloadStore, S3Pointer, pointer_of

__all__ = ["CLOSE_TIMEOUT_S", "PayloadResolver"]

log = logging.getLogger("qworker.payloads")  # the logger these lines always had

CLOSE_TIMEOUT_S: Final = 10.0
"""How long a stopping worker waits for the deletes of payload objects still running."""


@final
class PayloadResolver:
    """The consumer's side: fetch pointed-to payloads before decoding, delete after success.

    `resolve` is the dispatcher's body step; the resolver is also an outcome sink: once a
    message's outcome was settled, it deletes the object of a success whose delete was confirmed.
    `aclose()` waits for the deletes still running.
    """

    def __init__(self, store: PayloadStore, *, keep: bool = False) -> None:
        """Create a resolver.

        Args:
            store: Fetches and deletes the objects.
            keep: Never delete an object (a bucket lifecycle rule cleans up).
        """
        self.store = store
        self.keep = keep
        self.deleted = 0
        self._pending: dict[str, tuple[S3Pointer, int]] = {}
        self._deletes: set[asyncio.Task[None]] = set()

    async def resolve(self, message: Message) -> Message:
        """Return the message with its payload as body (the message itself when not a pointer).

        Raises:
            MessageDecodeError: A malformed pointer, or a payload that is gone (the message is
                rejected with the reason).
            TransportError: S3 could not be reached (the message fails and is retried).
        """
        pointer = pointer_of(message)
        if pointer is None:
            return message
        try:
            body = await self.store.get(pointer)
        except PayloadNotFound as exc:
            raise MessageDecodeError(
                f"large payload {pointer} not found (deleted after an earlier delivery "
                f"succeeded, or by a lifecycle rule): {exc}"
            ) from None
        held, count = self._pending.get(message.message_id, (pointer, 0))
        self._pending[message.message_id] = (held, count + 1)
        return replace(message, body=body)

    def record(self, record: OutcomeRecord) -> None:
        """Take a settled outcome: delete the object of a confirmed success."""
        entry = self._pending.get(record.message_id)
        if entry is None:
            return
        pointer, count = entry
        if count > 1:
            self._pending[record.message_id] = (pointer, count - 1)
        else:
            del self._pending[record.message_id]
        if self.keep or record.outcome is not Outcome.SUCCEEDED or not record.settled:
            return
        task = asyncio.create_task(self._delete(pointer, record), name=f"delete {pointer}")
        self._deletes.add(task)
        task.add_done_callback(self._deletes.discard)

    async def _delete(self, pointer: S3Pointer, record: OutcomeRecord) -> None:
        try:
            await self.store.delete(pointer)
        except TransportError as exc:
            log.warning(
                "large payload's object not deleted after its message succeeded; a bucket "
                "lifecycle rule must clean it up",
                extra={
                    "action": "payload_delete_failed",
                    "queue": record.queue,
                    "message_id": record.message_id,
                    "object": str(pointer),
                    "error": str(exc),
                },
            )
            return
        self.deleted += 1

    async def wait_deletes(self) -> None:
        """Wait until the deletes started so far are done."""
        while self._deletes:
            await asyncio.gather(*self._deletes, return_exceptions=True)

    async def aclose(self) -> None:
        """Finish the deletes (for at most `CLOSE_TIMEOUT_S`), then close the store."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                await self.wait_deletes()
        except TimeoutError:
            log.warning(
                "large payloads' objects still being deleted at shutdown were left to the "
                "bucket's lifecycle rule",
                extra={"action": "payload_delete_abandoned", "count": len(self._deletes)},
            )
            for task in self._deletes:
                task.cancel()
        await self.store.aclose()
