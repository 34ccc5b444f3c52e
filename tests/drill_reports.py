"""A finished drill's report for the tests of its text and chart (tests/test_drill.py,
tests/test_chart.py), built from the judge's looks without running a drill."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from qworker import drill
from qworker.canary.judge import Verdict

__all__ = ["report_of"]


def report_of(
    looks: Sequence[Verdict],
    run_dir: Path,
    *,
    primary_version: str = "v1",
    canary_version: str = "v2",
    exit_codes: Mapping[str, int] | None = None,
) -> drill.DrillReport:
    """The report of a drill that judged `looks` and rolled back, its last decision as expected.

    Nothing was sent or left on the queue; the chart's place and the run's folder are `run_dir`.
    """
    verdict = looks[-1]
    return drill.DrillReport(
        server="test",
        queue="q",
        rate=100,
        primary_version=primary_version,
        canary_version=canary_version,
        policy=drill.DRILL_POLICY,
        verdict=verdict,
        decision=verdict.decision,
        expected=verdict.decision,
        action=drill.Action.ROLLBACK,
        action_detail="rolled back",
        looks=tuple(looks),
        accounting=drill.account([], run_dir / "none", left_on_queue=0, dead_lettered=0),
        exit_codes=dict(exit_codes or {}),
        chart=run_dir / "drill.png",
        run_dir=run_dir,
    )
