"""The canary judge: an evidence-based bake that compares the canary with the primary on one queue.

`judge()` looks once at the counts since the bake started and says PASS, FAIL, INCONCLUSIVE or
CONTINUE (keep baking); `run_bake()` looks again every interval until the answer is not
CONTINUE. The judge is stateless: each look needs only the counts since the bake started
(cumulative, and per minute when the reader has them), so it runs the same in the pipeline, on a
laptop against LocalStack, in the simulation (bench/judge_sim.py) and in tests.

What is compared. Per role, first-attempt NON-SUCCESS over first attempts:
`FirstAttemptUnsucceeded` (failed, timed out, retried or rejected on the message's first delivery)
over `FirstAttemptProcessed`. First attempts only: a poison message fails on whichever version
receives it again, and a message the canary hands back reaches the primary as a redelivery, not a
first attempt.

The method (all parameters are `JudgePolicy` fields, all reachable from the CLI):

- Difference. D = canary rate - primary rate, estimated per minute and combined with
  inverse-variance weights (`stats.stratified_difference`; minutes are merged until each has
  `stratum_min_canary_messages` canary first attempts). A minute in which both roles fail alike (a
  shared downstream outage) has a large variance and weighs little. The standard error is multiplied
  by a quasi-binomial dispersion factor phi = max(1, Pearson chi-square / df) of the per-minute
  differences, so failures clustered in time (a bad task, a bad minute) widen it.
- Practical margin. m = max(`abs_margin`, `rel_margin` x primary rate), the primary's rate taken
  with the same per-minute weights (a shared outage does not widen the margin).
- FAIL on a regression: D > m and z = (D - Yates) / se0 >= c_a max(1/sqrt(t), sqrt(t)), with
  t = canary first attempts / `min_canary_messages` and c_a = Phi^-1(1 - `alpha`/3): a boundary that
  keeps the whole bake's false-alarm rate under `alpha` however often it looks
  (`stats.sequential_critical_z`). It needs `min_test_messages` canary first attempts and
  `min_test_failures` canary non-successes.
- PASS on evidence: the time-uniform upper bound U = D + c_b max(1/sqrt(s), sqrt(s)) se1 is below m,
  with s = canary first attempts / N, c_b = Phi^-1(1 - `pass_alpha`/3) and se1 the standard error
  with the two rates m apart (a score-type bound: at low rates, a canary that happened to fail
  little does not get a too small error). The same reflection argument that bounds the fail
  side's false alarms shows U covers the true difference at every look at once with probability
  >= 1 - `pass_alpha`, so a canary truly worse by more than the margin passes at most
  `pass_alpha` of the time. A pass also needs `min_canary_messages`, `min_primary_messages` and
  `min_bake_s`.
- Bake sizing. N, the planned canary sample, is the smallest at which an equal-rate canary passes
  with probability `pass_power`: N = phi p (1 - p) (c_b + z_power)^2 / ((1 - share) m^2)
  (`stats.planned_sample`), at the primary's rate p and the observed canary share, and at least
  `min_canary_messages`. Traffic sets the time: N canary first attempts at r first attempts a
  minute and canary share s take N / (r s) minutes. Once `reach_after_s` have passed, if even the
  optimistic traffic (a 99% Poisson upper bound on the canary's rate so far) cannot bring N canary
  first attempts by `max_bake_s`, the bake ends INCONCLUSIVE at that look with the reason
  "cannot reach N". Here N is the fewest with which a pass could come at all (a canary showing no
  difference, binomial variance, the most favourable primary rate in its 95% interval):
  sqrt(N_95 N_50), N_50 the planned sample at power 1/2.
- Ceiling, only where the primary is surely below it: FAIL when the canary's rate is above
  `absolute_failure_ceiling` at `ceiling_fail_confidence` (Wilson) while the primary's is below it
  at the same confidence. A shared outage raises both and never trips it.
- Dead or starved canary: with an expected canary share (`expected_canary_share`: the CLI's flag,
  or the running tasks x pollers of both ECS services), FAIL when the canary's share of first
  attempts is surely (Wilson, `share_confidence`) below `share_guard_fraction` x expected, over the
  bake or over the last (up to `share_window_minutes`) complete minutes (a canary that dies late);
  while a canary looks dead but not yet surely, "cannot reach N" waits for this guard. And,
  without an expected share, FAIL a canary that processed nothing for `silent_after_s` while the
  primary was busy or the queue had a backlog the primary was seen working on. Neither role
  reporting anything for `silent_after_s` while the queue has a backlog is no evidence about the
  canary: INCONCLUSIVE at once, naming the likely cause (both down, or the judge reading other
  series than the workers write).
- Latency by distribution. Where CloudWatch serves percentiles, the reader takes the primary's
  `latency_percentile` (p90) over the bake as a threshold and reads, per minute, how many of each
  role's messages were slower (PR statistic): the share of slow canary messages is tested against
  the primary's with the same stratified sequential test and a relative margin
  (`latency_rel_margin` x the primary's slow share); a pass also needs its upper bound below that
  margin. A timeout tail of 0.1% moves both shares by 0.1 points and cannot trip it. Where the
  server cannot (LocalStack and moto answer percentile statistics with InternalError), the fallback
  compares, per minute, each role's mean ProcessingTime without the minute's slowest message
  ((Sum - Maximum) / (SampleCount - 1)), and FAILs when the median over at least
  `latency_fallback_min_minutes` minutes of canary / primary exceeds `latency_fallback_ratio`:
  grossly slow canaries are caught, a rare timeout is dropped as the minute's maximum.
- Past `max_bake_s` without a decision: INCONCLUSIVE, which fails closed by default.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import statistics
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Final, final

from qworker.canary import stats
from qworker.exceptions import ConfigError

__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "Evidence",
    "InconclusivePolicy",
    "JudgePolicy",
    "Minute",
    "Reading",
    "RoleCounts",
    "TimeSummary",
    "Verdict",
    "judge",
    "judge_reading",
    "resolve",
    "run_bake",
]


class Decision(enum.StrEnum):
    """What one look at the evidence decides."""

    PASS = "pass"  # noqa: S105 (a verdict, not a password)
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    CONTINUE = "continue"  # not enough evidence yet: keep baking


class InconclusivePolicy(enum.StrEnum):
    """What an inconclusive bake means for the pipeline."""

    FAIL = "fail"  # fail closed: no evidence, no promotion (the default)
    PASS = "pass"  # noqa: S105 (a policy name, not a password): promote anyway
    REPORT = "report"  # leave it to the caller (the CLI exits 3)


@final
@dataclasses.dataclass(frozen=True, slots=True)
class RoleCounts:
    """One role's counts (since the bake started, or in one minute)."""

    first_attempt_processed: int = 0
    first_attempt_unsucceeded: int = 0  # failed, timed out, retried or rejected
    processed: int = 0
    processing_time_avg_ms: float | None = None  # mean over all processed; None without data

    def __post_init__(self) -> None:
        """Reject counts no worker can emit."""
        if min(self.first_attempt_processed, self.first_attempt_unsucceeded, self.processed) < 0:
            raise ValueError(f"counts must not be negative: {self}")
        if self.first_attempt_unsucceeded > self.first_attempt_processed:
            raise ValueError(f"more first-attempt non-successes than first attempts: {self}")

    @property
    def failure_rate(self) -> float | None:
        """First-attempt non-success rate, or None before the first attempt."""
        if self.first_attempt_processed == 0:
            return None
        return self.first_attempt_unsucceeded / self.first_attempt_processed


