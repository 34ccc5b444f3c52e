"""The sequential boundary: how strict each look at the bake must be, and how big the bake is.

Pure functions, standard library only (`stats` re-exports them with the rest of the judge's
statistics).
"""

from __future__ import annotations

import math

from qworker.canary.proportions import STANDARD_NORMAL

__all__ = ["planned_sample", "sequential_boundary_constant", "sequential_critical_z"]


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
    return STANDARD_NORMAL.inv_cdf(1.0 - alpha / 3.0)


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
    z = STANDARD_NORMAL.inv_cdf(power)
    spread = c * sigma_m + z * sigma_0
    return max(1, math.ceil(dispersion * spread * spread / (margin * margin)))
