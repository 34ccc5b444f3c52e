"""The numbers behind a verdict: one look's `Reading` turned into the judge's `Evidence`.

`evidence_of` computes, from the counts since the start and per minute, the stratified difference
and its test, the pass bound, the bake's planned and reachable sizes, the canary's share and the
latency comparison; `qworker.canary.judge` gives the method, `qworker.canary.rules` the rules that
read the result.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import final

from qworker.canary import stats
from qworker.canary.policy import Decision, JudgePolicy
from qworker.canary.proportions import HALF
from qworker.canary.readings import Reading, RoleCounts

__all__ = ["Evidence", "Verdict", "evidence_of"]


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Evidence:
    """The numbers behind a verdict (None where there was not enough data to compute one)."""

    canary: RoleCounts
    primary: RoleCounts
    elapsed_s: float
    backlog: int | None
    canary_rate: float | None = None
    primary_rate: float | None = None
    difference: float | None = None  # canary rate - primary rate, stratified by minute
    margin: float | None = None  # the practical margin
    information_fraction: float = 0.0  # canary first attempts / min_canary_messages
    z: float | None = None
    p_value: float | None = None  # one-sided, of this look alone
    critical_z: float | None = None
    look_alpha: float | None = None  # the p-value this look needed (the boundary as a probability)
    dispersion: float | None = None  # quasi-binomial factor (1: binomial)
    strata: int = 0
    upper_bound: float | None = None  # time-uniform upper bound on the difference
    pass_critical_z: float | None = None
    planned_canary_messages: int | None = None  # N: canary first attempts a pass is sized for
    least_canary_messages: int | None = None  # the least N any plausible primary rate needs
    reachable_canary_messages: float | None = None  # optimistic canary first attempts by max bake
    canary_share: float | None = None
    recent_canary_share: float | None = None  # over the last complete minutes
    expected_canary_share: float | None = None
    canary_share_upper: float | None = None  # the lower of the bake's and the window's bounds
    latency_method: str | None = None  # "percentile", "fallback" or None (no data)
    latency_threshold_ms: float | None = None
    canary_slow_rate: float | None = None
    primary_slow_rate: float | None = None
    latency_difference: float | None = None
    latency_margin: float | None = None
    latency_z: float | None = None
    latency_critical_z: float | None = None
    latency_upper_bound: float | None = None
    latency_ratio: float | None = None  # fallback: median per-minute trimmed-mean ratio
    latency_minutes: int = 0
    latency_canary_messages: int = 0


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """One look's decision, why, and the evidence."""

    decision: Decision
    reasons: tuple[str, ...]
    evidence: Evidence = dataclasses.field(repr=False)

    @property
    def terminal(self) -> bool:
        """Whether the bake is over."""
        return self.decision is not Decision.CONTINUE


def _strata(reading: Reading) -> list[stats.Stratum]:
    if not reading.minutes:
        c, p = reading.canary, reading.primary
        return [
            stats.Stratum(
                c.first_attempt_processed,
                c.first_attempt_unsucceeded,
                p.first_attempt_processed,
                p.first_attempt_unsucceeded,
            )
        ]
    return [
        stats.Stratum(
            m.canary.first_attempt_processed,
            m.canary.first_attempt_unsucceeded,
            m.primary.first_attempt_processed,
            m.primary.first_attempt_unsucceeded,
        )
        for m in reading.minutes
    ]


