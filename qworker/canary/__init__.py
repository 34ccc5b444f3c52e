"""Canary judgement: is the canary worse than the primary on the same queue?

`stats` holds the statistics (pure functions on counts), `judge` the evidence-based bake
(`judge()` for one look, `run_bake()` for a loop of them), `reader` the CloudWatch and SQS reads,
and `cli` the `qworker canary judge` command the pipeline runs.
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
