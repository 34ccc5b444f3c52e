"""The canary judge's statistics, in one namespace: pure functions on counts, standard library only.

Three modules hold them: `proportions` (one or two rates and their bounds), `sequential` (the
boundary of repeated looks and the bake's size) and `strata` (the per-minute stratified
difference). The tools, each small enough to check by hand:

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

from qworker.canary.proportions import (
    ProportionTest,
    normal_sf,
    poisson_upper,
    practical_margin,
    two_proportion_test,
    wilson_lower,
    wilson_upper,
)
from qworker.canary.sequential import (
    planned_sample,
    sequential_boundary_constant,
    sequential_critical_z,
)
from qworker.canary.strata import StratifiedDifference, Stratum, merge_strata, stratified_difference

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
