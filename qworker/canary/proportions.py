"""Rates and their bounds: the two-proportion test, the practical margin, Wilson and Poisson bounds.

Pure functions on counts, standard library only (`stats` re-exports them with the rest of the
judge's statistics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, final

__all__ = [
    "ProportionTest",
    "check_counts",
    "normal_sf",
    "poisson_upper",
    "practical_margin",
    "two_proportion_test",
    "wilson_lower",
    "wilson_upper",
]

STANDARD_NORMAL: Final = NormalDist()
HALF: Final = 0.5
"""The least confidence a one-sided bound can have."""


def normal_sf(z: float) -> float:
    """The standard normal upper tail, P(Z >= z), accurate far into the tail.

    Args:
        z: The z score.

    Returns:
        The one-sided p-value of `z`.
    """
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@final
@dataclass(frozen=True, slots=True)
class ProportionTest:
    """The result of a one-sided two-proportion test of "treatment rate > control rate"."""

    treatment_rate: float
    control_rate: float
    difference: float
    """treatment_rate - control_rate, uncorrected."""
    pooled_rate: float
    standard_error: float
    """Standard error of the difference under the null hypothesis (pooled rate)."""
    continuity: float
    """The continuity correction taken off the difference (0 when not applied)."""
    z: float
    p_value: float
    """One-sided: the chance of a z at least this large if both rates were equal."""


def check_counts(failed: int, n: int) -> None:
    """Reject a count of failures that is negative or above its trials.

    Raises:
        ValueError: `failed` or `n` is impossible.
    """
    if n < 0 or failed < 0 or failed > n:
        raise ValueError(f"need 0 <= failed <= n, got failed={failed}, n={n}")


def two_proportion_test(
    treatment_failed: int,
    treatment_n: int,
    control_failed: int,
    control_n: int,
    *,
    continuity: bool = True,
) -> ProportionTest:
    """Test whether the treatment's failure rate is above the control's (pooled z, one-sided).

    z = (d - cc) / sqrt(p (1 - p) (1/n1 + 1/n2)), where d is the difference of the two rates, p the
    pooled rate and cc = (1/n1 + 1/n2) / 2 Yates' continuity correction (taken towards zero). When
    every message failed or none did there is no variance and no evidence: z = 0.

    Args:
        treatment_failed: Failures of the treatment (the canary).
        treatment_n: Trials of the treatment; at least 1.
        control_failed: Failures of the control (the primary).
        control_n: Trials of the control; at least 1.
        continuity: Apply the continuity correction.

    Returns:
        The rates, the statistic and its one-sided p-value.

    Raises:
        ValueError: A count is negative, above its trials, or a group has no trials.
    """
    check_counts(treatment_failed, treatment_n)
    check_counts(control_failed, control_n)
    if treatment_n == 0 or control_n == 0:
        raise ValueError("both groups need at least one trial")
    p1 = treatment_failed / treatment_n
    p2 = control_failed / control_n
    pooled = (treatment_failed + control_failed) / (treatment_n + control_n)
    inverse_sizes = 1.0 / treatment_n + 1.0 / control_n
    se = math.sqrt(pooled * (1.0 - pooled) * inverse_sizes)
    cc = 0.5 * inverse_sizes if continuity else 0.0
    difference = p1 - p2
    corrected = math.copysign(max(abs(difference) - cc, 0.0), difference)
    z = corrected / se if se > 0.0 else 0.0
    return ProportionTest(
        treatment_rate=p1,
        control_rate=p2,
        difference=difference,
        pooled_rate=pooled,
        standard_error=se,
        continuity=cc,
        z=z,
        p_value=normal_sf(z),
    )


def practical_margin(baseline_rate: float, abs_margin: float, rel_margin: float) -> float:
    """How much higher than the baseline a rate may be before the difference matters.

    The larger of the two margins, so a regression must clear both: with a 1% baseline, an absolute
    margin of 0.5 points and a relative one of 50% both allow up to 1.5%.

    Args:
        baseline_rate: The primary's failure rate.
        abs_margin: Allowed absolute difference (0.005 is half a percentage point).
        rel_margin: Allowed difference relative to the baseline (0.5 is 50%).

    Returns:
        The allowed difference, as a rate.
    """
    return max(abs_margin, rel_margin * baseline_rate)


def _wilson(failed: int, n: int, confidence: float) -> tuple[float, float]:
    check_counts(failed, n)
    if not HALF <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = STANDARD_NORMAL.inv_cdf(confidence)
    p = failed / n
    z2_n = z * z / n
    denominator = 1.0 + z2_n
    centre = (p + z2_n / 2.0) / denominator
    half_width = z * math.sqrt(p * (1.0 - p) / n + z2_n / (4.0 * n)) / denominator
    # At 0 (or n) failures the bound is exactly 0 (or 1); rounding would leave 1e-17.
    lower = 0.0 if failed == 0 else max(0.0, centre - half_width)
    upper = 1.0 if failed == n else min(1.0, centre + half_width)
    return lower, upper


def wilson_upper(failed: int, n: int, confidence: float) -> float:
    """One-sided Wilson score upper bound on a rate: the true rate is below it with `confidence`.

    Unlike the normal (Wald) interval it stays sensible at 0 failures and small n: 0 of 10 at
    97.5% gives 0.278, where Wald gives 0.

    Args:
        failed: Failures observed.
        n: Trials (0 gives the uninformative bound 1).
        confidence: One-sided confidence, e.g. 0.95.

    Returns:
        The upper bound, in [0, 1].
    """
    return _wilson(failed, n, confidence)[1]


def wilson_lower(failed: int, n: int, confidence: float) -> float:
    """One-sided Wilson score lower bound on a rate: the true rate is above it with `confidence`.

    Args:
        failed: Failures observed.
        n: Trials (0 gives the uninformative bound 0).
        confidence: One-sided confidence, e.g. 0.999.

    Returns:
        The lower bound, in [0, 1].
    """
    return _wilson(failed, n, confidence)[0]


def poisson_upper(count: int, confidence: float = 0.99) -> float:
    """An upper confidence bound on a Poisson mean, given one count (Wilson-Hilferty style).

    count + z sqrt(count) + z^2 with z the one-sided normal quantile: conservative for small counts
    (0 gives z^2, about 5.4 at 99%; the exact bound is 4.6).

    Args:
        count: The observed count.
        confidence: One-sided confidence.
    """
    z = STANDARD_NORMAL.inv_cdf(confidence)
    return count + z * math.sqrt(count) + z * z