def _share_bounds(
    reading: Reading, policy: JudgePolicy
) -> tuple[float | None, float | None, float | None]:
    """The canary's share of first attempts over the bake and recently, and its upper bound.

    Recently: the trailing complete minutes (up to `share_window_minutes`, at least two). The
    upper bound is the lower of the two windows' bounds.
    """
    n_c, n_p = reading.canary.first_attempt_processed, reading.primary.first_attempt_processed
    share = n_c / (n_c + n_p) if n_c + n_p else None
    complete = reading.minutes[:-1]  # the last minute may be partial, or one role not flushed yet
    if reading.minutes:
        # The bound is over whole minutes only: in the newest one a role whose workers have not
        # flushed yet would look dead (0 against the other role's hundreds).
        b_c = sum(m.canary.first_attempt_processed for m in complete)
        b_p = sum(m.primary.first_attempt_processed for m in complete)
        windows = [(b_c, b_c + b_p)]
    else:
        windows = [(n_c, n_c + n_p)]
    recent_share = None
    if len(complete) >= 2:  # noqa: PLR2004 (one minute could be one role's late flush)
        recent = complete[-policy.share_window_minutes :]
        w_c = sum(m.canary.first_attempt_processed for m in recent)
        w_p = sum(m.primary.first_attempt_processed for m in recent)
        windows.append((w_c, w_c + w_p))
        recent_share = w_c / (w_c + w_p) if w_c + w_p else None
    uppers = [
        stats.wilson_upper(c, total, policy.share_confidence)
        for c, total in windows
        if total >= policy.share_min_messages
    ]
    return share, recent_share, min(uppers) if uppers else None


def _canary_rate_per_s(reading: Reading, elapsed_s: float) -> tuple[int, float] | None:
    """Canary first attempts and the seconds they came in (None: too early to say).

    Over the complete minutes when the reading has minutes (at least two), else over the elapsed
    time.
    """
    if not reading.minutes:
        return reading.canary.first_attempt_processed, elapsed_s
    complete = reading.minutes[:-1]  # the reader starts at a whole minute; the last is partial
    if len(complete) < 2:  # noqa: PLR2004 (a rate needs more than one minute)
        return None
    return sum(m.canary.first_attempt_processed for m in complete), 60.0 * len(complete)


def _margin(rate: float, policy: JudgePolicy) -> float:
    return stats.practical_margin(rate, policy.abs_margin, policy.rel_margin)


def _planned(rate: float, share: float, dispersion: float, policy: JudgePolicy) -> int:
    margin = _margin(rate, policy)
    n = stats.planned_sample(rate, margin, share, policy.pass_alpha, policy.pass_power, dispersion)
    return max(policy.min_canary_messages, n)


def _least(rate: float, share: float, policy: JudgePolicy) -> int:
    """The fewest canary first attempts with which a canary showing no difference could pass.

    With D = 0 the bound is c_b sqrt(N / n) se_m(n) below N, which reaches the margin at
    n = sqrt(N n0), n0 = `planned_sample` at power 1/2 (the bound's own width, c_b se_m = m).
    """
    margin = _margin(rate, policy)
    planned = _planned(rate, share, 1.0, policy)
    bare = stats.planned_sample(rate, margin, share, policy.pass_alpha, HALF)
    return max(policy.min_canary_messages, math.ceil(math.sqrt(planned * bare)))


def _reachable(
    reading: Reading, elapsed_s: float, share: float, policy: JudgePolicy
) -> tuple[int, float] | None:
    """The least N any plausible primary rate needs, and the most canary messages by max bake."""
    if elapsed_s < policy.reach_after_s:
        return None
    rate = _canary_rate_per_s(reading, elapsed_s)
    if rate is None or rate[1] <= 0.0:
        return None
    n, seconds = rate
    remaining = max(policy.max_bake_s - elapsed_s, 0.0)
    reachable = (
        reading.canary.first_attempt_processed + stats.poisson_upper(n) / seconds * remaining
    )
    p = reading.primary
    low = stats.wilson_lower(p.first_attempt_unsucceeded, p.first_attempt_processed, 0.975)
    high = stats.wilson_upper(p.first_attempt_unsucceeded, p.first_attempt_processed, 0.975)
    # N(rate) rises and then falls (the relative margin grows with the rate): its least value over
    # the interval is at one end.
    # "Cannot reach" must be sure, so it assumes the best case: binomial variance (dispersion 1),
    # the most favourable primary rate, and a canary that shows no difference at all.
    least = min(_least(rate, share, policy) for rate in (low, high))
    return least, reachable


