"""The canary judge's statistics, checked against hand-computed and published values."""

from __future__ import annotations

import math
import random

import pytest

from qworker.canary.stats import (
    Stratum,
    merge_strata,
    normal_sf,
    planned_sample,
    poisson_upper,
    practical_margin,
    sequential_boundary_constant,
    sequential_critical_z,
    stratified_difference,
    two_proportion_test,
    wilson_lower,
    wilson_upper,
)


def test_normal_sf_known_values() -> None:
    assert normal_sf(0.0) == 0.5
    assert normal_sf(1.959963984540054) == pytest.approx(0.025, rel=1e-9)
    assert normal_sf(-1.6448536269514722) == pytest.approx(0.95, rel=1e-9)
    # Far in the tail erfc keeps precision where 1 - cdf would round to 0.
    assert normal_sf(10.0) == pytest.approx(7.619853024160527e-24, rel=1e-9)


def test_two_proportion_small_counts_by_hand() -> None:
    # 3/10 vs 1/10: pooled 0.2, se = sqrt(0.2 * 0.8 * (1/10 + 1/10)) = sqrt(0.032),
    # difference 0.2, continuity correction (1/10 + 1/10) / 2 = 0.1.
    test = two_proportion_test(3, 10, 1, 10)
    assert test.pooled_rate == pytest.approx(0.2)
    assert test.standard_error == pytest.approx(math.sqrt(0.032))
    assert test.continuity == pytest.approx(0.1)
    assert test.difference == pytest.approx(0.2)
    assert test.z == pytest.approx(0.1 / math.sqrt(0.032))  # 0.5590
    assert test.p_value == pytest.approx(0.28808, abs=1e-5)
    uncorrected = two_proportion_test(3, 10, 1, 10, continuity=False)
    assert uncorrected.z == pytest.approx(math.sqrt(1.25))  # 0.2 / sqrt(0.032) = 1.1180
    assert uncorrected.p_value == pytest.approx(0.13177, abs=1e-5)


def test_two_proportion_canary_3pct_vs_primary_1pct_by_hand() -> None:
    # 30/1000 vs 90/9000: pooled 120/10000 = 0.012,
    # se = sqrt(0.012 * 0.988 * (0.001 + 0.000111...)) = 0.00362951,
    # cc = 0.5 * 0.001111... = 0.000555..., z = (0.02 - 0.000555...) / 0.00362951 = 5.3573.
    test = two_proportion_test(30, 1000, 90, 9000)
    assert test.treatment_rate == pytest.approx(0.03)
    assert test.control_rate == pytest.approx(0.01)
    assert test.pooled_rate == pytest.approx(0.012)
    assert test.standard_error == pytest.approx(0.00362951, rel=1e-5)
    assert test.z == pytest.approx(5.3573, abs=1e-4)
    assert test.p_value == pytest.approx(4.23e-8, rel=0.01)
    assert two_proportion_test(30, 1000, 90, 9000, continuity=False).z == pytest.approx(
        5.5104, abs=1e-4
    )


def test_two_proportion_is_one_sided() -> None:
    better = two_proportion_test(1, 1000, 90, 9000)
    assert better.z < 0
    assert better.p_value > 0.5


def test_continuity_correction_never_flips_the_sign() -> None:
    # A difference smaller than the correction is no evidence either way.
    test = two_proportion_test(2, 100, 17, 900)
    assert 0 < test.difference < test.continuity
    assert test.z == 0.0
    assert test.p_value == 0.5


@pytest.mark.parametrize(("failed_a", "failed_b"), [(0, 0), (100, 900)])
def test_no_variance_is_no_evidence(failed_a: int, failed_b: int) -> None:
    test = two_proportion_test(failed_a, 100, failed_b, 900)
    assert test.standard_error == 0.0
    assert test.z == 0.0


@pytest.mark.parametrize(
    ("failed_a", "n_a", "failed_b", "n_b"),
    [(0, 0, 1, 10), (1, 10, 0, 0), (11, 10, 0, 10), (-1, 10, 0, 10), (0, 10, 0, -1)],
)
def test_two_proportion_rejects_impossible_counts(
    failed_a: int, n_a: int, failed_b: int, n_b: int
) -> None:
    with pytest.raises(ValueError, match=r"trial|failed"):
        two_proportion_test(failed_a, n_a, failed_b, n_b)


@pytest.mark.parametrize(
    ("baseline", "expected"),
    [(0.0, 0.005), (0.01, 0.005), (0.02, 0.01), (0.04, 0.02)],
)
def test_practical_margin_is_the_larger_of_absolute_and_relative(
    baseline: float, expected: float
) -> None:
    assert practical_margin(baseline, abs_margin=0.005, rel_margin=0.5) == pytest.approx(expected)


