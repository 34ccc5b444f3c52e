"""Outcomes: what happened to each message, and the retry policy that decides when it comes back.

Every message a worker receives ends in exactly one `Outcome`; the consumer logs it, counts it,
and turns it into one action on the queue (docs/architecture.md, "The message path"):

| outcome     | meaning                                              | action on the queue         |
| ----------- | ---------------------------------------------------- | --------------------------- |
| `succeeded` | the handler returned                                 | deleted                     |
| `failed`    | the handler raised, or timed out                     | visible again after backoff |
| `retried`   | the handler raised `Retry`                           | hidden for the asked delay  |
| `rejected`  | the body was invalid, or the handler raised `Reject` | sent to the DLQ now         |
| `released`  | never started (shutdown, canary release, FIFO stop)  | visible again at once       |
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field
from typing import Final, final

__all__ = ["SQS_MAX_VISIBILITY_S", "Outcome", "OutcomeRecord", "RetryPolicy"]

SQS_MAX_VISIBILITY_S: Final = 43_200
"""SQS caps a message's visibility timeout at 12 hours."""


class Outcome(enum.StrEnum):
    """What happened to one received message."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    REJECTED = "rejected"
    RELEASED = "released"


@final
@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """One message's outcome with everything metrics, logs and spans need to describe it.

    Attributes:
        outcome: What happened.
        queue: The queue's name.
        handler: The handler's qualified name.
        role: The worker's deployment role (`canary` or `primary`).
        version: The worker's version (the image tag in a deployment).
        message_id: The SQS message id.
        receive_count: The effective receive count of this delivery: `ApproximateReceiveCount`
            plus the deliveries a hand-back copy's message spent before the copy was made
            (`qworker.receives`), so it counts every delivery against the budget, this one
            included (1 on a first attempt). Retry backoff and the worker's dead-lettering use it.
        hops: How many times a canary handed the message back as a fresh copy (0: the message as
            first sent); a copy's deliveries are never first attempts.
        duration_s: Time spent in the handler (0 for messages that never started).
        message_age_s: Time from the message's `SentTimestamp` to the end of processing.
        error: A short description of the failure (exception type and text), if any.
        delay_s: For `retried`, the delay the handler asked for; for `released`, how long the
            message stays hidden (None: visible at once).
        settled: False when the queue action that records the outcome failed (the message will
            come back and is counted again then).
    """

    outcome: Outcome
    queue: str
    handler: str
    role: str
    version: str
    message_id: str
    receive_count: int
    duration_s: float = 0.0
    message_age_s: float = 0.0
    error: str | None = None
    delay_s: float | None = None
    settled: bool = True
    hops: int = 0
    message_type: str | None = None

    @property
    def first_attempt(self) -> bool:
        """Whether this was the message's first delivery (the canary judge compares these).

        A canary's hand-back copy starts a new `ApproximateReceiveCount`, but it is the same
        message tried again: none of its deliveries is a first attempt, even with an effective
        receive count of 1 (the canary took its only earlier delivery, which is not counted).
        """
        return self.receive_count <= 1 and self.hops == 0


@final
@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential, jittered, capped backoff computed from a message's receive count.

    The delay for the n-th failed delivery is `base_s * factor ** (n - 1)`, capped at `max_s`, then
    drawn uniformly from `[delay * (1 - jitter), delay]` ("equal jitter") so that a burst of
    failures
    does not come back as a burst.

    Attributes:
        base_s: Delay after the first failed delivery.
        factor: Growth per further delivery.
        max_s: Upper bound on any delay (and never more than SQS's 12-hour visibility limit).
        jitter: Fraction of the delay that is randomised, from 0 (none) to 1 (full jitter).
    """

    base_s: float = 2.0
    factor: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.5
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Check the policy's bounds once, so a bad policy fails where it is made."""
        if self.base_s < 0 or self.max_s < 0:
            raise ValueError("retry delays must not be negative")
        if self.factor < 1:
            raise ValueError("retry factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("retry jitter must be between 0 and 1")

    def delay_s(self, receive_count: int) -> float:
        """Return how long a message that failed on its `receive_count`-th delivery stays hidden."""
        attempt = max(receive_count, 1)
        # Cap the exponent before computing the power, so a huge receive count cannot overflow.
        exponent = min(attempt - 1, 64)
        ceiling = min(self.base_s * self.factor**exponent, self.max_s, SQS_MAX_VISIBILITY_S)
        return ceiling - self._rng.uniform(0, ceiling * self.jitter)