def _latency(reading: Reading, policy: JudgePolicy, planned: int | None) -> dict[str, object]:
    # Whole minutes only: the newest is partial, and one role's flush may not be in it yet, which
    # leaves a few messages from one role against many from the other.
    minutes = [m for m in reading.minutes[:-1] if m.canary_time and m.primary_time]
    if reading.latency_threshold_ms is not None:
        strata = [
            stats.Stratum(m.canary_time.count, m.canary_time.slow, m.primary_time.count, slow)
            for m in minutes
            if m.canary_time is not None
            and m.primary_time is not None
            and m.canary_time.slow is not None
            and (slow := m.primary_time.slow) is not None
        ]
        test = stats.stratified_difference(strata, continuity=policy.continuity_correction)
        if test is None:
            return {"latency_method": "percentile"}
        margin = policy.latency_rel_margin * test.control_rate
        test = stats.stratified_difference(
            strata, continuity=policy.continuity_correction, at=margin
        )
        assert test is not None  # noqa: S101 (the same strata)
        n_c = sum(s.treatment_n for s in strata)
        critical = stats.sequential_critical_z(n_c / policy.min_canary_messages, policy.alpha)
        fraction = n_c / (planned or policy.min_canary_messages)
        pass_z = stats.sequential_critical_z(fraction, policy.pass_alpha)
        return {
            "latency_method": "percentile",
            "latency_threshold_ms": reading.latency_threshold_ms,
            "canary_slow_rate": test.treatment_rate,
            "primary_slow_rate": test.control_rate,
            "latency_difference": test.difference,
            "latency_margin": margin,
            "latency_z": test.z,
            "latency_critical_z": critical,
            "latency_upper_bound": test.difference + pass_z * test.alt_se,
            "latency_minutes": test.strata,
            "latency_canary_messages": n_c,
        }
    ratios = [
        c / p
        for m in minutes
        if m.canary_time is not None
        and m.primary_time is not None
        and (c := m.canary_time.trimmed_mean_ms) is not None
        and (p := m.primary_time.trimmed_mean_ms)
    ]
    if not ratios:
        return {}
    return {
        "latency_method": "fallback",
        "latency_ratio": statistics.median(ratios),
        "latency_minutes": len(ratios),
    }


def evidence_of(reading: Reading, elapsed_s: float, policy: JudgePolicy) -> Evidence:
    """The evidence of one look.

    Args:
        reading: What the look read.
        elapsed_s: Seconds since the bake started.
        policy: Evidence and margins.
    """
    canary, primary = reading.canary, reading.primary
    n_c = canary.first_attempt_processed
    share, recent_share, share_upper = _share_bounds(reading, policy)
    ev = Evidence(
        canary,
        primary,
        elapsed_s,
        reading.backlog,
        canary_rate=canary.failure_rate,
        primary_rate=primary.failure_rate,
        information_fraction=n_c / policy.min_canary_messages,
        canary_share=share,
        recent_canary_share=recent_share,
        expected_canary_share=policy.expected_canary_share,
        canary_share_upper=share_upper,
    )
    merged = stats.merge_strata(_strata(reading), policy.stratum_min_canary_messages)
    test = stats.stratified_difference(merged, continuity=policy.continuity_correction)
    if test is not None:  # the upper bound's error is taken at the margin (a score-type bound)
        at = _margin(test.weighted_control_rate, policy)
        test = stats.stratified_difference(merged, continuity=policy.continuity_correction, at=at)
    planned: int | None = None
    if test is not None:
        share_for_size = share or policy.expected_canary_share or 0.1
        planned = _planned(test.weighted_control_rate, share_for_size, test.dispersion, policy)
        reach = _reachable(reading, elapsed_s, share_for_size, policy)
        critical = stats.sequential_critical_z(ev.information_fraction, policy.alpha)
        pass_z = stats.sequential_critical_z(n_c / planned, policy.pass_alpha)
        ev = dataclasses.replace(
            ev,
            difference=test.difference,
            margin=_margin(test.weighted_control_rate, policy),
            z=test.z,
            p_value=stats.normal_sf(test.z),
            critical_z=critical,
            look_alpha=stats.normal_sf(critical),
            dispersion=test.dispersion,
            strata=test.strata,
            upper_bound=test.difference + pass_z * test.alt_se,
            pass_critical_z=pass_z,
            planned_canary_messages=planned,
            least_canary_messages=None if reach is None else reach[0],
            reachable_canary_messages=None if reach is None else reach[1],
        )
    latency = _latency(reading, policy, planned)
    return dataclasses.replace(ev, **latency)  # type: ignore[arg-type]
