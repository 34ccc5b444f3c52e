"""Drain a queue until nothing is left on it, for tests that count where each message ended up.

One `run_until_empty()` does not prove that a real server's queue is done. It ends at the first
empty receive once nothing is held and no other receive is in flight, and that receive may have
been sent while a failed message was still being made visible again (ChangeMessageVisibility to
0): the server answers it before the change, the drain ends, and the message stays on the queue,
visible (on moto, in 5 of 120 drains of a single poison message on a busy machine). The redrive
policy then never moves it either: moto, LocalStack and SQS move a message to the dead-letter
queue only on a receive after its maxReceiveCount-th, which that drain never made.

`run_until_settled()` runs drains of fresh consumers until one receives nothing at all. Nothing
came back during that drain (it ran no handler), and every earlier drain settled each message it
held before returning, so its empty receives saw the whole queue: nothing is left visible on it,
and every message past maxReceiveCount met the receive that moves it. No drain may leave a message
unsettled: it would stay hidden for the visibility timeout, out of every receive's sight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from qworker.consumer import Consumer, ConsumerStatistics

SETTLE_TIMEOUT_S: Final = 60.0
"""Bound on all the drains together: each takes a few receives once the work is done."""


@dataclass
class Settled:
    """The statistics of every drain `run_until_settled` ran, the last one empty."""

    runs: list[ConsumerStatistics] = field(default_factory=list)

    def total(self, counter: str) -> int:
        """The sum of one `ConsumerStatistics` counter (e.g. `"failed"`) over every drain."""
        return sum(int(getattr(stats, counter)) for stats in self.runs)


async def run_until_settled(
    make_consumer: Callable[[], Consumer], *, timeout_s: float = SETTLE_TIMEOUT_S
) -> Settled:
    """Run `make_consumer().run_until_empty()` until a drain receives nothing (bounded).

    Raises:
        TimeoutError: Messages still came after `timeout_s`.
        AssertionError: A drain left a message unsettled (hidden, so no receive can prove it gone).
    """
    settled = Settled()
    async with asyncio.timeout(timeout_s):
        while True:
            consumer = make_consumer()
            await consumer.run_until_empty()
            stats = consumer.statistics()
            settled.runs.append(stats)
            assert stats.unsettled == 0, f"a drain left messages unsettled: {settled.runs}"
            if stats.received == 0:
                return settled