@final
@dataclasses.dataclass(frozen=True, slots=True)
class TimeSummary:
    """One role's ProcessingTime in one minute: CloudWatch's SampleCount, Sum and Maximum.

    `slow`, where the server serves percentile statistics, counts the messages slower than the
    primary's percentile over the bake.
    """

    count: int
    sum_ms: float
    max_ms: float
    slow: int | None = None

    @property
    def trimmed_mean_ms(self) -> float | None:
        """The mean without the slowest message, or None below two messages."""
        if self.count < 2:  # noqa: PLR2004 (one message to drop, one to keep)
            return None
        return max(self.sum_ms - self.max_ms, 0.0) / (self.count - 1)


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Minute:
    """Both roles' counts in one CloudWatch period (the last one may be partial)."""

    canary: RoleCounts
    primary: RoleCounts
    canary_time: TimeSummary | None = None
    primary_time: TimeSummary | None = None
    at: datetime | None = None  # the period's start


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """What one look reads: both roles' counts since the start, and the queue's visible backlog.

    `minutes` holds the same counts per minute when the reader has them; `latency_threshold_ms` the
    primary's percentile when the server served percentile statistics.
    """

    canary: RoleCounts
    primary: RoleCounts
    backlog: int | None = None
    minutes: tuple[Minute, ...] = ()
    latency_threshold_ms: float | None = None


_HALF: Final = 0.5  # the least confidence a one-sided bound can have


