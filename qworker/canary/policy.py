"""The canary judge's policy: the decisions a look can reach and how much evidence each needs.

`JudgePolicy` holds every parameter of the method described in `qworker.canary.judge`; the CLI
has a flag for each field.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import final

from qworker.canary.proportions import HALF
from qworker.exceptions import ConfigError

__all__ = ["DEFAULT_POLICY", "Decision", "InconclusivePolicy", "JudgePolicy"]


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
            "pass_power": HALF < self.pass_power < 1.0,
            "abs_margin": self.abs_margin >= 0.0,
            "rel_margin": self.rel_margin >= 0.0,
            "stratum_min_canary_messages": self.stratum_min_canary_messages >= 1,
            "absolute_failure_ceiling": 0.0 < self.absolute_failure_ceiling <= 1.0,
            "ceiling_fail_confidence": HALF <= self.ceiling_fail_confidence < 1.0,
            "expected_canary_share": share is None or 0.0 < share < 1.0,
            "share_guard_fraction": 0.0 < self.share_guard_fraction <= 1.0,
            "share_confidence": HALF <= self.share_confidence < 1.0,
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
