"""The canary judge: an evidence-based bake that compares the canary with the primary on one queue.

`judge()` looks once at cumulative counts and says PASS, FAIL, INCONCLUSIVE or CONTINUE (keep
baking); `run_bake()` looks again every interval until the answer is not CONTINUE. The judge is
stateless: each look needs only the counts since the bake started, so it runs the same in the
pipeline, on a laptop against LocalStack and in tests.

Failing can come early: worse than the primary by more than the practical margin AND significant
at the sequential boundary (which keeps the bake's false-alarm rate under `alpha` however often it
looks), above the absolute ceiling, silent, or slow. Passing needs the evidence: enough canary
first attempts and the minimum bake time. First attempts only: a poison message fails on whichever
version receives it, so retries would blur the comparison.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable
from typing import Final, final

from qworker.canary import stats
from qworker.exceptions import ConfigError

__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "Evidence",
    "InconclusivePolicy",
    "JudgePolicy",
    "Reading",
    "RoleCounts",
    "Verdict",
    "judge",
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
    """One role's cumulative counts since the bake started."""

    first_attempt_processed: int = 0
    first_attempt_failed: int = 0
    processed: int = 0
    processing_time_avg_ms: float | None = None  # mean over all processed; None without data

    def __post_init__(self) -> None:
        """Reject counts no worker can emit."""
        if min(self.first_attempt_processed, self.first_attempt_failed, self.processed) < 0:
            raise ValueError(f"counts must not be negative: {self}")
        if self.first_attempt_failed > self.first_attempt_processed:
            raise ValueError(f"more first-attempt failures than first attempts: {self}")

    @property
    def failure_rate(self) -> float | None:
        """First-attempt failure rate, or None before the first attempt."""
        if self.first_attempt_processed == 0:
            return None
        return self.first_attempt_failed / self.first_attempt_processed


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Reading:
    """What one look reads: both roles' counts and, when known, the queue's visible backlog."""

    canary: RoleCounts
    primary: RoleCounts
    backlog: int | None = None


_HALF: Final = 0.5  # the least confidence a one-sided bound can have


@final
@dataclasses.dataclass(frozen=True, slots=True)
class JudgePolicy:
    """How much evidence the judge wants and how much worse the canary may be.

    The defaults were measured by simulation (tests/test_canary_judge.py): with both roles at 1%
    and 9:1 primary:canary traffic, a bake looking every minute raised false alarms in 0.5-3.3% of
    runs (target <= 5%); a canary at 3% against a primary at 1% failed within 1000 canary first
    attempts in 84-99% of runs (target >= 80%).
    """

    min_canary_messages: int = 1000  # canary first attempts to pass; the test's planned sample
    min_primary_messages: int = 100  # primary first attempts to pass (something to compare with)
    min_bake_s: float = 600.0
    max_bake_s: float = 3600.0  # no decision by then: inconclusive
    alpha: float = 0.05  # one-sided false-alarm rate of the whole bake, all looks together
    abs_margin: float = 0.005  # the canary may be this much worse (absolute rate) ...
    rel_margin: float = 0.5  # ... or this much relative to the primary's rate, whichever is larger
    continuity_correction: bool = True
    min_test_messages: int = 50  # canary first attempts before the comparison may fail it
    min_test_failures: int = 3  # canary first-attempt failures before the comparison may fail it
    absolute_failure_ceiling: float = 0.05  # no canary above this passes, whatever the primary does
    ceiling_min_messages: int = 20
    ceiling_fail_confidence: float = 0.999  # fail when above the ceiling this surely (every look)
    ceiling_pass_confidence: float = 0.95  # pass only when below the ceiling this surely
    latency_ratio_limit: float = 1.5  # canary mean ProcessingTime / the primary's
    latency_min_messages: int = 500  # processed per role before the (outlier-prone) mean counts
    latency_min_diff_ms: float = 5.0  # and slower by at least this much (1 ms vs 2 ms is noise)
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
        checks = {
            "min_canary_messages": self.min_canary_messages >= 1,
            "min_bake_s": 0.0 <= self.min_bake_s <= self.max_bake_s,
            "alpha": 0.0 < self.alpha < 1.0,
            "abs_margin": self.abs_margin >= 0.0,
            "rel_margin": self.rel_margin >= 0.0,
            "absolute_failure_ceiling": 0.0 < self.absolute_failure_ceiling <= 1.0,
            "ceiling_fail_confidence": _HALF <= self.ceiling_fail_confidence < 1.0,
            "ceiling_pass_confidence": _HALF <= self.ceiling_pass_confidence < 1.0,
            "latency_ratio_limit": self.latency_ratio_limit > 0.0,
        }
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
    difference: float | None = None  # canary rate - primary rate
    margin: float | None = None  # the practical margin the difference must exceed
    information_fraction: float = 0.0  # canary first attempts / min_canary_messages
    z: float | None = None
    p_value: float | None = None  # one-sided, of this look alone
    critical_z: float | None = None
    look_alpha: float | None = None  # the p-value this look needed (the boundary as a probability)
    canary_rate_lower: float | None = None  # Wilson bound at ceiling_fail_confidence
    canary_rate_upper: float | None = None  # Wilson bound at ceiling_pass_confidence
    latency_ratio: float | None = None


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


