"""The drill's settings and vocabulary: versions, the judge policy, `DrillConfig`, `DrillError`."""

from __future__ import annotations

import dataclasses
import enum
from pathlib import Path
from typing import Final, final

from qworker.canary.judge import Decision, InconclusivePolicy, JudgePolicy
from qworker.exceptions import ConfigError

GOOD_VERSION: Final = "v1"
NEW_VERSION: Final = "v2"
DEFECT_VERSION: Final = "v2-defect"
REJECTS_VERSION: Final = "v2-rejects"
SLOW_VERSION: Final = "v2-slow"
SERVICE: Final = "qworker-drill"
REGION: Final = "us-east-1"
HANDLER_MODULE: Final = "qworker.drill.handlers"

DRILL_POLICY: Final = JudgePolicy(
    min_canary_messages=600,
    min_primary_messages=600,
    min_bake_s=90.0,
    max_bake_s=240.0,
    alpha=0.01,
    abs_margin=0.015,
    rel_margin=0.5,
    pass_power=0.8,
    min_test_messages=100,
    min_test_failures=5,
    silent_after_s=60.0,
    silent_min_primary_processed=200,
    inconclusive_policy=InconclusivePolicy.FAIL,
    latency_fallback_min_minutes=1,
)
"""The drill's judge policy. With 1% transient failures on both roles and a 10% canary share,
simulation gave 0.3-1% false alarms (A/A) and 99.5% detection of the defect (canary at 5%). The
margin (1.5 points) and the pass power (0.8) size the bake to what four minutes at 100 messages a
second give a 10% canary (about 2,200 first attempts): at a 1% margin and 0.95 power a healthy
canary needs about 2,200 x the dispersion factor, and often ended inconclusive.
LocalStack serves no percentiles, so latency is judged by the per-minute mean ratio: one whole
minute of it suffices for a six-times-slower canary, and the 90 s minimum bake makes sure the bake
holds one (the judge reads from the first whole minute of the bake)."""

RATE_LOCALSTACK: Final = 100.0
RATE_EMBEDDED: Final = 40.0
MAX_RECEIVE_COUNT: Final = 5


class DrillError(RuntimeError):
    """The drill could not run to the end (a worker died, the server failed, ...)."""


class Defect(enum.StrEnum):
    """What is wrong with the canary's version (`--defect KIND`)."""

    BUG = "bug"  # fails every yen payment
    REJECTS = "rejects"  # rejects (`Reject`) every GBP payment: a verdict the canary is wrong about
    SLOW = "slow"  # six times slower on every event

    @property
    def version(self) -> str:
        """The handler version (`qworker.drill.handlers`) with this defect."""
        return {
            Defect.BUG: DEFECT_VERSION,
            Defect.REJECTS: REJECTS_VERSION,
            Defect.SLOW: SLOW_VERSION,
        }[self]


class Action(enum.StrEnum):
    """What the drill did with the verdict."""

    ROLLBACK = "rollback"
    PROMOTE = "promote"


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Capacity:
    """How much of the queue one role's worker takes: its pollers and handler slots."""

    pollers: int
    concurrency: int


@final
@dataclasses.dataclass(frozen=True, slots=True)
class DrillConfig:
    """Everything a drill needs; the defaults are the documented drill."""

    defect: Defect | bool | None = None  # True: Defect.BUG
    endpoint_url: str | None = None
    embedded: bool = False
    rate: float | None = None  # messages per second; None: per backend
    primary: Capacity = Capacity(pollers=9, concurrency=36)
    canary: Capacity = Capacity(pollers=1, concurrency=4)
    policy: JudgePolicy = DRILL_POLICY
    look_interval_s: float = 5.0
    metrics_interval_s: float = 2.0
    after_s: float = 10.0
    drain_timeout_s: float = 120.0
    handler_module: str = HANDLER_MODULE
    out_dir: Path | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        """Reject settings that cannot work.

        Raises:
            ConfigError: Naming the setting.
        """
        if self.defect is True:
            object.__setattr__(self, "defect", Defect.BUG)
        elif self.defect is False:
            object.__setattr__(self, "defect", None)
        elif self.defect is not None:
            object.__setattr__(self, "defect", Defect(self.defect))
        if self.endpoint_url is not None and self.embedded:
            raise ConfigError("give --endpoint-url or --embedded, not both")
        checks = {
            "--rate": self.rate is None or self.rate > 0,
            "--look-interval-s": self.look_interval_s > 0,
            "--metrics-interval-s": 0 < self.metrics_interval_s <= 60,  # noqa: PLR2004 (the setting's limit)
            "--after-s": self.after_s >= 0,
            "--drain-timeout-s": self.drain_timeout_s > 0,
        }
        if bad := [flag for flag, ok in checks.items() if not ok]:
            raise ConfigError(f"drill: {', '.join(bad)} out of range")

    @property
    def canary_version(self) -> str:
        """The version the canary starts on."""
        return self.defect.version if isinstance(self.defect, Defect) else NEW_VERSION

    @property
    def send_rate(self) -> float:
        """Messages per second the producer sends."""
        if self.rate is not None:
            return self.rate
        return RATE_EMBEDDED if self.embedded else RATE_LOCALSTACK

    @property
    def expected(self) -> Decision:
        """The decision a correct judge reaches on this drill."""
        return Decision.FAIL if self.defect else Decision.PASS
