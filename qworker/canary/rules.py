"""The canary judge's rules: what fails a canary, what a pass still needs, when to give up.

Each rule reads one look's `Evidence` under a `JudgePolicy` and returns its reason (None or empty
when it does not apply); `qworker.canary.judge` applies them in order.
"""

from __future__ import annotations

from collections.abc import Callable

from qworker.canary import stats
from qworker.canary.evidence import Evidence
from qworker.canary.policy import JudgePolicy

__all__ = ["FAIL_CHECKS", "fail_reasons", "missing", "no_data", "passed", "unreachable"]


def _silent(ev: Evidence, policy: JudgePolicy) -> str | None:
    busy = ev.primary.processed >= policy.silent_min_primary_processed
    # A backlog shows there is work only while the primary is seen working: with no data from
    # either role the metrics say nothing about the canary (see `no_data`).
    backlog = (ev.backlog or 0) >= policy.silent_min_backlog and ev.primary.processed > 0
    work = busy or backlog
    quiet = ev.canary.processed <= policy.silent_max_processed
    if ev.elapsed_s < policy.silent_after_s or not work or not quiet:
        return None
    return (
        f"silent canary: {ev.canary.processed} processed in {ev.elapsed_s:.0f} s while "
        f"the primary processed {ev.primary.processed} (backlog {ev.backlog})"
    )


def no_data(ev: Evidence, policy: JudgePolicy) -> str | None:
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


def missing(ev: Evidence, policy: JudgePolicy) -> list[str]:
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


def passed(ev: Evidence) -> str:
    """Why a look whose evidence misses nothing passes."""
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


def unreachable(ev: Evidence, policy: JudgePolicy) -> str | None:
    """Why N canary first attempts cannot come by the max bake (None: they can, or too early).

    Args:
        ev: One look's evidence.
        policy: Evidence and margins.
    """
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


FAIL_CHECKS: tuple[Callable[[Evidence, JudgePolicy], str | None], ...] = (
    _silent,  # a silent canary also has no failures: check it first
    _starved,
    _ceiling_breached,
    _regressed,
    _slower,
)


def fail_reasons(ev: Evidence, policy: JudgePolicy) -> list[str]:
    """Every fail rule's reason that applies (empty: nothing fails the canary).

    Args:
        ev: One look's evidence.
        policy: Evidence and margins.
    """
    return [reason for check in FAIL_CHECKS if (reason := check(ev, policy)) is not None]
