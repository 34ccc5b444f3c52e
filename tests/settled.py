"""Drain a queue until nothing is left on it, for tests that count where each message ended up.

One `run_until_empty()` does not prove that a real server's queue is done. It ends at the first
empty receive once nothing is held and no other receive is in flight, and that receive may have
been sent while a failed message was still being made visible again (ChangeMessageVisibility to
0): the server answers it before the change, the drain ends, and the message stays on the queue,
visible (on moto, in 9 of 220 drains of a single poison message on a busy machine). The redrive
policy then never moves it either: moto, LocalStack and SQS move a message to the dead-letter
queue only on a receive after its maxReceiveCount-th, which that drain never made.

`run_until_settled()` runs drains of fresh consumers until one receives nothing at all. Nothing
came back during that drain (it ran no handler), and every earlier drain settled each message it
held before returning, so its empty receives saw the whole queue: nothing is left visible on it,
and every message past maxReceiveCount met the receive that moves it.

A message a drain could not settle (a failed ChangeMessageVisibility: seen once in 240 seeds of
tests/test_dlq.py on moto, whose request threads change a queue's message list without a lock)
stays hidden for the queue's visibility timeout, out of every receive's sight: that time is let
pass (`elapse`) before the next drain, so the drain that ends it all has seen the message back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from qworker.consumer import Consumer, ConsumerStatistics
from qworker.transport import QueueTransport

SETTLE_TIMEOUT_S: Final = 120.0
"""Bound on all the drains together: each takes a few receives once the work is done, and a
message left unsettled comes back after the visibility timeout (30 s on the test queues)."""


@dataclass
class Settled:
    """The statistics of every drain `run_until_settled` ran, the last one empty."""

    runs: list[ConsumerStatistics] = field(default_factory=list)

    def total(self, counter: str) -> int:
        """The sum of one `ConsumerStatistics` counter (e.g. `"failed"`) over every drain."""
        return sum(int(getattr(stats, counter)) for stats in self.runs)


async def run_until_settled(
    queue: QueueTransport,
    make_consumer: Callable[[], Consumer],
    *,
    elapse: Callable[[float], Awaitable[None]],
    timeout_s: float = SETTLE_TIMEOUT_S,
) -> Settled:
    """Run `make_consumer().run_until_empty()` until a drain receives nothing (bounded).

    Args:
        queue: The queue the consumers drain.
        make_consumer: A fresh consumer of `queue`.
        elapse: Lets time pass for the server (`Backend.elapse`: the fake's clock, or real time).
        timeout_s: The bound on it all.

    Raises:
        TimeoutError: Messages still came after `timeout_s`.
    """
    settled = Settled()
    visibility_timeout_s = (await queue.get_attributes()).visibility_timeout_s
    async with asyncio.timeout(timeout_s):
        while True:
            consumer = make_consumer()
            await consumer.run_until_empty()
            stats = consumer.statistics()
            settled.runs.append(stats)
            if stats.unsettled:
                # Hidden until the visibility timeout, counted from a receive before now.
                await elapse(visibility_timeout_s)
            elif stats.received == 0:
                return settled
