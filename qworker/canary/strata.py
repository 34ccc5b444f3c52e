"""The stratified difference of two rates: per-minute strata, inverse-variance weights, dispersion.

Pure functions on counts, standard library only (`stats` re-exports them with the rest of the
judge's statistics).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from typing import Final, final

from qworker.canary.proportions import check_counts

__all__ = [
    "DISPERSION_PRIOR_DF",
    "SHRINK_FAILURES",
    "SHRINK_MESSAGES",
    "StratifiedDifference",
    "Stratum",
    "merge_strata",
    "stratified_difference",
]


@final
@dataclass(frozen=True, slots=True)
class Stratum:
    """One stratum (a minute, or a few merged minutes): both groups' trials and failures."""

    treatment_n: int
    treatment_failed: int
    control_n: int
    control_failed: int

    def __post_init__(self) -> None:
        """Reject impossible counts."""
        check_counts(self.treatment_failed, self.treatment_n)
        check_counts(self.control_failed, self.control_n)

    def __add__(self, other: Stratum) -> Stratum:
        """Two strata merged into one."""
        return Stratum(
            self.treatment_n + other.treatment_n,
            self.treatment_failed + other.treatment_failed,
            self.control_n + other.control_n,
            self.control_failed + other.control_failed,
        )


@final
@dataclass(frozen=True, slots=True)
class StratifiedDifference:
    """The stratified difference treatment - control and its standard errors."""

    difference: float
    """Inverse-variance weighted mean of the strata's differences."""
    treatment_rate: float
    control_rate: float
    null_se: float
    """Standard error under equal rates (the test's), dispersion included."""
    alt_se: float
    """Standard error at the estimated difference, or at the one asked for (the confidence
    bound's), dispersion included."""
    weighted_control_rate: float
    """The control's rate with the estimate's weights (a shared incident moves it little)."""
    dispersion: float
    """Quasi-binomial factor: Pearson chi-square of the strata / degrees of freedom, at least 1."""
    strata: int
    continuity: float
    z: float
    """(difference - continuity, towards zero) / null_se; 0 without variance."""


SHRINK_MESSAGES: Final = 100.0
"""A stratum's pooled rate is shrunk towards a robust centre by at least this many pseudo-messages,
so a stratum without failures still has a variance (and a finite weight) ..."""
SHRINK_FAILURES: Final = 10.0
"""... and by enough of them to hold this many failures at the centre rate."""


DISPERSION_PRIOR_DF: Final = 1.0
"""The dispersion factor starts from 1 with this many degrees of freedom of weight: with a handful
of strata one unlucky minute would otherwise set it, with an hour of minutes the data dominate."""


def merge_strata(strata: list[Stratum], min_treatment: int) -> list[Stratum]:
    """Merge consecutive strata until each has `min_treatment` treatment trials (the last may not).

    Strata where either group has no trials carry no comparison and are dropped. A short remainder
    is merged into the stratum before it.

    Args:
        strata: In time order.
        min_treatment: Treatment trials a stratum needs (1: no merging).

    Returns:
        The merged strata.
    """
    merged: list[Stratum] = []
    current: Stratum | None = None
    for stratum in strata:
        if stratum.treatment_n == 0 or stratum.control_n == 0:
            continue
        current = stratum if current is None else current + stratum
        if current.treatment_n >= min_treatment:
            merged.append(current)
            current = None
    if current is not None:
        if merged:
            merged[-1] += current
        else:
            merged.append(current)
    return merged


