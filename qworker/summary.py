"""Metrics for a person at a terminal: EMF only where something reads it, a summary line locally.

In a container (no endpoint set) the awslogs driver ships stdout to CloudWatch, which extracts the
EMF documents: there they always go to stdout. Locally (the embedded server, or an endpoint such
as LocalStack's) nothing reads stdout's EMF, and a 1.4 KB JSON line per queue every interval
floods the terminal, so by default (`QWORKER_EMF=auto`) it is not written; `on` writes it anyway,
`off` never. Locally with text logs, one line per interval that saw messages tells the person what
happened instead:

    last 10 s: 42 succeeded, 1 failed, 2 retried, 0 rejected; p50 12 ms
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal, Protocol, final

from qworker.emf import Distribution, Snapshot
from qworker.metrics import MetricName

__all__ = [
    "DiscardDocuments",
    "EmfChoice",
    "Locality",
    "emf_to_stdout",
    "is_local",
    "log_summary",
    "summary_line",
]

log = logging.getLogger(__name__)

_SHOWN: Final = (
    (MetricName.SUCCEEDED, "succeeded"),
    (MetricName.FAILED, "failed"),
    (MetricName.RETRIED, "retried"),
    (MetricName.REJECTED, "rejected"),
)


class Locality(Protocol):
    """Where the worker runs (`qworker.config.ObservabilityConfig`, or the settings)."""

    @property
    def endpoint_url(self) -> str | None:
        """A custom endpoint, or None for AWS."""
        ...

    @property
    def use_embedded(self) -> bool:
        """Whether the embedded server runs."""
        ...


class EmfChoice(Locality, Protocol):
    """What decides where EMF goes."""

    @property
    def emf(self) -> Literal["auto", "on", "off"]:
        """`auto`, `on` or `off`."""
        ...


def is_local(config: Locality, endpoint_url: str | None = None) -> bool:
    """Whether the worker runs against a local server: the embedded one, or an endpoint set."""
    return endpoint_url is not None or config.endpoint_url is not None or config.use_embedded


def emf_to_stdout(config: EmfChoice, endpoint_url: str | None = None) -> bool:
    """Whether EMF documents go to stdout: `on`, `off`, or (`auto`) everywhere but locally."""
    if config.emf == "auto":
        return not is_local(config, endpoint_url)
    return config.emf == "on"


@final
class DiscardDocuments:
    """A document sink that writes nothing (EMF is off)."""

    async def write(self, documents: Iterable[Mapping[str, Any]]) -> None:
        """Drop one interval's documents."""


def _median(distributions: Iterable[Distribution]) -> float | None:
    """The weighted median of the samples (a histogram's values count as often as its counts)."""
    weighted = sorted(
        (value, 1.0 if dist.counts is None else dist.counts[i])
        for dist in distributions
        for i, value in enumerate(dist.values)
    )
    total = sum(weight for _, weight in weighted)
    if total <= 0:
        return None
    seen = 0.0
    for value, weight in weighted:
        seen += weight
        if seen >= total / 2:
            return value
    return weighted[-1][0]  # pragma: no cover (the loop always reaches half the total)


def summary_line(snapshot: Snapshot) -> str | None:
    """One human line for an interval, over every queue; None when no message was handled."""
    counts = {
        name: sum(a.counts.get(name, 0) for a in snapshot.aggregates)
        for name in (*(n for n, _ in _SHOWN), MetricName.RELEASED)
    }
    if not any(counts.values()):
        return None
    parts = [f"{counts[name]} {label}" for name, label in _SHOWN]
    if counts[MetricName.RELEASED]:
        parts.append(f"{counts[MetricName.RELEASED]} released")
    line = f"last {snapshot.interval_s:.0f} s: {', '.join(parts)}"
    p50 = _median(
        a.values[MetricName.PROCESSING_TIME]
        for a in snapshot.aggregates
        if MetricName.PROCESSING_TIME in a.values
    )
    return line if p50 is None else f"{line}; p50 {_ms(p50)} ms"


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"  # noqa: PLR2004 (two digits below 10 ms)


def log_summary(snapshot: Snapshot) -> None:
    """Log the interval's summary line (nothing for an idle interval)."""
    line = summary_line(snapshot)
    if line is not None:
        log.info(line, extra={"action": "metrics_summary"})