@final
@dataclasses.dataclass(frozen=True, slots=True)
class JudgePolicy:
    """How much evidence the judge wants and how much worse the canary may be.

    The module docstring gives the method; bench/JUDGE.md what these defaults measured.
    """

    min_canary_messages: int = 1000  # the fail test's planned sample; least canary n to pass
    min_primary_messages: int = 100  # primary first attempts to pass (something to compare with)
    min_bake_s: float = 600.0
    max_bake_s: float = 3600.0  # no decision by then: inconclusive
    alpha: float = 0.025  # one-sided false-alarm rate of the whole bake, all looks together
    pass_alpha: float = 0.05  # a canary worse by the margin passes at most this often
    pass_power: float = 0.95  # bake sizing: an equal-rate canary passes by N this often
    abs_margin: float = 0.003  # the canary may be this much worse (absolute rate) ...
    rel_margin: float = 0.75  # ... or this much relative to the primary's rate, whichever is larger
    continuity_correction: bool = True
    min_test_messages: int = 50  # canary first attempts before the comparison may fail it
    min_test_failures: int = 3  # canary non-successes before the comparison may fail it
    stratum_min_canary_messages: int = 50  # minutes are merged until each has this many
    absolute_failure_ceiling: float = 0.05  # fail above it, where the primary is surely below it
    ceiling_min_messages: int = 20
    ceiling_fail_confidence: float = 0.999
    expected_canary_share: float | None = None  # None: no share guard
    share_guard_fraction: float = 0.5  # fail when the share is surely below this x expected
    share_confidence: float = 0.999
    share_min_messages: int = 200  # first attempts (both roles) before the share guard judges
    share_window_minutes: int = 5  # trailing complete minutes, for a canary that dies late
    latency_percentile: float = 90.0  # the primary's percentile that defines "slow"
    latency_rel_margin: float = 0.5  # the canary's slow share may exceed the primary's by this x
    latency_min_messages: int = 200  # canary messages with a latency before it is judged
    latency_fallback_ratio: float = 1.5  # fallback: median per-minute trimmed-mean ratio limit
    latency_fallback_min_minutes: int = 3
    reach_after_s: float = 120.0  # the first look that may say "cannot reach N"
    silent_after_s: float = 300.0  # a canary that processed nothing this long while there is work
    silent_max_processed: int = 0
    silent_min_backlog: int = 1  # visible messages that show there is work, as do ...
    silent_min_primary_processed: int = 200  # ... these (a 10% canary misses all: p ~ 1e-10)
    inconclusive_policy: InconclusivePolicy = InconclusivePolicy.FAIL

    def __post_init__(self) -> None:
        """Reject policies that cannot work.

        Raises:
            ConfigError: A value is out of range; the message names it.
        """
        share = self.expected_canary_share
        checks = {
            "min_canary_messages": self.min_canary_messages >= 1,
            "min_primary_messages": self.min_primary_messages >= 0,
            "min_bake_s": 0.0 <= self.min_bake_s <= self.max_bake_s,
            "alpha": 0.0 < self.alpha < 1.0,
            "pass_alpha": 0.0 < self.pass_alpha < 1.0,
            "pass_power": _HALF < self.pass_power < 1.0,
            "abs_margin": self.abs_margin >= 0.0,
            "rel_margin": self.rel_margin >= 0.0,
            "stratum_min_canary_messages": self.stratum_min_canary_messages >= 1,
            "absolute_failure_ceiling": 0.0 < self.absolute_failure_ceiling <= 1.0,
            "ceiling_fail_confidence": _HALF <= self.ceiling_fail_confidence < 1.0,
            "expected_canary_share": share is None or 0.0 < share < 1.0,
            "share_guard_fraction": 0.0 < self.share_guard_fraction <= 1.0,
            "share_confidence": _HALF <= self.share_confidence < 1.0,
            "share_window_minutes": self.share_window_minutes >= 1,
            "latency_percentile": 0.0 < self.latency_percentile < 100.0,  # noqa: PLR2004
            "latency_rel_margin": self.latency_rel_margin > 0.0,
            "latency_fallback_ratio": self.latency_fallback_ratio > 1.0,
            "latency_fallback_min_minutes": self.latency_fallback_min_minutes >= 1,
            "reach_after_s": self.reach_after_s >= 0.0,
        }
        if self.abs_margin == 0.0 and self.rel_margin == 0.0:
            checks["abs_margin"] = False  # no margin: nothing could ever pass
        if problems := [name for name, ok in checks.items() if not ok]:
            raise ConfigError(f"invalid canary judge policy: {', '.join(problems)} out of range")


