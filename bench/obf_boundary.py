"""The constant of a Lan-DeMets O'Brien-Fleming-type fail boundary, by the exact recursion.

`.venv/bin/python bench/obf_boundary.py [LOOKS] [ALPHA]` (about 20 s) prints, for LOOKS equally
spaced looks up to the planned horizon (default 10: a look a minute, about 100 canary first
attempts apart at 1000 msg/min and a 10% share, to 1000), the boundary that spends the
Lan-DeMets O'Brien-Fleming-type function alpha(t) = 2 - 2 Phi(z_{alpha/2} / sqrt(t)) (one-sided
ALPHA, default 2.5%), and the constant c of the approximation z >= c / sqrt(t) whose total
one-sided crossing chance at those looks is ALPHA. `bench/judge_tradeoff.py`'s `obf` variants use c.

Method: under equal rates the z statistic at information fraction t is W(t) / sqrt(t), W a
standard Brownian motion. The density of W at each look, restricted to paths that have not yet
crossed, is carried forward on a grid (midpoint rule) by convolution with the normal increment
(Armitage, McPherson and Rowe); the chance of crossing at look k is that density integrated
against the normal tail above the look's bound. Each look's bound is found by bisection so that
the chance of a first crossing there is the spending function's increment.
"""

from __future__ import annotations

import math
import sys
from statistics import NormalDist

NORMAL = NormalDist()
GRID = 150  # grid points per look; finer grids move c by less than 0.002
LOW = -8.0  # the grid's lower end, in standard deviations of W(t)


def _phi(x: float) -> float:
    return math.exp(-x * x / 2.0) / math.sqrt(2.0 * math.pi)


def crossing(times: list[float], bounds: list[float]) -> list[float]:
    """P(W first reaches bounds[k] at times[k]), on the B (Brownian) scale, for each look k."""
    out: list[float] = []
    xs: list[float] = []
    weights: list[float] = []
    previous = 0.0
    for k, (t, b) in enumerate(zip(times, bounds, strict=True)):
        sd = math.sqrt(t - previous)
        low = LOW * math.sqrt(t)
        h = (b - low) / GRID
        grid = [low + (i + 0.5) * h for i in range(GRID)]
        if k == 0:
            out.append(1.0 - NORMAL.cdf(b / sd))
            weights = [_phi(y / sd) / sd * h for y in grid]
        else:
            out.append(
                sum(w * (1.0 - NORMAL.cdf((b - x) / sd)) for x, w in zip(xs, weights, strict=True))
            )
            weights = [
                sum(w * _phi((y - x) / sd) / sd for x, w in zip(xs, weights, strict=True)) * h
                for y in grid
            ]
        xs = grid
        previous = t
    return out


def spending_bounds(times: list[float], alpha: float) -> list[float]:
    """The B-scale bounds that spend 2 - 2 Phi(z_{alpha/2} / sqrt(t)) at each look."""
    z_half = NORMAL.inv_cdf(1.0 - alpha / 2.0)
    bounds: list[float] = []
    spent = 0.0
    for k, t in enumerate(times):
        total = 2.0 - 2.0 * NORMAL.cdf(z_half / math.sqrt(t))
        low, high = 0.0, 12.0
        for _ in range(40):
            mid = (low + high) / 2.0
            if crossing(times[: k + 1], [*bounds, mid])[-1] > total - spent:
                low = mid
            else:
                high = mid
        bounds.append((low + high) / 2.0)
        spent = total
    return bounds


def constant(times: list[float], alpha: float) -> float:
    """The c with P(W(t_k) >= c at some look) = alpha: the boundary z >= c / sqrt(t)."""
    low, high = 1.0, 4.0
    for _ in range(30):
        mid = (low + high) / 2.0
        if sum(crossing(times, [mid] * len(times))) > alpha:
            low = mid
        else:
            high = mid
    return (low + high) / 2.0


def main(argv: list[str]) -> int:
    looks = int(argv[0]) if argv else 10
    alpha = float(argv[1]) if len(argv) > 1 else 0.025
    times = [k / looks for k in range(1, looks + 1)]
    for t, b in zip(times, spending_bounds(times, alpha), strict=True):
        print(f"t = {t:.2f}  W bound {b:.3f}  z bound {b / math.sqrt(t):.3f}")
    print(f"c = {constant(times, alpha):.3f} (z >= c / sqrt(t), {looks} looks, alpha {alpha})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
