"""The canary drill's handler: a good version and a defective one of the same code.

`qworker drill` runs this module (`qworker run qworker.drill.handlers`; `handlers.drill` in a
source checkout is the same module under its older name) twice on one queue: the primary with
`QWORKER_VERSION=v1` and the canary with `v2` (healthy) or one of the defective versions. The
version picks the behaviour:

| version | behaviour |
| --- | --- |
| `v1`, `v2`, `v3` | every event succeeds, except a baseline of transient downstream errors (1%) |
| `v2-defect` | as `v2`, plus a bug: payments in JPY (10% of payments) fail, every time |
| `v2-rejects` | as `v2`, plus a stricter schema that rejects (`Reject`) every GBP payment (~12%) |
| `v2-slow` | as `v2`, but six times slower on every event |
| `v2-crash` | starts and reports ready, then the process dies on the first event it takes |
| `v2-scale` | as `v2` in a canary; as a primary (more pollers, the whole load) 30% of events fail |

The defects are the kind a canary exists for: one input class of one message type, invisible in a
unit test that only tries euros; a verdict the canary is wrong about (`Reject`); a slowdown; a
crash loop. The transient errors fail a random attempt, so a retry succeeds.

`DRILL_BEHAVIOUR`, when set, names the behaviour instead of `QWORKER_VERSION` (a release rehearsal
runs image tags, and maps each tag to the code it was built from). While the file named by
`DRILL_OUTAGE_FILE` exists, every version fails that share of attempts (the file holds a number
between 0 and 1): a shared downstream outage, switched on and off without restarting anyone.

Every attempt is appended, as one JSON line, to the file named by `DRILL_LEDGER` (when set), so
the drill can check that every message it sent succeeded exactly as the queue says. A line holds
the delivery's receive count and its hand-back hops and prior receives, so the audit counts as
first attempts only true first deliveries, as the worker's metrics do.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, Field

from qworker import Message, Reject

__all__ = [
    "BEHAVIOURS",
    "CRASH_EXIT_CODE",
    "WORK_S",
    "Behaviour",
    "DownstreamTimeoutError",
    "DrillEvent",
    "LedgerRejectedError",
    "handle",
    "outage_rate",
    "process",
]

ZERO_DECIMAL_CURRENCIES: Final = frozenset({"JPY", "KRW"})


@dataclass(frozen=True, slots=True)
class Behaviour:
    """How one version of the handler behaves."""

    transient_failure_rate: float
    zero_decimal_bug: bool = False
    rejects_currency: str | None = None
    slowdown: float = 1.0
    crashes: bool = False
    primary_failure_rate: float = 0.0  # a defect that only shows in the primary role


BEHAVIOURS: Final = {
    "v1": Behaviour(transient_failure_rate=0.01),
    "v2": Behaviour(transient_failure_rate=0.01),
    "v3": Behaviour(transient_failure_rate=0.01),
    "v2-defect": Behaviour(transient_failure_rate=0.01, zero_decimal_bug=True),
    "v2-rejects": Behaviour(transient_failure_rate=0.01, rejects_currency="GBP"),
    "v2-slow": Behaviour(transient_failure_rate=0.01, slowdown=6.0),
    "v2-crash": Behaviour(transient_failure_rate=0.01, crashes=True),
    "v2-scale": Behaviour(transient_failure_rate=0.01, primary_failure_rate=0.3),
}
"""The handler's versions, by `DRILL_BEHAVIOUR` or else `QWORKER_VERSION`."""

WORK_S: Final = (0.002, 0.008)
"""Simulated work per event, in seconds (times the version's slowdown)."""

CRASH_EXIT_CODE: Final = 70


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
    variable = "DRILL_BEHAVIOUR" if os.environ.get("DRILL_BEHAVIOUR") else "QWORKER_VERSION"
    version = os.environ.get(variable, "v1")
    try:
        return BEHAVIOURS[version]
    except KeyError:
        raise RuntimeError(
            f"the drill's handler has no version {version!r}; {variable} must be one of "
            f"{', '.join(BEHAVIOURS)}"
        ) from None


BEHAVIOUR: Final = _behaviour()  # checked at import: a bad version fails at start-up
_ROLE: Final = os.environ.get("QWORKER_DEPLOYMENT_ROLE", "primary")
_VERSION: Final = os.environ.get("QWORKER_VERSION", "v1")
_LEDGER: Final = os.environ.get("DRILL_LEDGER")
_OUTAGE_FILE: Final = os.environ.get("DRILL_OUTAGE_FILE")


def outage_rate(path: str | None = _OUTAGE_FILE) -> float:
    """The share of attempts a shared downstream outage fails now: the file's number, else 0."""
    if not path:
        return 0.0
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return 0.0
    try:
        return min(1.0, max(0.0, float(text.strip() or "1")))
    except ValueError:
        return 1.0  # an outage file that says nothing readable is a full outage


def _record(event: DrillEvent, message: Message, outcome: str) -> None:
    if not _LEDGER:
        return
    line = json.dumps(
        {
            "event_id": event.event_id,
            "message_id": message.message_id,
            "receive_count": message.receive_count,
            # A canary's hand-back copy arrives with a receive count of 1 but is no first attempt:
            # these say so (see qworker.settle).
            "hops": message.hops,
            "prior_receives": message.prior_receives,
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


def process(event: DrillEvent, behaviour: Behaviour, draw: float, outage: float = 0.0) -> None:
    """What one version does with one event; `draw` (uniform in [0, 1)) decides transient errors.

    Args:
        event: The event.
        behaviour: The version's behaviour.
        draw: Uniform in [0, 1): below the failure rate, the attempt fails transiently.
        outage: The share of attempts a shared downstream outage fails now (any version).

    Raises:
        DownstreamTimeoutError: A transient failure (any version, rarely; often in an outage).
        LedgerRejectedError: The defect (v2-defect, payments in zero-decimal currencies).
        Reject: The v2-rejects defect (payments in its rejected currency).
    """
    if draw < max(behaviour.transient_failure_rate, outage):
        raise DownstreamTimeoutError(f"downstream timed out on {event.event_id}")
    if event.kind == "payment" and event.currency == behaviour.rejects_currency:
        raise Reject(f"schema: {event.currency} payments are not accepted")
    if event.kind == "payment" and _scaled_amount(event, behaviour) != event.amount_cents:
        raise LedgerRejectedError(
            f"ledger rejected {event.event_id}: {event.currency} amount off by 100x"
        )


async def handle(event: DrillEvent, message: Message) -> None:
    """Process one event as the running version (`QWORKER_VERSION`) would, and log the attempt.

    Raises:
        DownstreamTimeoutError: A transient failure (any version, rarely).
        LedgerRejectedError: The defect (v2-defect, payments in zero-decimal currencies).
        Reject: The v2-rejects defect.
    """
    if BEHAVIOUR.crashes:
        _record(event, message, "crashed")
        os._exit(CRASH_EXIT_CODE)  # the crash: no clean-up, the message is redelivered later
    low, high = WORK_S
    work = random.uniform(low, high) * BEHAVIOUR.slowdown  # noqa: S311 (simulated work)
    await asyncio.sleep(work)
    outage = outage_rate()
    if _ROLE == "primary":
        outage = max(outage, BEHAVIOUR.primary_failure_rate)
    try:
        process(event, BEHAVIOUR, random.random(), outage)  # noqa: S311 (simulated errors)
    except Reject:
        _record(event, message, "rejected")
        raise
    except RuntimeError:
        _record(event, message, "failed")
        raise
    _record(event, message, "succeeded")