DEFAULT_POLICY = JudgePolicy()


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
    windows = [(n_c, n_c + n_p)]
    recent_share = None
    complete = reading.minutes[:-1]  # the last minute may be partial, or one role not flushed yet
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
    bare = stats.planned_sample(rate, margin, share, policy.pass_alpha, _HALF)
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
    minutes = [m for m in reading.minutes if m.canary_time and m.primary_time]
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


def _evidence(reading: Reading, elapsed_s: float, policy: JudgePolicy) -> Evidence:
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


def _silent(ev: Evidence, policy: JudgePolicy) -> str | None:
    busy = ev.primary.processed >= policy.silent_min_primary_processed
    # A backlog shows there is work only while the primary is seen working: with no data from
    # either role the metrics say nothing about the canary (see `_no_data`).
    backlog = (ev.backlog or 0) >= policy.silent_min_backlog and ev.primary.processed > 0
    work = busy or backlog
    quiet = ev.canary.processed <= policy.silent_max_processed
    if ev.elapsed_s < policy.silent_after_s or not work or not quiet:
        return None
    return (
        f"silent canary: {ev.canary.processed} processed in {ev.elapsed_s:.0f} s while "
        f"the primary processed {ev.primary.processed} (backlog {ev.backlog})"
    )


def _no_data(ev: Evidence, policy: JudgePolicy) -> str | None:
    """Why the bake cannot judge at all: neither role reported anything while there is work."""
    quiet = ev.canary.processed == 0 and ev.primary.processed == 0
    work = (ev.backlog or 0) >= policy.silent_min_backlog
    if ev.elapsed_s < policy.silent_after_s or not quiet or not work:
        return None
    return (
        f"no metrics from either role in {ev.elapsed_s:.0f} s while the queue has a backlog of "
        f"{ev.backlog}: both roles are down, or the judge reads other series than the workers "
        "write (check --namespace, --service and --queue against the workers' settings)"
    )


def _starved(ev: Evidence, policy: JudgePolicy) -> str | None:
    expected, upper = ev.expected_canary_share, ev.canary_share_upper
    if expected is None or upper is None or upper >= policy.share_guard_fraction * expected:
        return None
    share = "-" if ev.canary_share is None else f"{ev.canary_share:.2%}"
    return (
        f"dead or starved canary: its share of first attempts is {share} over the bake (upper "
        f"bound {upper:.2%} at {policy.share_confidence:.1%}, bake or last "
        f"{policy.share_window_minutes} min), far below {policy.share_guard_fraction:g} x the "
        f"expected {expected:.2%}"
    )


def _ceiling_breached(ev: Evidence, policy: JudgePolicy) -> str | None:
    c, p, ceiling = ev.canary, ev.primary, policy.absolute_failure_ceiling
    if c.first_attempt_processed < policy.ceiling_min_messages:
        return None
    lower = stats.wilson_lower(
        c.first_attempt_unsucceeded, c.first_attempt_processed, policy.ceiling_fail_confidence
    )
    primary_upper = stats.wilson_upper(
        p.first_attempt_unsucceeded, p.first_attempt_processed, policy.ceiling_fail_confidence
    )
    if lower <= ceiling or primary_upper >= ceiling:
        return None
    return (
        f"canary first-attempt non-success rate {ev.canary_rate:.2%} ({c.first_attempt_unsucceeded}"
        f"/{c.first_attempt_processed}) is above the ceiling {ceiling:.2%} (lower bound "
        f"{lower:.2%}) while the primary's is below it (upper bound {primary_upper:.2%})"
    )


def _regressed(ev: Evidence, policy: JudgePolicy) -> str | None:
    d, margin, z, critical = ev.difference, ev.margin, ev.z, ev.critical_z
    if d is None or margin is None or z is None or critical is None:
        return None
    few = ev.canary.first_attempt_processed < policy.min_test_messages
    if few or ev.canary.first_attempt_unsucceeded < policy.min_test_failures:
        return None
    if d <= margin or z < critical:
        return None
    return (
        f"canary first-attempt non-success rate {ev.canary_rate:.2%} vs primary "
        f"{ev.primary_rate:.2%}: worse by {d:.2%} > margin {margin:.2%}, z {z:.2f} >= "
        f"{critical:.2f} (p {ev.p_value:.2g}, dispersion {ev.dispersion:.2f})"
    )


