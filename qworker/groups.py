"""FIFO groups: each message group's messages run in order, through one chain per group.

SQS hands out a FIFO group's messages in order and none while another of the group is in flight,
so a worker sees a group's messages together, in order. `GroupChains` keeps one chain (a queue and
the task running it) per group: messages run one after another, and when one fails (or asks for a
retry) the rest of the chain is released rather than run out of order. Messages of the group that
arrive while the chain runs (a lax server may hand them out) join its end.

A chain that stops (a failure, shutdown) is detached before it releases the rest, so whatever
arrives after that, the failed message's redelivery included, starts a new chain instead of
joining one that is being released.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, final

from qworker.heartbeat import Held
from qworker.outcome import Outcome

__all__ = ["GroupChains"]

_STOPS_GROUP: Final = frozenset({Outcome.FAILED, Outcome.RETRIED})
"""Outcomes that leave the message on the queue: the rest of its group must wait for it."""


@final
class GroupChains:
    """The running chains of one consumer's FIFO groups."""

    def __init__(
        self,
        *,
        process: Callable[[Held], Awaitable[Outcome]],
        release: Callable[[Held, str | None], Awaitable[None]],
        stopping: Callable[[], bool],
    ) -> None:
        """Run messages with `process`, let them go with `release`.

        Args:
            process: Runs one message to its settled outcome (on a cancel it releases the
                message itself and re-raises).
            release: Makes one held message visible again, with a reason.
            stopping: Whether the consumer is shutting down (the rest is released).
        """
        self._process = process
        self._release = release
        self._stopping = stopping
        self._chains: dict[str | None, deque[Held]] = {}

    def __len__(self) -> int:
        """Return how many groups have a running chain."""
        return len(self._chains)

    def add(self, held: Held) -> Coroutine[Any, Any, None] | None:
        """Queue a message on its group's chain; return a new chain's runner to spawn, if any."""
        group_id = held.message.group_id
        chain = self._chains.get(group_id)
        if chain is not None:
            chain.append(held)
            return None
        chain = self._chains[group_id] = deque([held])
        return self._run(group_id, chain)

    async def _run(self, group_id: str | None, chain: deque[Held]) -> None:
        try:
            while chain:
                held = chain.popleft()
                if self._stopping():
                    await self._release_rest(group_id, chain, held, None)
                    return
                try:
                    outcome = await self._process(held)
                except asyncio.CancelledError:
                    await self._release_rest(group_id, chain, None, "cancelled at shutdown")
                    raise
                if outcome in _STOPS_GROUP:
                    await self._release_rest(group_id, chain, None, "earlier message failed")
                    return
        finally:
            # The chain is empty here, with no await since the last look: nothing is left behind.
            self._detach(group_id, chain)

    def _detach(self, group_id: str | None, chain: deque[Held]) -> None:
        if self._chains.get(group_id) is chain:
            del self._chains[group_id]

    async def _release_rest(
        self, group_id: str | None, chain: deque[Held], head: Held | None, error: str | None
    ) -> None:
        self._detach(group_id, chain)
        if head is not None:
            await self._release(head, error)
        while chain:
            await self._release(chain.popleft(), error)
