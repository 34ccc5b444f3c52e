"""The canary judge's statistics: pure functions on counts, standard library only.

The tools, each small enough to check by hand:

- `two_proportion_test`: a one-sided pooled two-proportion z-test (is the canary's first-attempt
  failure rate above the primary's?), with Yates' continuity correction so that small counts do not
  look more significant than they are.
- `practical_margin`: how much worse the canary may be before it matters (absolute and relative).
- `wilson_lower` / `wilson_upper`: one-sided Wilson score bounds on one rate, for the absolute
  ceiling.
- `sequential_critical_z`: the z a look must reach when the bake peeks at the data again and again.
  Testing every minute at a fixed 5% would raise far more than 5% false alarms; this boundary keeps
  the false-alarm rate of the whole bake under `alpha` whatever the number and timing of the looks.
  The same boundary, read the other way, gives a time-uniform (always-valid) confidence bound.
- `stratified_difference`: the difference of two rates over many strata (one per minute, or a few
  merged minutes), weighted by inverse variance so that minutes where both roles suffer alike (a
  shared outage) weigh little, with a quasi-binomial dispersion factor from the strata's Pearson
  chi-square (floor 1) so that failures clustered in time widen the standard error instead of
  raising false alarms.
- `planned_sample`: how many canary messages a pass needs at a given rate, margin and share.
- `poisson_upper`: an upper bound on a Poisson count's mean (how fast traffic could really be).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass
from statistics import NormalDist
from typing import Final, final

__all__ = [
    "ProportionTest",
    "StratifiedDifference",
    "Stratum",
    "merge_strata",
    "normal_sf",
    "planned_sample",
    "poisson_upper",
    "practical_margin",
    "sequential_boundary_constant",
    "sequential_critical_z",
    "stratified_difference",
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
        _check_counts(self.treatment_failed, self.treatment_n)
        _check_counts(self.control_failed, self.control_n)

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


def planned_sample(  # noqa: PLR0917 (the sizing formula's parameters)
    rate: float,
    margin: float,
    canary_share: float,
    pass_alpha: float,
    power: float,
    dispersion: float = 1.0,
) -> int:
    """Canary messages after which an equal-rate canary passes with about `power`.

    A pass needs the time-uniform upper bound D + c se_m below the margin m, with c the pass
    boundary's constant at the planned sample and se_m the standard error with the two rates m
    apart (pooled rate kept). For an equal-rate canary D ~ N(0, se_0^2), so the bound is below the
    margin with probability `power` once c se_m + z_power se_0 <= m. Per canary message
    (the primary sees (1 - s) / s as many): n se_0^2 = phi p (1 - p) / (1 - s) and
    n se_m^2 = phi (p_c (1 - p_c) + p_p (1 - p_p) s / (1 - s)), p_c = p + m (1 - s),
    p_p = p - m s, so n = phi (c sigma_m + z_power sigma_0)^2 / m^2.

    Args:
        rate: The failure rate both roles would share.
        margin: The practical margin (positive).
        canary_share: The canary's share of first attempts, in (0, 1).
        pass_alpha: The pass bound's error rate (a canary worse by the margin passes at most
            this often).
        power: The chance an equal-rate canary passes by then, in [0.5, 1).
        dispersion: The quasi-binomial factor (1: binomial).

    Returns:
        The planned canary sample, at least 1.

    Raises:
        ValueError: The margin is not positive or the share not in (0, 1).
    """
    if margin <= 0.0 or not 0.0 < canary_share < 1.0:
        raise ValueError(f"need margin > 0 and 0 < share < 1, got {margin}, {canary_share}")
    s = canary_share
    ratio = s / (1.0 - s)
    p_c = min(rate + margin * (1.0 - s), 1.0)
    p_p = max(rate - margin * s, 0.0)
    sigma_0 = math.sqrt(rate * (1.0 - rate) * (1.0 + ratio))
    sigma_m = math.sqrt(p_c * (1.0 - p_c) + p_p * (1.0 - p_p) * ratio)
    c = sequential_boundary_constant(pass_alpha)
    z = _STANDARD_NORMAL.inv_cdf(power)
    spread = c * sigma_m + z * sigma_0
    return max(1, math.ceil(dispersion * spread * spread / (margin * margin)))


def poisson_upper(count: int, confidence: float = 0.99) -> float:
    """An upper confidence bound on a Poisson mean, given one count (Wilson-Hilferty style).

    count + z sqrt(count) + z^2 with z the one-sided normal quantile: conservative for small counts
    (0 gives z^2, about 5.4 at 99%; the exact bound is 4.6).

    Args:
        count: The observed count.
        confidence: One-sided confidence.
    """
    z = _STANDARD_NORMAL.inv_cdf(confidence)
    return count + z * math.sqrt(count) + z * z