def _evidence(
    canary: RoleCounts,
    primary: RoleCounts,
    elapsed_s: float,
    backlog: int | None,
    policy: JudgePolicy,
) -> Evidence:
    n_c, f_c = canary.first_attempt_processed, canary.first_attempt_failed
    n_p, f_p = primary.first_attempt_processed, primary.first_attempt_failed
    fraction = n_c / policy.min_canary_messages
    c_ms, p_ms = canary.processing_time_avg_ms, primary.processing_time_avg_ms
    ev = Evidence(
        canary,
        primary,
        elapsed_s,
        backlog,
        canary_rate=canary.failure_rate,
        primary_rate=primary.failure_rate,
        information_fraction=fraction,
        canary_rate_lower=stats.wilson_lower(f_c, n_c, policy.ceiling_fail_confidence),
        canary_rate_upper=stats.wilson_upper(f_c, n_c, policy.ceiling_pass_confidence),
        latency_ratio=c_ms / p_ms if c_ms is not None and p_ms else None,
    )
    if n_c == 0 or n_p == 0:
        return ev
    test = stats.two_proportion_test(f_c, n_c, f_p, n_p, continuity=policy.continuity_correction)
    critical = stats.sequential_critical_z(fraction, policy.alpha)
    return dataclasses.replace(
        ev,
        difference=test.difference,
        margin=stats.practical_margin(test.control_rate, policy.abs_margin, policy.rel_margin),
        z=test.z,
        p_value=test.p_value,
        critical_z=critical,
        look_alpha=stats.normal_sf(critical),
    )


def _silent(ev: Evidence, policy: JudgePolicy) -> str | None:
    busy = ev.primary.processed >= policy.silent_min_primary_processed
    work = busy or (ev.backlog or 0) >= policy.silent_min_backlog
    quiet = ev.canary.processed <= policy.silent_max_processed
    if ev.elapsed_s < policy.silent_after_s or not work or not quiet:
        return None
    return (
        f"silent canary: {ev.canary.processed} processed in {ev.elapsed_s:.0f} s while "
        f"the primary processed {ev.primary.processed} (backlog {ev.backlog})"
    )


def _ceiling_breached(ev: Evidence, policy: JudgePolicy) -> str | None:
    n, lower = ev.canary.first_attempt_processed, ev.canary_rate_lower
    if n < policy.ceiling_min_messages or lower is None or lower <= policy.absolute_failure_ceiling:
        return None
    return (
        f"canary first-attempt failure rate {ev.canary_rate:.2%} ({ev.canary.first_attempt_failed}"
        f"/{n}) is above the ceiling {policy.absolute_failure_ceiling:.2%} (lower bound "
        f"{lower:.2%} at {policy.ceiling_fail_confidence:.1%})"
    )


