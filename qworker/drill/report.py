"""The drill's report: the evidence table, the audit, `report.json` and the PNG chart."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, final

from qworker.canary.judge import Decision, JudgePolicy, Verdict
from qworker.chart import Line, Point, Series, line_chart
from qworker.drill.audit import Accounting
from qworker.drill.config import Action


def _share(verdict: Verdict) -> float | None:
    canary = verdict.evidence.canary.first_attempt_processed
    total = canary + verdict.evidence.primary.first_attempt_processed
    return canary / total if total else None


def _pct(value: float | None, spec: str = ".2%") -> str:
    return "-" if value is None else format(value, spec)


def progress(verdict: Verdict) -> str:
    """One look of the bake, on one line."""
    ev = verdict.evidence
    c, p = ev.canary, ev.primary
    z = "-" if ev.z is None or ev.critical_z is None else f"{ev.z:.2f} (needs {ev.critical_z:.2f})"
    return (
        f"[{ev.elapsed_s:5.0f} s] {verdict.decision.value}: canary {c.first_attempt_unsucceeded}/"
        f"{c.first_attempt_processed} failed ({_pct(ev.canary_rate)}), primary "
        f"{p.first_attempt_unsucceeded}/{p.first_attempt_processed} ({_pct(ev.primary_rate)}), "
        f"canary share {_pct(_share(verdict), '.1%')}, z {z}"
    )


@final
@dataclasses.dataclass(frozen=True, slots=True)
class DrillReport:
    """What a drill did and found."""

    server: str
    queue: str
    rate: float
    primary_version: str
    canary_version: str
    policy: JudgePolicy
    verdict: Verdict
    decision: Decision  # after the inconclusive policy
    expected: Decision
    action: Action
    action_detail: str
    looks: tuple[Verdict, ...]
    accounting: Accounting
    exit_codes: dict[str, int]
    chart: Path
    run_dir: Path

    @property
    def traffic_share(self) -> float | None:
        """The canary's share of first attempts over the bake."""
        return _share(self.verdict)

    @property
    def as_expected(self) -> bool:
        """Whether the judge decided what the drill was built to show."""
        return self.decision is self.expected

    @property
    def ok(self) -> bool:
        """As expected, nothing lost or dead-lettered, every worker exited 0."""
        return self.as_expected and self.accounting.ok and not any(self.exit_codes.values())

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            **{
                f.name: getattr(self, f.name)
                for f in dataclasses.fields(self)
                if f.name not in {"verdict", "looks", "policy", "accounting"}
            },
            "policy": dataclasses.asdict(self.policy),
            "verdict": {
                "decision": self.verdict.decision,
                "reasons": list(self.verdict.reasons),
                "evidence": dataclasses.asdict(self.verdict.evidence),
            },
            "traffic_share": self.traffic_share,
            "accounting": {**dataclasses.asdict(self.accounting), "ok": self.accounting.ok},
            "looks": [dataclasses.asdict(v.evidence) for v in self.looks],
            "as_expected": self.as_expected,
            "ok": self.ok,
        }


def describe_policy(policy: JudgePolicy) -> str:
    """The policy in one paragraph."""
    return (
        f"pass needs >= {policy.min_canary_messages} canary and >= "
        f"{policy.min_primary_messages} primary first attempts and >= {policy.min_bake_s:g} s, "
        f"with an upper bound on canary - primary (at {policy.pass_alpha:g}) below the margin "
        f"max({policy.abs_margin:.2%}, {policy.rel_margin:.0%} of the primary's rate); fail as "
        f"soon as the canary is worse by more than that margin at one-sided alpha "
        f"{policy.alpha:g} (sequential boundary, >= {policy.min_test_messages} canary first "
        f"attempts and >= {policy.min_test_failures} failures), above the "
        f"{policy.absolute_failure_ceiling:.0%} ceiling while the primary is surely below it, "
        "slower than the primary, or dead; no decision after "
        f"{policy.max_bake_s:g} s is inconclusive ({policy.inconclusive_policy.value})"
    )