def stratified_difference(
    strata: list[Stratum], *, continuity: bool = True, at: float | None = None
) -> StratifiedDifference | None:
    """Estimate treatment - control across strata, robust to a shared time-varying rate.

    Each stratum i has the difference d_i of its two rates and, under equal rates, the variance
    v_i = q_i (1 - q_i) (1/n_ti + 1/n_ci), with q_i the stratum's pooled rate shrunk towards a
    robust centre (the median stratum's rate, at least half the overall one) by
    max(`SHRINK_MESSAGES`, `SHRINK_FAILURES` / centre) pseudo-messages. The estimate is
    D = sum(w_i d_i) / sum(w_i) with w_i = 1 / v_i: a minute in which both roles fail at 30% has a
    large v_i and weighs little, and its d_i is near 0 anyway. The dispersion factor
    phi = max(1, (sum((d_i - D)^2 / u_i) + nu) / (k - 1 + nu)), u_i the stratum's variance at D
    (Pearson chi-square over k strata, shrunk towards 1 by `DISPERSION_PRIOR_DF`), scales both
    variances: failures clustered in some minutes (a
    bad task, a bad minute) spread the d_i more than binomial sampling does and widen the error.
    The null standard error is sqrt(phi / sum(w_i)); the alternative one uses, per stratum, the
    two rates that keep the pooled rate q_i and differ by D. With one stratum this is the pooled
    two-proportion z-test exactly (`two_proportion_test`).

    Args:
        strata: Strata with trials in both groups (others are ignored).
        continuity: Take Yates' correction (1/N_t + 1/N_c) / 2 on the totals off the difference.
        at: The difference at which to take `alt_se` (default: the estimate). An upper bound
            checked against a margin is better taken at the margin (a score-type bound): at low
            rates, a canary that happened to fail little would otherwise get too small an error.

    Returns:
        The estimate, or None when no stratum has trials in both groups.
    """
    used = [s for s in strata if s.treatment_n > 0 and s.control_n > 0]
    if not used:
        return None
    n_t = sum(s.treatment_n for s in used)
    f_t = sum(s.treatment_failed for s in used)
    n_c = sum(s.control_n for s in used)
    f_c = sum(s.control_failed for s in used)
    pooled = (f_t + f_c) / (n_t + n_c)
    cc = 0.5 * (1.0 / n_t + 1.0 / n_c) if continuity else 0.0
    base = StratifiedDifference(
        difference=f_t / n_t - f_c / n_c,
        treatment_rate=f_t / n_t,
        control_rate=f_c / n_c,
        null_se=0.0,
        alt_se=0.0,
        weighted_control_rate=f_c / n_c,
        dispersion=1.0,
        strata=len(used),
        continuity=cc,
        z=0.0,
    )
    # No failure (or no success) at all still leaves doubt: half a failure's worth of variance.
    half = 0.5 / (n_t + n_c)
    pooled = min(max(pooled, half), 1.0 - half)
    rows: list[tuple[float, float, float, float, float]] = []  # d, w, q, n_t, n_c
    control_rates: list[float] = []
    # Shrink towards a centre a shared outage in a few strata hardly moves: the median stratum's
    # pooled rate, but at least half the overall one (with sparse failures most strata have none,
    # and their median says nothing). The prior weighs `SHRINK_FAILURES` failures at the centre, at
    # least `SHRINK_MESSAGES` messages, so that sparse strata get about equal weights.
    median = statistics.median(
        (s.treatment_failed + s.control_failed) / (s.treatment_n + s.control_n) for s in used
    )
    centre = min(max(median, pooled / 2.0), 1.0 - half)
    prior = max(SHRINK_MESSAGES, SHRINK_FAILURES / centre)
    for s in used:
        q = (s.treatment_failed + s.control_failed + prior * centre) / (
            s.treatment_n + s.control_n + prior
        )
        v = q * (1.0 - q) * (1.0 / s.treatment_n + 1.0 / s.control_n)
        d = s.treatment_failed / s.treatment_n - s.control_failed / s.control_n
        rows.append((d, 1.0 / v, q, s.treatment_n, s.control_n))
        control_rates.append(s.control_failed / s.control_n)
    total_w = sum(w for _, w, _, _, _ in rows)
    estimate = sum(d * w for d, w, _, _, _ in rows) / total_w

    def variance(shift: float, q: float, nt: float, nc: float) -> float:
        # The stratum's two rates that keep its pooled rate q and differ by `shift`, each kept
        # half a message of the stratum away from 0 and 1 (no stratum is certain).
        share_t, edge = nt / (nt + nc), 0.5 / (nt + nc)
        pt = min(max(q + shift * (1.0 - share_t), edge), 1.0 - edge)
        pc = min(max(q - shift * share_t, edge), 1.0 - edge)
        return pt * (1.0 - pt) / nt + pc * (1.0 - pc) / nc

    # Pearson chi-square of the strata around the estimate, each with its variance AT the estimate
    # (under a real difference the canary's failures are more variable than the pooled rate says).
    chi2 = sum((d - estimate) ** 2 / variance(estimate, q, nt, nc) for d, _, q, nt, nc in rows)
    df = len(rows) - 1
    phi = max(1.0, (chi2 + DISPERSION_PRIOR_DF) / (df + DISPERSION_PRIOR_DF))
    shift = estimate if at is None else at
    alt_var = sum(w * w * variance(shift, q, nt, nc) for _, w, q, nt, nc in rows)
    null_se = math.sqrt(phi / total_w)
    corrected = math.copysign(max(abs(estimate) - cc, 0.0), estimate)
    baseline = sum(r * w for r, (_, w, _, _, _) in zip(control_rates, rows, strict=True)) / total_w
    return dataclasses.replace(
        base,
        difference=estimate,
        weighted_control_rate=baseline,
        null_se=null_se,
        alt_se=math.sqrt(phi * alt_var) / total_w,
        dispersion=phi,
        z=corrected / null_se,
    )
