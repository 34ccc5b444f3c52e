"""The canary drill's handler: a good version and a defective one of the same code.

`qworker drill` runs this module twice on one queue: the primary with `QWORKER_VERSION=v1` and
the canary with `v2` (healthy) or `v2-defect`. The version picks the behaviour:

| version | behaviour |
| --- | --- |
| `v1`, `v2` | every event succeeds, except a baseline of transient downstream errors (1%) |
| `v2-defect` | as `v2`, plus a bug: payments in JPY (10% of payments) fail, every time |

The defect is the kind a canary exists for: one input class of one message type, invisible in a
unit test that only tries euros. The transient errors fail a random attempt, so a retry succeeds.

Every attempt is appended, as one JSON line, to the file named by `DRILL_LEDGER` (when set), so
the drill can check that every message it sent succeeded exactly as the queue says.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import dataclass
from typing import Final, Literal

from pydantic import BaseModel, Field

from qworker import Message

__all__ = ["BEHAVIOURS", "Behaviour", "DrillEvent", "handle", "process"]

ZERO_DECIMAL_CURRENCIES: Final = frozenset({"JPY", "KRW"})


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How one version of the handler behaves."""

    transient_failure_rate: float
    zero_decimal_bug: bool = False


BEHAVIOURS: Final = {
    "v1": Behaviour(transient_failure_rate=0.01),
    "v2": Behaviour(transient_failure_rate=0.01),
    "v2-defect": Behaviour(transient_failure_rate=0.01, zero_decimal_bug=True),
}
"""The handler's versions, by `QWORKER_VERSION`."""


class DrillEvent(BaseModel):
    """One event of the drill's traffic."""

    event_id: str = Field(min_length=1)
    kind: Literal["order", "payment", "email"]
    amount_cents: int = Field(ge=0)
    currency: str = Field(min_length=3, max_length=3)


class DownstreamTimeoutError(RuntimeError):
    """A transient failure: the next attempt will most likely succeed."""


class LedgerRejectedError(RuntimeError):
    """The v2 defect: the payment ledger refuses a mis-scaled amount."""


def _behaviour() -> Behaviour:
    version = os.environ.get("QWORKER_VERSION", "v1")
    try:
        return BEHAVIOURS[version]
    except KeyError:
        raise RuntimeError(
            f"handlers.drill has no version {version!r}; QWORKER_VERSION must be one of "
            f"{', '.join(BEHAVIOURS)}"
        ) from None


BEHAVIOUR: Final = _behaviour()  # checked at import: a bad version fails at start-up
_ROLE: Final = os.environ.get("QWORKER_DEPLOYMENT_ROLE", "primary")
_VERSION: Final = os.environ.get("QWORKER_VERSION", "v1")
_LEDGER: Final = os.environ.get("DRILL_LEDGER")


def _record(event: DrillEvent, message: Message, outcome: str) -> None:
    if not _LEDGER:
        return
    line = json.dumps(
        {
            "event_id": event.event_id,
            "message_id": message.message_id,
            "receive_count": message.receive_count,
            "role": _ROLE,
            "version": _VERSION,
            "outcome": outcome,
        }
    )
    # One O_APPEND write per line: lines from several worker processes never interleave.
    fd = os.open(_LEDGER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _scaled_amount(event: DrillEvent, behaviour: Behaviour) -> int:
    """The amount in the currency's minor units; the v2 defect scales zero-decimal ones wrongly."""
    if event.currency in ZERO_DECIMAL_CURRENCIES and behaviour.zero_decimal_bug:
        return event.amount_cents * 100
    return event.amount_cents


def process(event: DrillEvent, behaviour: Behaviour, draw: float) -> None:
    """What one version does with one event; `draw` (uniform in [0, 1)) decides transient errors.

    Raises:
        DownstreamTimeoutError: A transient failure (any version, rarely).
        LedgerRejectedError: The defect (v2-defect, payments in zero-decimal currencies).
    """
    if draw < behaviour.transient_failure_rate:
        raise DownstreamTimeoutError(f"downstream timed out on {event.event_id}")
    if event.kind == "payment" and _scaled_amount(event, behaviour) != event.amount_cents:
        raise LedgerRejectedError(
            f"ledger rejected {event.event_id}: {event.currency} amount off by 100x"
        )


async def handle(event: DrillEvent, message: Message) -> None:
    """Process one event as the running version (`QWORKER_VERSION`) would, and log the attempt.

    Raises:
        DownstreamTimeoutError: A transient failure (any version, rarely).
        LedgerRejectedError: The defect (v2-defect, payments in zero-decimal currencies).
    """
    await asyncio.sleep(random.uniform(0.002, 0.008))  # noqa: S311 (simulated work, not security)
    try:
        process(event, BEHAVIOUR, random.random())  # noqa: S311 (simulated errors, not security)
    except RuntimeError:
        _record(event, message, "failed")
        raise
    _record(event, message, "succeeded")
