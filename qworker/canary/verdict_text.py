"""The canary judge's verdict as text: the readable table, the progress line, the JSON document.

`qworker canary judge` prints these (`qworker.canary.cli`).
"""

from __future__ import annotations

import dataclasses

from qworker.canary.evidence import Evidence, Verdict
from qworker.canary.policy import Decision, JudgePolicy

__all__ = ["format_progress", "format_verdict", "verdict_json"]


def format_progress(verdict: Verdict) -> str:
    """One look's progress line (the bake's running commentary on stderr).

    Args:
        verdict: The look's verdict.

    Returns:
        One line, ending with a newline.
    """
    ev = verdict.evidence
    z = "-" if ev.z is None or ev.critical_z is None else f"{ev.z:.2f} (needs {ev.critical_z:.2f})"
    bound = "-" if ev.upper_bound is None else f"{ev.upper_bound:+.2%}"
    return (
        f"[{ev.elapsed_s:6.0f} s] {verdict.decision.value}: canary "
        f"{ev.canary.first_attempt_unsucceeded}/{ev.canary.first_attempt_processed} unsucceeded "
        f"({_pct(ev.canary_rate)}), primary {ev.primary.first_attempt_unsucceeded}/"
        f"{ev.primary.first_attempt_processed} ({_pct(ev.primary_rate)}), z {z}, upper bound "
        f"{bound} (margin {_pct(ev.margin)})\n"
    )


def verdict_json(
    verdict: Verdict, final: Decision, policy: JudgePolicy, exit_code: int
) -> dict[str, object]:
    """The verdict, its evidence and the policy as one JSON-ready document.

    Args:
        verdict: The judge's verdict.
        final: The decision after the inconclusive policy.
        policy: The policy it was judged under.
        exit_code: The command's exit code.
    """
    return {
        "decision": verdict.decision.value,
        "final_decision": final.value,
        "exit_code": exit_code,
        "reasons": list(verdict.reasons),
        "evidence": dataclasses.asdict(verdict.evidence),
        "policy": dataclasses.asdict(policy),
    }


def _pct(rate: float | None, spec: str = ".2%") -> str:
    return "-" if rate is None else format(rate, spec)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _latency_fact(ev: Evidence, policy: JudgePolicy) -> str:
    if ev.latency_method == "percentile":
        return (
            f"{_pct(ev.canary_slow_rate, '.1%')} vs {_pct(ev.primary_slow_rate, '.1%')} slower "
            f"than the primary's p{policy.latency_percentile:g} "
            f"({_num(ev.latency_threshold_ms, '.1f')} ms); z {_num(ev.latency_z, '.2f')} / "
            f"{_num(ev.latency_critical_z, '.2f')}, margin {_pct(ev.latency_margin, '.1%')}"
        )
    if ev.latency_method == "fallback":
        return (
            f"median per-minute trimmed-mean ratio {_num(ev.latency_ratio, '.2f')} over "
            f"{ev.latency_minutes} min (limit {policy.latency_fallback_ratio:g}; no percentiles)"
        )
    return "-"


def format_verdict(verdict: Verdict, final: Decision, policy: JudgePolicy) -> str:
    """The verdict and its evidence as a readable table.

    Args:
        verdict: The judge's verdict.
        final: The decision after the inconclusive policy.
        policy: The policy it was judged under (for the thresholds).

    Returns:
        Lines of text, ending with a newline.
    """
    ev = verdict.evidence
    c, p = ev.canary, ev.primary
    rows = [
        ("", "canary", "primary"),
        ("first-attempt processed", str(c.first_attempt_processed), str(p.first_attempt_processed)),
        (
            "first-attempt unsucceeded",
            str(c.first_attempt_unsucceeded),
            str(p.first_attempt_unsucceeded),
        ),
        ("first-attempt non-success rate", _pct(ev.canary_rate), _pct(ev.primary_rate)),
        ("processed (all attempts)", str(c.processed), str(p.processed)),
        (
            "mean processing time (ms)",
            _num(c.processing_time_avg_ms, ".1f"),
            _num(p.processing_time_avg_ms, ".1f"),
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    table = [f"{label:<{width}}{a:>12}{b:>12}" for label, a, b in rows]
    title = verdict.decision.value.upper()
    if final is not verdict.decision:
        title += f" -> {final.value.upper()} (inconclusive policy: {policy.inconclusive_policy})"
    expected = _pct(ev.expected_canary_share, ".1%")
    facts = [
        ("difference", f"{_num(ev.difference, '+.2%')} (margin {_pct(ev.margin)})"),
        ("z / critical z", f"{_num(ev.z, '.2f')} / {_num(ev.critical_z, '.2f')}"),
        ("p-value / look alpha", f"{_num(ev.p_value, '.3g')} / {_num(ev.look_alpha, '.3g')}"),
        ("upper bound", f"{_num(ev.upper_bound, '+.2%')} (pass below the margin)"),
        ("dispersion", f"{_num(ev.dispersion, '.2f')} over {ev.strata} strata"),
        (
            "canary sample",
            (
                f"{c.first_attempt_processed} of N = {ev.planned_canary_messages or '-'} "
                f"(reachable by max bake: {_num(ev.reachable_canary_messages, '.0f')})"
            ),
        ),
        ("canary share", f"{_pct(ev.canary_share, '.1%')} (expected {expected})"),
        ("latency", _latency_fact(ev, policy)),
        ("backlog", "-" if ev.backlog is None else str(ev.backlog)),
        ("baked", f"{ev.elapsed_s:.0f} s (min {policy.min_bake_s:g}, max {policy.max_bake_s:g})"),
    ]
    lines = [f"canary judgement: {title}", "", *table, ""]
    lines += [f"{label:<{width}}{value}" for label, value in facts]
    lines += ["", "reasons:", *(f"  - {reason}" for reason in verdict.reasons)]
    return "\n".join(lines) + "\n"