# Newcombe, "Two-sided confidence intervals for the single proportion: comparison of seven
# methods", Statistics in Medicine 17 (1998), table I, method 3 (Wilson score, no continuity
# correction), 95% two-sided = 97.5% one-sided on each side.
@pytest.mark.parametrize(
    ("failed", "n", "lower", "upper"),
    [
        (81, 263, 0.2553, 0.3662),
        (15, 148, 0.0624, 0.1605),
        (0, 20, 0.0, 0.1611),
        (1, 29, 0.0061, 0.1718),
    ],
)
def test_wilson_bounds_match_newcombe(failed: int, n: int, lower: float, upper: float) -> None:
    assert wilson_lower(failed, n, 0.975) == pytest.approx(lower, abs=1e-4)
    assert wilson_upper(failed, n, 0.975) == pytest.approx(upper, abs=1e-4)


def test_wilson_edges_by_hand() -> None:
    z2 = 1.959963984540054**2
    # 0 of n: the upper bound is z^2 / (n + z^2); n of n: the lower bound is n / (n + z^2).
    assert wilson_upper(0, 10, 0.975) == pytest.approx(z2 / (10 + z2))  # 0.2775
    assert wilson_lower(10, 10, 0.975) == pytest.approx(10 / (10 + z2))
    assert wilson_lower(0, 10, 0.975) == 0.0
    assert wilson_upper(10, 10, 0.975) == 1.0
    assert (wilson_lower(0, 0, 0.95), wilson_upper(0, 0, 0.95)) == (0.0, 1.0)


def test_wilson_one_sided_bounds_tighten_with_less_confidence() -> None:
    assert wilson_upper(10, 1000, 0.95) < wilson_upper(10, 1000, 0.999)
    assert wilson_lower(10, 1000, 0.95) > wilson_lower(10, 1000, 0.999)


@pytest.mark.parametrize("confidence", [0.4, 1.0])
def test_wilson_rejects_bad_confidence(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        wilson_upper(1, 10, confidence)


def test_boundary_constant_spends_alpha_in_three_parts() -> None:
    c = sequential_boundary_constant(0.05)
    assert c == pytest.approx(2.128045, abs=1e-6)
    assert 3 * normal_sf(c) == pytest.approx(0.05)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1])
def test_boundary_constant_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ValueError, match="alpha"):
        sequential_boundary_constant(alpha)


def test_sequential_boundary_shape() -> None:
    c = sequential_boundary_constant(0.05)
    assert sequential_critical_z(1.0, 0.05) == pytest.approx(c)
    # O'Brien-Fleming before the planned sample: strict early looks ...
    assert sequential_critical_z(0.25, 0.05) == pytest.approx(2 * c)
    assert sequential_critical_z(0.01, 0.05) == pytest.approx(10 * c)
    # ... and stricter again for looks past it.
    assert sequential_critical_z(4.0, 0.05) == pytest.approx(2 * c)
    assert sequential_critical_z(0.0, 0.05) == math.inf


def test_sequential_boundary_holds_alpha_for_a_random_walk() -> None:
    # The Brownian bound behind the boundary, checked directly: a Gaussian random walk looked at
    # after every step, out to three times the planned sample, crosses in under alpha of runs.
    rng = random.Random(7)  # noqa: S311 (a seeded simulation, not crypto)
    steps, runs, alpha = 100, 2000, 0.05
    boundary = [sequential_critical_z(k / steps, alpha) for k in range(1, 3 * steps + 1)]
    crossed = 0
    for _ in range(runs):
        total = 0.0
        for k, critical in enumerate(boundary, start=1):
            total += rng.gauss(0.0, 1.0)
            if total / math.sqrt(k) >= critical:
                crossed += 1
                break
    print(f"random walk, {len(boundary)} looks: false alarms {crossed / runs:.2%}")  # noqa: T201 (the measured rate is this test's report: pytest -s)
    assert crossed / runs <= alpha


# --- the stratified, dispersion-robust difference ---------------------------------------------


def test_one_stratum_is_the_pooled_two_proportion_test() -> None:
    test = stratified_difference([Stratum(1000, 30, 9000, 90)])
    assert test is not None
    reference = two_proportion_test(30, 1000, 90, 9000)
    assert test.z == pytest.approx(reference.z)
    assert test.null_se == pytest.approx(reference.standard_error)
    assert test.difference == pytest.approx(0.02)
    assert test.dispersion == 1.0
    assert test.strata == 1