def _regressed(ev: Evidence, policy: JudgePolicy) -> str | None:
    d, margin, z, critical = ev.difference, ev.margin, ev.z, ev.critical_z
    if d is None or margin is None or z is None or critical is None:
        return None
    few = ev.canary.first_attempt_processed < policy.min_test_messages
    if few or ev.canary.first_attempt_failed < policy.min_test_failures:
        return None
    if d <= margin or z < critical:
        return None
    return (
        f"canary first-attempt failure rate {ev.canary_rate:.2%} vs primary {ev.primary_rate:.2%}: "
        f"worse by {d:.2%} > margin {margin:.2%}, z {z:.2f} >= {critical:.2f} (p {ev.p_value:.2g})"
    )


def _slower(ev: Evidence, policy: JudgePolicy) -> str | None:
    c, p = ev.canary.processing_time_avg_ms, ev.primary.processing_time_avg_ms
    if ev.latency_ratio is None or c is None or p is None:
        return None
    few = min(ev.canary.processed, ev.primary.processed) < policy.latency_min_messages
    if few or ev.latency_ratio <= policy.latency_ratio_limit or c - p < policy.latency_min_diff_ms:
        return None
    return (
        f"canary mean processing time {c:.1f} ms is {ev.latency_ratio:.2f}x the primary's "
        f"{p:.1f} ms (limit {policy.latency_ratio_limit:.2f}x)"
    )


def _missing(ev: Evidence, policy: JudgePolicy) -> list[str]:
    """What a pass still needs (empty: pass)."""
    c, p, upper = ev.canary, ev.primary, ev.canary_rate_upper
    needs = {
        f"canary first attempts {c.first_attempt_processed} < {policy.min_canary_messages}": (
            c.first_attempt_processed < policy.min_canary_messages
        ),
        f"primary first attempts {p.first_attempt_processed} < {policy.min_primary_messages}": (
            p.first_attempt_processed < policy.min_primary_messages
        ),
        f"baked {ev.elapsed_s:.0f} s < {policy.min_bake_s:.0f} s": ev.elapsed_s < policy.min_bake_s,
        f"canary failure rate not yet surely below the ceiling "
        f"{policy.absolute_failure_ceiling:.2%} (upper bound {upper or 1.0:.2%})": (
            upper is None or upper > policy.absolute_failure_ceiling
        ),
    }
    return [need for need, missing in needs.items() if missing]


def _passed(ev: Evidence) -> str:
    c, rate, primary = ev.canary, ev.canary_rate or 0.0, ev.primary_rate
    versus = "no primary data" if primary is None else f"primary {primary:.2%}"
    return (
        f"canary first-attempt failure rate {rate:.2%} ({c.first_attempt_failed}/"
        f"{c.first_attempt_processed}) vs {versus}: no significant regression beyond the margin"
    )


_FAIL_CHECKS: tuple[Callable[[Evidence, JudgePolicy], str | None], ...] = (
    _silent,  # a silent canary also has no failures: check it first
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
) -> Verdict:
    """Judge the canary on cumulative counts since the bake started.

    Args:
        canary: The canary's counts since the start of the bake.
        primary: The primary's counts over the same window.
        elapsed_s: Seconds since the bake started.
        backlog: Visible messages in the queue now, if known (for the silent-canary guard).
        policy: Evidence and margins.

    Returns:
        FAIL with every failed check as a reason; else PASS when the evidence suffices; else
        INCONCLUSIVE past `max_bake_s`; else CONTINUE, with what is still missing as reasons.
    """
    ev = _evidence(canary, primary, elapsed_s, backlog, policy)
    failures = [reason for check in _FAIL_CHECKS if (reason := check(ev, policy)) is not None]
    if failures:
        return Verdict(Decision.FAIL, tuple(failures), ev)
    missing = _missing(ev, policy)
    if not missing:
        return Verdict(Decision.PASS, (_passed(ev),), ev)
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
        read_fn: Reads the cumulative counts since the start of the bake.
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
        verdict = judge(reading.canary, reading.primary, elapsed_s, reading.backlog, policy)
        if on_look is not None:
            on_look(verdict)
        if verdict.terminal:
            return verdict
        sleep_fn(min(interval_s, policy.max_bake_s - elapsed_s))
