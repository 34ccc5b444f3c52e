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

The parts: `policy` (the parameters), `readings` (what a look reads), `evidence` (the numbers a
look computes), `rules` (what fails, passes or ends the bake) and `stats` (the statistics).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from qworker.canary import rules
from qworker.canary.evidence import Evidence, Verdict, evidence_of
from qworker.canary.policy import DEFAULT_POLICY, Decision, InconclusivePolicy, JudgePolicy
from qworker.canary.readings import Minute, Reading, RoleCounts, TimeSummary

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
    ev = evidence_of(reading, elapsed_s, policy)
    if failures := rules.fail_reasons(ev, policy):
        return Verdict(Decision.FAIL, tuple(failures), ev)
    missing = rules.missing(ev, policy)
    if not missing:
        return Verdict(Decision.PASS, (rules.passed(ev),), ev)
    if (unreachable := rules.no_data(ev, policy) or rules.unreachable(ev, policy)) is not None:
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