def test_strata_without_both_groups_are_ignored() -> None:
    assert stratified_difference([Stratum(0, 0, 10, 1), Stratum(5, 0, 0, 0)]) is None
    test = stratified_difference([Stratum(0, 0, 10, 1), Stratum(100, 2, 900, 9)])
    assert test is not None
    assert test.strata == 1


def test_shared_outage_strata_weigh_little() -> None:
    calm = [Stratum(100, 1, 900, 9)] * 20
    outage = [Stratum(100, 30, 900, 270)] * 5
    test = stratified_difference(calm + outage)
    assert test is not None
    assert test.difference == pytest.approx(0.0, abs=1e-12)
    # The primary's baseline stays near the calm 1%, the plain pooled rate would be 6.8%.
    assert test.weighted_control_rate < 0.02
    assert test.control_rate == pytest.approx((20 * 9 + 5 * 270) / (25 * 900))


def test_clustered_strata_raise_the_dispersion_factor() -> None:
    even = stratified_difference([Stratum(100, 2, 900, 18)] * 10)
    lumpy = stratified_difference([Stratum(100, 10, 900, 18)] * 2 + [Stratum(100, 0, 900, 18)] * 8)
    assert even is not None
    assert lumpy is not None
    assert even.dispersion == 1.0
    # Pearson chi-square of the lumpy strata around their estimate, shrunk by one prior df.
    assert lumpy.dispersion > 5.0
    assert lumpy.null_se == pytest.approx(even.null_se * math.sqrt(lumpy.dispersion), rel=0.05)


def test_dispersion_uses_the_variance_at_the_estimate() -> None:
    # A canary truly at 5% against 1%, evenly: its minutes vary as a 5% rate does, not as the
    # pooled 1.4%, so no dispersion is read into a plain difference.
    test = stratified_difference([Stratum(100, 5, 900, 9)] * 10)
    assert test is not None
    assert test.dispersion == 1.0


def test_upper_bound_error_at_the_margin_is_wider_for_a_low_rate() -> None:
    strata = [Stratum(100, 0, 900, 1)] * 10
    at_estimate = stratified_difference(strata)
    at_margin = stratified_difference(strata, at=0.0025)
    assert at_estimate is not None
    assert at_margin is not None
    assert at_margin.alt_se > 1.5 * at_estimate.alt_se


def test_merge_strata_until_each_has_enough_treatment() -> None:
    strata = [Stratum(20, 0, 180, 1)] * 5 + [Stratum(0, 0, 200, 0)] + [Stratum(10, 1, 90, 0)]
    merged = merge_strata(strata, 50)
    assert [s.treatment_n for s in merged] == [60, 50]  # the short remainder joins the last
    assert sum(s.control_n for s in merged) == 5 * 180 + 90
    assert merge_strata(strata, 1) == [s for s in strata if s.treatment_n]


def test_planned_sample_by_hand() -> None:
    # p = 1%, m = 0.75 points, s = 10%: p_c = 1.675%, p_p = 0.925%, c = 2.128, z = 1.645.
    c, z = sequential_boundary_constant(0.05), 1.6448536269514722
    sigma_m = math.sqrt(0.01675 * 0.98325 + 0.00925 * 0.99075 / 9)
    sigma_0 = math.sqrt(0.01 * 0.99 * (1 + 1 / 9))
    expected = math.ceil((c * sigma_m + z * sigma_0) ** 2 / 0.0075**2)
    assert planned_sample(0.01, 0.0075, 0.1, 0.05, 0.95) == expected == 3664
    assert planned_sample(0.01, 0.0075, 0.1, 0.05, 0.95, dispersion=2.0) == pytest.approx(
        2 * expected, abs=1
    )
    # A larger share (the primary sees fewer) and a smaller margin both need more.
    assert planned_sample(0.01, 0.0075, 0.25, 0.05, 0.95) > expected
    assert planned_sample(0.01, 0.005, 0.1, 0.05, 0.95) > expected
    with pytest.raises(ValueError, match="margin"):
        planned_sample(0.01, 0.0, 0.1, 0.05, 0.95)


def test_poisson_upper() -> None:
    z = 2.3263478740408408
    assert poisson_upper(0) == pytest.approx(z * z)
    assert poisson_upper(100) == pytest.approx(100 + 10 * z + z * z)
    # Never below the exact 99% bound (4.61 for 0, 124.7 for 100).
    assert poisson_upper(0) > 4.60
    assert poisson_upper(100) > 124.7
