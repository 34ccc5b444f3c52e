"""After an outcome: the sink protocol, the consumer's counters and its outcome log.

Every settled `OutcomeRecord` goes to the consumer's sinks in order: `OutcomeCounts` (the counters
behind `Consumer.statistics()`), `OutcomeLog` (one log line per outcome, at a level by outcome),
then the sinks the worker was given (metrics, health, quarantine, the payload store). A new
per-outcome feature is one more sink; the consumer does not change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final, Protocol, final

from qworker.outcome import Outcome, OutcomeRecord

__all__ = ["ConsumerStatistics", "OutcomeCounts", "OutcomeLog", "OutcomeSink"]

log = logging.getLogger("qworker.consumer")  # the logger the outcome lines always had

_LOG_LEVELS: Final = {
    Outcome.SUCCEEDED: logging.DEBUG,
    Outcome.RELEASED: logging.DEBUG,
    Outcome.RETRIED: logging.INFO,
    Outcome.FAILED: logging.WARNING,
    Outcome.REJECTED: logging.WARNING,
}


class OutcomeSink(Protocol):
    """Receives every outcome record once its action on the queue is done (metrics, health)."""

    def record(self, record: OutcomeRecord) -> None:
        """Take one outcome; must be quick and must not raise."""
        ...


@final
@dataclass(frozen=True, slots=True)
class ConsumerStatistics:
    """A consumer's counters."""

    received: int = 0
    in_flight: int = 0
    acked: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    released: int = 0
    handed_back: int = 0
    unsettled: int = 0
    duplicates: int = 0
    receive_errors: int = 0
    receives: int = 0
    last_receive_s: float | None = None
    stopping: bool = False


@final
class OutcomeCounts:
    """Counts outcomes by kind, and the settlements and duplicates around them (a sink)."""

    __slots__ = ("by_outcome", "duplicates", "unsettled")

    def __init__(self) -> None:
        """Start at zero."""
        self.by_outcome = dict.fromkeys(Outcome, 0)
        self.unsettled = 0
        """Outcomes whose action on the queue failed (the message comes back)."""
        self.duplicates = 0
        """Redeliveries dropped because their first delivery's delete was still pending."""

    def record(self, record: OutcomeRecord) -> None:
        """Count one outcome."""
        self.by_outcome[record.outcome] += 1

    def snapshot(
        self,
        *,
        received: int,
        in_flight: int,
        handed_back: int,
        receive_errors: int,
        receives: int,
        last_receive_s: float | None,
        stopping: bool,
    ) -> ConsumerStatistics:
        """These counts with the rest of a consumer's figures."""
        counts = self.by_outcome
        return ConsumerStatistics(
            received=received,
            in_flight=in_flight,
            acked=counts[Outcome.SUCCEEDED],
            failed=counts[Outcome.FAILED],
            retried=counts[Outcome.RETRIED],
            rejected=counts[Outcome.REJECTED],
            released=counts[Outcome.RELEASED],
            handed_back=handed_back,
            unsettled=self.unsettled,
            duplicates=self.duplicates,
            receive_errors=receive_errors,
            receives=receives,
            last_receive_s=last_receive_s,
            stopping=stopping,
        )


@final
class OutcomeLog:
    """Logs every outcome: successes and releases at DEBUG, retries at INFO, the rest WARNING."""

    __slots__ = ()

    def record(self, record: OutcomeRecord) -> None:
        """Log one outcome (nothing is built when its level is off)."""
        level = _LOG_LEVELS[record.outcome]
        if not log.isEnabledFor(level):
            return
        log.log(
            level,
            "message %s",
            record.outcome.value,
            extra={
                "action": f"message_{record.outcome.value}",
                "queue": record.queue,
                "message_id": record.message_id,
                "outcome": record.outcome.value,
                "receive_count": record.receive_count,
                "duration_ms": round(record.duration_s * 1000, 3),
                "error": record.error,
                "settled": record.settled,
                "message_type": record.message_type,
            },
        )