def _slower(ev: Evidence, policy: JudgePolicy) -> str | None:
    if ev.latency_method == "fallback":
        ratio = ev.latency_ratio
        enough = ev.latency_minutes >= policy.latency_fallback_min_minutes
        if ratio is None or not enough or ratio <= policy.latency_fallback_ratio:
            return None
        return (
            f"canary is slower: median per-minute processing time (slowest message dropped) "
            f"{ratio:.2f}x the primary's over {ev.latency_minutes} min "
            f"(limit {policy.latency_fallback_ratio:g}x)"
        )
    d, margin, z, critical = (
        ev.latency_difference,
        ev.latency_margin,
        ev.latency_z,
        ev.latency_critical_z,
    )
    if d is None or margin is None or z is None or critical is None:
        return None
    if ev.latency_canary_messages < policy.latency_min_messages or d <= margin or z < critical:
        return None
    return (
        f"canary is slower: {ev.canary_slow_rate:.1%} of its messages took longer than the "
        f"primary's p{policy.latency_percentile:g} ({ev.latency_threshold_ms:.1f} ms) vs "
        f"{ev.primary_slow_rate:.1%} of the primary's: worse by {d:.1%} > margin {margin:.1%}, "
        f"z {z:.2f} >= {critical:.2f}"
    )


def _missing(ev: Evidence, policy: JudgePolicy) -> list[str]:
    """What a pass still needs (empty: pass)."""
    c, p = ev.canary, ev.primary
    upper, margin = ev.upper_bound, ev.margin
    bound = "-" if upper is None else f"{upper:+.2%}"
    needs = {
        f"canary first attempts {c.first_attempt_processed} < {policy.min_canary_messages}": (
            c.first_attempt_processed < policy.min_canary_messages
        ),
        f"primary first attempts {p.first_attempt_processed} < {policy.min_primary_messages}": (
            p.first_attempt_processed < policy.min_primary_messages
        ),
        f"baked {ev.elapsed_s:.0f} s < {policy.min_bake_s:.0f} s": ev.elapsed_s < policy.min_bake_s,
        (
            "no comparison yet: a role has no first attempts"
            if upper is None or margin is None
            else f"upper bound on canary - primary {bound} not yet below the margin "
            f"{margin:.2%} (planned canary sample {ev.planned_canary_messages})"
        ): upper is None or margin is None or upper >= margin,
    }
    l_upper, l_margin = ev.latency_upper_bound, ev.latency_margin
    if ev.latency_method == "percentile" and l_upper is not None and l_margin is not None:
        needs[
            f"upper bound on the slow-share difference {l_upper:+.2%} not yet below the latency "
            f"margin {l_margin:.2%}"
        ] = l_upper >= l_margin
    return [need for need, missing in needs.items() if missing]


def _passed(ev: Evidence) -> str:
    c, rate, primary = ev.canary, ev.canary_rate or 0.0, ev.primary_rate
    versus = "no primary data" if primary is None else f"primary {primary:.2%}"
    return (
        f"canary first-attempt non-success rate {rate:.2%} ({c.first_attempt_unsucceeded}/"
        f"{c.first_attempt_processed}) vs {versus}: canary - primary is surely below "
        f"{ev.margin or 0.0:.2%} (upper bound {ev.upper_bound or 0.0:+.2%})"
    )


def _guard_pending(ev: Evidence, policy: JudgePolicy) -> bool:
    """Whether the canary looks dead or starved, but not yet surely: the guards decide, not N."""
    if ev.canary.processed == 0 and ev.primary.processed > 0:
        return True
    expected = ev.expected_canary_share
    shares = [s for s in (ev.canary_share, ev.recent_canary_share) if s is not None]
    limit = policy.share_guard_fraction * (expected or 0.0)
    return expected is not None and any(s < limit for s in shares)


def _unreachable(ev: Evidence, policy: JudgePolicy) -> str | None:
    planned, reachable = ev.least_canary_messages, ev.reachable_canary_messages
    if planned is None or reachable is None or reachable >= planned:
        return None
    if _guard_pending(ev, policy):
        return None
    return (
        f"cannot reach N = {planned} canary first attempts (the fewest a pass could come with) by "
        f"the max bake "
        f"{policy.max_bake_s:.0f} s: at most {reachable:.0f} at the traffic so far "
        f"({ev.canary.first_attempt_processed} canary first attempts in {ev.elapsed_s:.0f} s); "
        f"raise --max-bake-s or the canary's share, or widen --rel-margin/--abs-margin"
    )