def _evidence_table(report: DrillReport) -> list[str]:
    ev = report.verdict.evidence
    verdict = report.verdict.decision.value
    rows = [
        ("role", "version", "first attempts", "failed", "rate", "p-value", "decision"),
        (
            "canary",
            report.canary_version,
            str(ev.canary.first_attempt_processed),
            str(ev.canary.first_attempt_unsucceeded),
            _pct(ev.canary_rate),
            "-" if ev.p_value is None else f"{ev.p_value:.2g}",
            verdict,
        ),
        (
            "primary",
            report.primary_version,
            str(ev.primary.first_attempt_processed),
            str(ev.primary.first_attempt_unsucceeded),
            _pct(ev.primary_rate),
            "(baseline)",
            "(baseline)",
        ),
    ]
    return _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [
            cell.ljust(width) if i < 2 else cell.rjust(width)  # noqa: PLR2004 (two text columns)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  " + "  ".join(cells))
    return lines


def _audit_lines(accounting: Accounting) -> list[str]:
    a = accounting
    rows: list[Sequence[str]] = [
        ("role", "version", "attempts", "first attempts", "failed", "rate", "succeeded")
    ]
    rows += [
        (
            t.role,
            t.version,
            str(t.attempts),
            str(t.first_attempts),
            str(t.first_attempt_failed),
            _pct(t.first_attempt_rate),
            str(t.succeeded),
        )
        for t in a.tallies
    ]
    recovered = ", ".join(
        f"{n} by {who}" for who, n in sorted(a.canary_failures_recovered_by.items())
    )
    lines = [
        (
            f"audit ({'OK' if a.ok else 'PROBLEM'}): sent {a.sent}, succeeded and deleted "
            f"{a.succeeded}, lost {len(a.lost)}, left on the queue {a.left_on_queue}, in the DLQ "
            f"{a.dead_lettered} (succeeded more than once: {a.succeeded_twice})"
        ),
        f"  the canary failed {a.canary_failed} messages; later successes: {recovered or 'none'}",
        *_table(rows),
    ]
    if a.lost:
        lines.append(f"  lost, e.g.: {', '.join(a.lost[:5])}")
    return lines


def format_report(report: DrillReport) -> str:
    """The drill's evidence, decision, action, audit and chart, for people."""
    ev = report.verdict.evidence
    share = report.traffic_share
    c, p = ev.canary.first_attempt_processed, ev.primary.first_attempt_processed
    title = report.verdict.decision.value.upper()
    if report.decision is not report.verdict.decision:
        title += f" -> {report.decision.value.upper()} (inconclusive policy)"
    expected = (
        "as expected"
        if report.as_expected
        else (
            f"NOT as expected ({report.expected.value}): the judge errs on about "
            f"{report.policy.alpha:.0%} of healthy canaries and misses a few bad ones"
        )
    )
    lines = [
        "",
        (
            f"qworker drill: canary {report.canary_version} vs primary {report.primary_version} "
            f"on queue {report.queue}, {report.rate:g} msg/s, {report.server}"
        ),
        f"drill policy: {describe_policy(report.policy)}",
        "",
        f"evidence at the decision ({ev.elapsed_s:.0f} s of traffic; CloudWatch, first attempts):",
        *_evidence_table(report),
        (
            f"  traffic share (first attempts): canary {_pct(share, '.1%')} ({c} of {c + p}), "
            f"primary {_pct(None if share is None else 1 - share, '.1%')}"
        ),
        "",
        f"decision: {title} -> {report.action.value.upper()} ({expected})",
        *(f"  - {reason}" for reason in report.verdict.reasons),
        f"action: {report.action_detail}",
        "",
        *_audit_lines(report.accounting),
        "",
        "worker exit codes: " + ", ".join(f"{n}: {c}" for n, c in report.exit_codes.items()),
        f"chart: {report.chart}",
        f"logs, ledger and report.json: {report.run_dir}",
        f"drill {'OK' if report.ok else 'FAILED'}",
    ]
    return "\n".join(lines) + "\n"


CANARY_COLOR: Final = (214, 39, 40)
PRIMARY_COLOR: Final = (31, 119, 180)
DECISION_COLOR: Final = (110, 0, 110)
CEILING_COLOR: Final = (140, 140, 140)
MARGIN_COLOR: Final = (230, 120, 0)
BOUND_COLOR: Final = (120, 120, 120)


def boundary_series(
    looks: Sequence[Verdict],
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """Per look, in the canary's rate (%): the fail boundary and the canary's upper bound.

    The judge compares the stratified difference D with the margin m (fail above it, once z
    reaches the critical value) and its upper bound U with m (pass below it). Shifted by the
    canary's rate minus D, the canary's line crosses the boundary exactly when D crosses m, and the
    bound line falls under the boundary exactly when U does.
    """
    margin: list[tuple[float, float]] = []
    bound: list[tuple[float, float]] = []
    for look in looks:
        ev = look.evidence
        if ev.canary_rate is None or ev.difference is None or ev.margin is None:
            continue
        base = ev.canary_rate - ev.difference  # the primary's rate as the judge weighs it
        margin.append((ev.elapsed_s, (base + ev.margin) * 100))
        if ev.upper_bound is not None:
            bound.append((ev.elapsed_s, (base + ev.upper_bound) * 100))
    return margin, bound


def verdict_point(verdict: Verdict) -> list[Point]:
    """A ring on the canary's rate where the verdict was taken, saying what decided it."""
    ev = verdict.evidence
    if ev.canary_rate is None:
        return []
    why = verdict.decision.value
    if verdict.decision is Decision.FAIL and ev.z is not None and ev.critical_z is not None:
        why += f": z {ev.z:.2f} >= {ev.critical_z:.2f}"
    elif verdict.decision is Decision.PASS and None not in (ev.upper_bound, ev.margin):
        why += f": bound {ev.upper_bound:.2%} < margin {ev.margin:.2%}"
    return [Point(ev.elapsed_s, ev.canary_rate * 100, why, DECISION_COLOR)]


def render_chart(report: DrillReport) -> bytes:
    """The PNG chart of both roles' cumulative first-attempt failure rates over the bake."""
    canary, primary = [], []
    for look in report.looks:
        ev = look.evidence
        if ev.canary_rate is not None:
            canary.append((ev.elapsed_s, ev.canary_rate * 100))
        if ev.primary_rate is not None:
            primary.append((ev.elapsed_s, ev.primary_rate * 100))
    ceiling = report.policy.absolute_failure_ceiling * 100
    ev = report.verdict.evidence
    n_canary, n_primary = ev.canary.first_attempt_processed, ev.primary.first_attempt_processed
    margin, bound = boundary_series(report.looks)
    # The bound starts wide; drawn from where it enters the range the rates span.
    cap = 1.5 * max([ceiling, *(y for _, y in (*canary, *primary, *margin))])
    bound = [(x, y) for x, y in bound if y <= cap]
    return line_chart(
        [
            Series(f"canary {report.canary_version} (n={n_canary})", canary, CANARY_COLOR),
            Series(f"primary {report.primary_version} (n={n_primary})", primary, PRIMARY_COLOR),
            Series("fail boundary: primary + margin", margin, MARGIN_COLOR, dash=(10, 6)),
            *(
                [Series("canary upper bound (pass below the boundary)", bound, BOUND_COLOR, (4, 4))]
                if report.verdict.decision is not Decision.FAIL  # a fail is decided by z alone
                else []
            ),
        ],
        title="canary drill: first-attempt failure rate",
        x_label="seconds since the traffic started",
        y_label="failure rate since start (%)",
        lines=[
            Line(
                report.verdict.evidence.elapsed_s,
                f"{report.verdict.decision.value}: {report.action.value}",
                DECISION_COLOR,
            ),
            Line(ceiling, f"ceiling {ceiling:g}%", CEILING_COLOR, vertical=False),
        ],
        points=verdict_point(report.verdict),
        x_min=0.0,
        y_format=lambda v: f"{v:g}%",
    )
