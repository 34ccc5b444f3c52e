"""Canary judgement: is the canary worse than the primary on the same queue?

The judge, pure and stateless: `judge` (`judge()` for one look, `run_bake()` for a loop of them)
on `policy` (the decisions and the evidence each needs), `readings` (what a look reads), `evidence`
(a reading turned into the numbers behind a verdict) and `rules` (what fails, what a pass still
needs, when to give up). The statistics, pure functions on counts gathered in `stats`:
`proportions` (rates, the two-proportion test, Wilson and Poisson bounds), `sequential` (the
boundary of repeated looks, the bake's size) and `strata` (the per-minute stratified difference).
`verdict_text` renders a verdict (table, progress line, JSON). The reads: `reader` (the bake's
source and the SQS backlog; clients through `qworker._aws`), `metric_reads` (the CloudWatch
queries) and `ecs` (the expected canary share). `cli` is the `qworker canary judge` command the
pipeline runs.
"""

from __future__ import annotations

from qworker.canary.judge import (
    DEFAULT_POLICY,
    Decision,
    Evidence,
    InconclusivePolicy,
    JudgePolicy,
    Reading,
    RoleCounts,
    Verdict,
    judge,
    resolve,
    run_bake,
)

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