_FAIL_CHECKS: tuple[Callable[[Evidence, JudgePolicy], str | None], ...] = (
    _silent,  # a silent canary also has no failures: check it first
    _starved,
    _ceiling_breached,
    _regressed,
    _slower,
)


def judge(
    canary: RoleCounts,
    primary: RoleCounts,
    elapsed_s: float,
    backlog: int | None = None,
    policy: JudgePolicy = DEFAULT_POLICY,
    *,
    minutes: Sequence[Minute] = (),
    latency_threshold_ms: float | None = None,
) -> Verdict:
    """Judge the canary on the counts since the bake started.

    Args:
        canary: The canary's counts since the start of the bake.
        primary: The primary's counts over the same window.
        elapsed_s: Seconds since the bake started.
        backlog: Visible messages in the queue now, if known (for the silent-canary guard).
        policy: Evidence and margins.
        minutes: The same counts per minute, oldest first (none: one stratum).
        latency_threshold_ms: The primary's percentile the minutes' `slow` counts refer to.

    Returns:
        FAIL with every failed check as a reason; else PASS when the evidence suffices; else
        INCONCLUSIVE when N cannot be reached or past `max_bake_s`; else CONTINUE, with what is
        still missing as reasons.
    """
    reading = Reading(canary, primary, backlog, tuple(minutes), latency_threshold_ms)
    return judge_reading(reading, elapsed_s, policy)


def judge_reading(
    reading: Reading, elapsed_s: float, policy: JudgePolicy = DEFAULT_POLICY
) -> Verdict:
    """`judge()` on a `Reading`.

    Args:
        reading: What the look read.
        elapsed_s: Seconds since the bake started.
        policy: Evidence and margins.
    """
    ev = _evidence(reading, elapsed_s, policy)
    failures = [reason for check in _FAIL_CHECKS if (reason := check(ev, policy)) is not None]
    if failures:
        return Verdict(Decision.FAIL, tuple(failures), ev)
    missing = _missing(ev, policy)
    if not missing:
        return Verdict(Decision.PASS, (_passed(ev),), ev)
    if (unreachable := _no_data(ev, policy) or _unreachable(ev, policy)) is not None:
        return Verdict(Decision.INCONCLUSIVE, (unreachable, *missing), ev)
    if elapsed_s >= policy.max_bake_s:
        reasons = (f"no decision after {policy.max_bake_s:.0f} s", *missing)
        return Verdict(Decision.INCONCLUSIVE, reasons, ev)
    return Verdict(Decision.CONTINUE, tuple(missing), ev)


def resolve(decision: Decision, policy: InconclusivePolicy) -> Decision:
    """The decision the pipeline acts on: INCONCLUSIVE becomes FAIL or PASS unless policy is REPORT.

    Args:
        decision: A verdict's decision.
        policy: What inconclusive means.
    """
    if decision is not Decision.INCONCLUSIVE or policy is InconclusivePolicy.REPORT:
        return decision
    return Decision.FAIL if policy is InconclusivePolicy.FAIL else Decision.PASS


def run_bake(
    read_fn: Callable[[], Reading],
    clock: Callable[[], float],
    sleep_fn: Callable[[float], object],
    policy: JudgePolicy = DEFAULT_POLICY,
    *,
    interval_s: float = 60.0,
    started_s: float | None = None,
    on_look: Callable[[Verdict], object] | None = None,
) -> Verdict:
    """Look every `interval_s` until the judge decides; the last look lands on `max_bake_s`.

    Args:
        read_fn: Reads the counts since the start of the bake.
        clock: Seconds, on the same clock as `started_s` (e.g. `time.time`).
        sleep_fn: Sleeps for the given seconds (a fake clock's advance in tests).
        policy: Evidence and margins.
        interval_s: Seconds between looks.
        started_s: When the bake started on `clock`; default: now.
        on_look: Called with every verdict, terminal or not (progress output).

    Returns:
        The first verdict that is not CONTINUE.

    Raises:
        ValueError: `interval_s` is not positive.
    """
    if interval_s <= 0.0:
        raise ValueError(f"interval_s must be positive, got {interval_s}")
    start = clock() if started_s is None else started_s
    while True:
        reading = read_fn()
        elapsed_s = clock() - start
        verdict = judge_reading(reading, elapsed_s, policy)
        if on_look is not None:
            on_look(verdict)
        if verdict.terminal:
            return verdict
        sleep_fn(min(interval_s, policy.max_bake_s - elapsed_s))
