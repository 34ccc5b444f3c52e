"""The canary judge's statistics: pure functions on counts, standard library only.

Four tools, each small enough to check by hand:

- `two_proportion_test`: a one-sided pooled two-proportion z-test (is the canary's first-attempt
  failure rate above the primary's?), with Yates' continuity correction so that small counts do not
  look more significant than they are.
- `practical_margin`: how much worse the canary may be before it matters (absolute and relative).
- `wilson_lower` / `wilson_upper`: one-sided Wilson score bounds on one rate, for the absolute
  ceiling.
- `sequential_critical_z`: the z a look must reach when the bake peeks at the data again and again.
  Testing every minute at a fixed 5% would raise far more than 5% false alarms; this boundary keeps
  the false-alarm rate of the whole bake under `alpha` whatever the number and timing of the looks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, final

__all__ = [
    "ProportionTest",
    "normal_sf",
    "practical_margin",
    "sequential_boundary_constant",
    "sequential_critical_z",
    "two_proportion_test",
    "wilson_lower",
    "wilson_upper",
]

_STANDARD_NORMAL: Final = NormalDist()
_HALF: Final = 0.5
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


def _check_counts(failed: int, n: int) -> None:
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
    _check_counts(treatment_failed, treatment_n)
    _check_counts(control_failed, control_n)
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
    _check_counts(failed, n)
    if not _HALF <= confidence < 1.0:
        raise ValueError(f"confidence must be in [0.5, 1), got {confidence}")
    if n == 0:
        return 0.0, 1.0
    z = _STANDARD_NORMAL.inv_cdf(confidence)
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


def sequential_boundary_constant(alpha: float) -> float:
    """The constant c of the sequential boundary that spends at most `alpha` over a whole bake.

    See `sequential_critical_z`: the bake's false-alarm chance is at most 3 (1 - Phi(c)).

    Args:
        alpha: The one-sided false-alarm rate allowed for the whole bake, in (0, 1).

    Returns:
        c = Phi^-1(1 - alpha / 3); 2.128 for alpha = 0.05.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return _STANDARD_NORMAL.inv_cdf(1.0 - alpha / 3.0)


def sequential_critical_z(information_fraction: float, alpha: float) -> float:
    """The z a look at `information_fraction` of the planned sample must reach to count.

    The boundary is c * max(1/sqrt(t), sqrt(t)), where t = n / N is the share of the planned canary
    sample N seen so far. Under equal rates the z statistic is about W(t) / sqrt(t), W a standard
    Brownian motion, so for t <= 1 this is O'Brien-Fleming's boundary W(t) >= c (strict early,
    about c at the planned end), and past t = 1 it is the line W(t) >= c t (looks after the planned
    sample, while the minimum bake time runs, get stricter again). Even watched continuously, W
    crosses the flat part with probability 2 (1 - Phi(c)) (reflection principle) and, from below it
    at t = 1, the line with probability E[exp(-2 c (c - W(1)))] <= 1 - Phi(c). So any number of
    looks, at any times, raise a false alarm with probability at most 3 (1 - Phi(c)) = alpha,
    without the judge having to remember its earlier looks. Discrete looks make the real rate lower.

    Args:
        information_fraction: t = n / N, above 0.
        alpha: The one-sided false-alarm rate allowed for the whole bake.

    Returns:
        The critical z; infinite for t <= 0 (no data, no decision).
    """
    c = sequential_boundary_constant(alpha)
    if information_fraction <= 0.0:
        return math.inf
    root = math.sqrt(information_fraction)
    return c * max(1.0 / root, root)
