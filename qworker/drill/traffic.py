"""The drill's traffic: a steady mix of orders, payments and e-mails, sent at a fixed rate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from typing import Final, final

from qworker.producer import send_bodies
from qworker.transport import SqsTransport

MIX: Final = (("order", 0.4), ("payment", 0.4), ("email", 0.2))
"""The traffic: kinds of event and their shares."""
JPY_SHARE: Final = 0.1
"""The share of payments in yen: the ones the defective version fails."""

SEND_TICK_S: Final = 0.05
"""The producer sends a small batch every tick: a steady stream, as real traffic arrives."""


def drill_body(event_id: str, rng: random.Random) -> str:
    """One event of the drill's traffic, as a JSON body `qworker.drill.handlers` accepts.

    Args:
        event_id: The event's unique id.
        rng: Chooses the kind, amount and currency.
    """
    kind = rng.choices([k for k, _ in MIX], weights=[w for _, w in MIX])[0]
    if kind == "payment":
        currency = "JPY" if rng.random() < JPY_SHARE else rng.choice(("EUR", "USD", "GBP"))
    else:
        currency = rng.choice(("EUR", "USD"))
    amount = 0 if kind == "email" else rng.randrange(100, 500_000)
    return json.dumps(
        {
            "event_id": event_id,
            "kind": kind,
            "amount_cents": amount,
            "currency": currency,
        }
    )


@final
class Producer:
    """Sends the drill's traffic at a steady rate until stopped."""

    def __init__(self, *, rate: float, run_id: str, seed: int | None) -> None:
        """Send `rate` messages per second; ids are `<run_id>-<n>`."""
        self.rate = rate
        self.run_id = run_id
        self.sent: list[str] = []
        self._rng = random.Random(seed)  # noqa: S311 (traffic, not security)
        self._batch = max(1, min(10, round(rate * SEND_TICK_S)))

    async def run(self, transport: SqsTransport, stop: asyncio.Event) -> None:
        """Send until `stop` is set.

        Raises:
            TransportError: A message could not be sent.
        """
        loop = asyncio.get_running_loop()
        period = self._batch / self.rate
        next_at = loop.time()
        while not stop.is_set():
            ids = [f"{self.run_id}-{len(self.sent) + i:06d}" for i in range(self._batch)]
            await send_bodies(transport, [drill_body(i, self._rng) for i in ids])
            self.sent.extend(ids)
            next_at += period
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
