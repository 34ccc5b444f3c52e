"""The alarms in deploy/alarms.yaml, evaluated on synthetic traffic with tests/metric_math.py.

Each scenario describes a few minutes of what the canary and the primary did (first attempts,
failures, mean processing time) and the queue's backlog; the test turns that into the per-period
series every alarm query asks for, evaluates the alarm's own expression and applies its threshold,
comparison and "M out of N" rule. The alarms must fire when the canary is worse and stay quiet when
it is not, when there is too little traffic to tell, and when data is missing.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import pytest
from metric_math import (
    FUNCTIONS,
    AlarmState,
    MetricMathError,
    Series,
    evaluate,
    evaluate_alarm,
    functions_used,
)
from test_deploy_templates import ALARM_PARAMS, SERVICE_PARAMS, Renderer, render

from qworker.metrics import DEFAULT_NAMESPACE

MINUTES: Final = 30


@dataclass(frozen=True)
class Traffic:
    """One role's minute: first attempts (all processed), failures, mean processing time.

    `failures` raised or timed out (FirstAttemptFailed); `retried` asked for a retry instead of
    succeeding. Both are FirstAttemptUnsucceeded, which the alarms watch.
    """

    attempts: float
    failures: float = 0
    latency_ms: float = 100
    retried: float = 0


@dataclass(frozen=True)
class Minute:
    """One minute of the world. `None`: that source published nothing in the minute."""

    canary: Traffic | None
    primary: Traffic | None
    backlog: float | None = 0
    dlq: float | None = 0


HEALTHY: Final = Minute(canary=Traffic(40, 0.4), primary=Traffic(800, 8))


def steady(minute: Minute, count: int = MINUTES) -> list[Minute]:
    return [minute] * count


def _minute_value(minute: Minute, metric: Mapping[str, Any]) -> tuple[float, float] | None:
    """(value, weight) of one metric in one minute, or None when nothing was published."""
    if metric["Namespace"] == "AWS/SQS":
        queue = {d["Name"]: d["Value"] for d in metric["Dimensions"]}["QueueName"]
        visible = minute.dlq if queue == ALARM_PARAMS["DeadLetterQueueName"] else minute.backlog
        return None if visible is None else (visible, 1)
    assert metric["Namespace"] == DEFAULT_NAMESPACE
    role = {d["Name"]: d["Value"] for d in metric["Dimensions"]}["DeploymentRole"]
    traffic = minute.canary if role == "canary" else minute.primary
    if traffic is None:
        return None
    values = {
        "FirstAttemptProcessed": traffic.attempts,
        "Processed": traffic.attempts,
        "FirstAttemptFailed": traffic.failures,
        "FirstAttemptUnsucceeded": traffic.failures + traffic.retried,
        "ProcessingTime": traffic.latency_ms,
    }
    return values[metric["MetricName"]], traffic.attempts


def _aggregate(points: Sequence[tuple[float, float] | None], stat: str) -> float | None:
    present = [p for p in points if p is not None]
    if not present:
        return None
    if stat == "Sum":
        return sum(value for value, _ in present)
    if stat == "Minimum":
        return min(value for value, _ in present)
    if stat == "Maximum":
        return max(value for value, _ in present)
    assert stat == "Average"
    weight = sum(w for _, w in present)
    return sum(v * w for v, w in present) / weight if weight else None


def metric_series(stat: Mapping[str, Any], minutes: Sequence[Minute]) -> Series:
    """What GetMetricData would return for one MetricStat at its period."""
    per = stat["Period"] // 60
    assert len(minutes) % per == 0
    return tuple(
        _aggregate(
            [_minute_value(m, stat["Metric"]) for m in minutes[start : start + per]], stat["Stat"]
        )
        for start in range(0, len(minutes), per)
    )


@dataclass(frozen=True)
class Alarm:
    """A metric-math alarm from the template, ready to evaluate."""

    name: str
    properties: Mapping[str, Any]

    def series(self, minutes: Sequence[Minute]) -> Series:
        queries = self.properties["Metrics"]
        periods = {q["MetricStat"]["Period"] for q in queries if "MetricStat" in q}
        assert len(periods) == 1, f"{self.name}: queries with different periods"
        count = len(minutes) // (periods.pop() // 60)
        env = {
            q["Id"]: metric_series(q["MetricStat"], minutes) for q in queries if "MetricStat" in q
        }
        pending = [q for q in queries if "Expression" in q]
        while pending:  # expressions may name each other in any order
            ready = [q for q in pending if set(_ids(q["Expression"])) <= set(env)]
            assert ready, f"{self.name}: unresolvable expressions"
            for query in ready:
                result = evaluate(query["Expression"], env, count)
                assert isinstance(result, tuple), f"{self.name}: scalar result"
                env[query["Id"]] = result
                pending.remove(query)
        (returned,) = (q["Id"] for q in queries if q.get("ReturnData", True))
        return env[returned]

    def state(self, minutes: Sequence[Minute]) -> AlarmState:
        p = self.properties
        return evaluate_alarm(
            self.series(minutes),
            threshold=float(p["Threshold"]),
            comparison=p["ComparisonOperator"],
            evaluation_periods=int(p["EvaluationPeriods"]),
            datapoints_to_alarm=int(p["DatapointsToAlarm"]),
            treat_missing=p["TreatMissingData"],
        )


def _ids(expression: str) -> list[str]:
    names = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expression)
    return [n for n in names if n not in FUNCTIONS and n not in {"AND", "OR"}]


@dataclass(frozen=True)
class AlarmSet:
    """Every alarm of alarms.yaml, by name without the `qworker-orders-` prefix."""

    renderer: Renderer

    @property
    def alarms(self) -> dict[str, Alarm]:
        alarms = self.renderer.resources("AWS::CloudWatch::Alarm").values()
        return {
            a["Properties"]["AlarmName"].removeprefix("qworker-orders-"): Alarm(
                a["Properties"]["AlarmName"], a["Properties"]
            )
            for a in alarms
        }

    def states(self, minutes: Sequence[Minute]) -> dict[str, AlarmState]:
        states = {name: alarm.state(minutes) for name, alarm in self.alarms.items()}
        (composite,) = self.renderer.resources("AWS::CloudWatch::CompositeAlarm").values()
        members = re.findall(r'ALARM\("([^"]+)"\)', composite["Properties"]["AlarmRule"])
        assert " OR ".join(f'ALARM("{m}")' for m in members) == " ".join(
            composite["Properties"]["AlarmRule"].split()
        )
        fired = any(states[m.removeprefix("qworker-orders-")] == "ALARM" for m in members)
        states["canary"] = "ALARM" if fired else "OK"
        return states


@pytest.fixture(scope="module")
def alarms() -> AlarmSet:
    return AlarmSet(render("alarms.yaml", ALARM_PARAMS))


def firing(states: Mapping[str, AlarmState]) -> set[str]:
    return {name for name, state in states.items() if state == "ALARM"}


# -- the evaluator follows the documented semantics ----------------------------------------------


def test_if_follows_the_documented_examples() -> None:
    # The tables in "Using IF expressions" (CloudWatch user guide).
    env: dict[str, Series] = {
        "metric1": (1, 1, 0, 0, None),
        "metric2": (30, None, 0, 0, 30),
        "metric3": (0, 0, 20, None, 20),
    }
    assert evaluate("IF(metric1, metric2, metric3)", env, 5) == (30, 0, 20, None, None)
    assert evaluate("IF(metric1, 5, metric3)", env, 5) == (5, 5, 20, None, None)
    assert evaluate("IF(metric1, metric2, 5)", env, 5) == (30, 0, 5, 5, None)


def test_comparisons_follow_the_documented_examples() -> None:
    env: dict[str, Series] = {"metric1": (30, 20, 0, 0), "metric2": (20, None, 20, None)}
    assert evaluate("metric1 < metric2", env, 4) == (0, 0, 1, 0)
    assert evaluate("metric1 >= 30", env, 4) == (1, 0, 0, 0)
    assert evaluate("metric1 > 15 AND metric2 > 15", env, 4) == (1, 0, 0, 0)
    assert evaluate("metric1 > 15 && metric2 > 15", env, 4) == (1, 0, 0, 0)
    assert evaluate("metric1 > 25 OR metric2 > 15", env, 4) == (1, 0, 1, 0)


def test_missing_values_division_and_fill() -> None:
    env: dict[str, Series] = {"a": (1, None, None, 4), "b": (None, 2, None, 0)}
    assert evaluate("a + b", env, 4) == (1, 2, None, 4)
    assert evaluate("a * 2", env, 4) == (2, None, None, 8)
    assert evaluate("a / b", env, 4) == (None, 0, None, None)  # 1/0 and 4/0 are dropped
    assert evaluate("FILL(a, 0) - -b", env, 4) == (1, 2, 0, 4)
    assert evaluate("(a + 1) * 2 - 6 / 3", env, 4) == (2, None, None, 8)


def test_unknown_functions_and_ids_are_refused() -> None:
    with pytest.raises(MetricMathError, match="AVG"):
        evaluate("AVG(a)", {"a": (1,)}, 1)
    with pytest.raises(MetricMathError, match="unknown id"):
        evaluate("a + c", {"a": (1,)}, 1)
    with pytest.raises(MetricMathError):
        evaluate("a +", {"a": (1,)}, 1)


def test_m_out_of_n() -> None:
    def state(series: Series, treat_missing: str = "notBreaching") -> AlarmState:
        return evaluate_alarm(
            series,
            threshold=0.5,
            comparison="GreaterThanThreshold",
            evaluation_periods=5,
            datapoints_to_alarm=3,
            treat_missing=treat_missing,
        )

    assert state((1, 1, 1, 0, 0, 0, 0)) == "OK"  # only the last 5 periods count
    assert state((0, 0, 1, 1, 0, 1, 0)) == "ALARM"
    assert state((1, 1, None, None, None)) == "OK"
    assert state((1, 1, None, 0, None), treat_missing="breaching") == "ALARM"


# -- the alarms use only what the evaluator implements --------------------------------------------


def test_every_expression_uses_implemented_functions(alarms: AlarmSet) -> None:
    expressions = [
        q["Expression"]
        for alarm in alarms.alarms.values()
        for q in alarm.properties["Metrics"]
        if "Expression" in q
    ]
    assert len(expressions) >= 10
    for expression in expressions:
        assert functions_used(expression) <= FUNCTIONS, expression
    # Every rate is guarded by a minimum count and every gap FILLed.
    for name in ("canary-failure-rate", "fleet-failure-rate", "canary-vs-primary"):
        text = " ".join(q.get("Expression", "") for q in alarms.alarms[name].properties["Metrics"])
        assert "IF(" in text, name
        assert ">=" in text, name
        assert "FILL(" in text, name


def test_every_alarm_evaluates_on_a_healthy_fleet(alarms: AlarmSet) -> None:
    states = alarms.states(steady(HEALTHY))
    assert set(states) == {
        "canary-failure-rate",
        "canary-vs-primary",
        "canary-silent",
        "canary-latency",
        "fleet-failure-rate",
        "dlq-arrivals",
        "canary",
    }
    assert firing(states) == set()


# -- fires when the canary is worse ----------------------------------------------------------------


def test_a_canary_failing_10_percent_beside_a_primary_at_1_percent_fires(alarms: AlarmSet) -> None:
    bad = replace(HEALTHY, canary=Traffic(40, 4))
    # The fleet is still at (4 + 8) / 840 = 1.4%: only the canary alarms fire.
    assert firing(alarms.states(steady(bad))) == {
        "canary-failure-rate",
        "canary-vs-primary",
        "canary",
    }


def test_a_small_but_clear_difference_fires_the_comparison_only(alarms: AlarmSet) -> None:
    # 4% against 1%: under the 5% ceiling, but 3 points and 4x worse.
    worse = replace(HEALTHY, canary=Traffic(40, 1.6))
    assert firing(alarms.states(steady(worse))) == {"canary-vs-primary", "canary"}


def test_a_canary_that_stops_taking_messages_under_backlog_fires(alarms: AlarmSet) -> None:
    idle = Minute(canary=Traffic(0), primary=Traffic(800, 8), backlog=500)
    assert firing(alarms.states(steady(idle))) == {"canary-silent", "canary"}
    gone = replace(idle, canary=None)  # not even the idle zeros: the canary is not running
    assert firing(alarms.states(steady(gone))) == {"canary-silent", "canary"}


def test_a_canary_that_turns_successes_into_retries_fires(alarms: AlarmSet) -> None:
    # Nothing raised (FirstAttemptFailed stays at the primary's 1%), but 10% of the canary's first
    # attempts asked for a retry: FirstAttemptUnsucceeded sees it.
    retrying = replace(HEALTHY, canary=Traffic(40, 0.4, retried=4))
    assert firing(alarms.states(steady(retrying))) == {
        "canary-failure-rate",
        "canary-vs-primary",
        "canary",
    }


def test_the_alarms_watch_first_attempts_that_did_not_succeed(alarms: AlarmSet) -> None:
    for name in ("canary-failure-rate", "canary-vs-primary", "fleet-failure-rate"):
        metrics = {
            q["MetricStat"]["Metric"]["MetricName"]
            for q in alarms.alarms[name].properties["Metrics"]
            if "MetricStat" in q
        }
        assert metrics == {"FirstAttemptProcessed", "FirstAttemptUnsucceeded"}, name


def test_messages_arriving_in_the_dlq_notify(alarms: AlarmSet) -> None:
    quiet = steady(HEALTHY)
    arriving = [*steady(HEALTHY, MINUTES - 1), replace(HEALTHY, dlq=3)]
    assert firing(alarms.states(quiet)) == set()
    # Only the DLQ alarm: it notifies, nothing gates or rolls back on it.
    assert firing(alarms.states(arriving)) == {"dlq-arrivals"}
    # Messages that stay in the DLQ are not new arrivals; a drained DLQ is not either.
    resting = [replace(HEALTHY, dlq=3)] * MINUTES
    draining = [*resting[:-1], replace(HEALTHY, dlq=0)]
    assert alarms.alarms["dlq-arrivals"].state(resting) == "OK"
    assert alarms.alarms["dlq-arrivals"].state(draining) == "OK"
    # A minute without SQS data is no arrival, and the next one compares with the last value.
    gap = [*resting[:-2], replace(HEALTHY, dlq=None), replace(HEALTHY, dlq=3)]
    assert alarms.alarms["dlq-arrivals"].state(gap) == "OK"


def test_diff_follows_the_documented_definition() -> None:
    env = {"a": (1.0, 3.0, None, 2.0, 2.0)}
    assert evaluate("DIFF(a)", env, 5) == (None, 2.0, None, -1.0, 0.0)
    with pytest.raises(MetricMathError):
        evaluate("DIFF(a, 1)", env, 5)


def test_a_slow_canary_fires(alarms: AlarmSet) -> None:
    slow = replace(HEALTHY, canary=Traffic(40, 0.4, latency_ms=300))
    assert firing(alarms.states(steady(slow))) == {"canary-latency", "canary"}


def test_a_bad_release_on_both_sides_fires_the_fleet_alarm(alarms: AlarmSet) -> None:
    bad = Minute(canary=Traffic(40, 4), primary=Traffic(800, 80))
    states = alarms.states(steady(bad))
    assert states["fleet-failure-rate"] == "ALARM"
    assert states["canary-vs-primary"] == "OK"  # the same version on both sides: no difference


def test_three_bad_minutes_out_of_five_fire_the_ceiling(alarms: AlarmSet) -> None:
    bad = replace(HEALTHY, canary=Traffic(40, 8))
    alarm = alarms.alarms["canary-failure-rate"]
    assert alarm.state([*steady(HEALTHY, 25), bad, HEALTHY, bad, HEALTHY, bad]) == "ALARM"
    assert alarm.state([*steady(HEALTHY, 25), bad, HEALTHY, HEALTHY, HEALTHY, bad]) == "OK"


def test_the_newest_unreported_minute_does_not_hide_a_bad_canary(alarms: AlarmSet) -> None:
    # EMF arrives late: the newest minute has no data yet and FILL reads it as 0.
    bad = replace(HEALTHY, canary=Traffic(40, 4))
    late = replace(bad, canary=None, primary=None)
    assert alarms.alarms["canary-failure-rate"].state([*steady(bad, MINUTES - 1), late]) == "ALARM"


# -- stays quiet when the canary is not worse -----------------------------------------------------


def test_equal_rates_stay_quiet_even_when_high(alarms: AlarmSet) -> None:
    equal = Minute(canary=Traffic(40, 1.2), primary=Traffic(800, 24))  # 3% on both sides
    assert firing(alarms.states(steady(equal))) == set()


def test_a_noisy_difference_between_two_bad_rates_stays_quiet(alarms: AlarmSet) -> None:
    # 21% against 19%: both broken (the fleet alarm fires), but not the canary's fault.
    close = Minute(canary=Traffic(40, 8.4), primary=Traffic(800, 152))
    states = alarms.states(steady(close))
    assert states["canary-vs-primary"] == "OK"
    assert states["canary-failure-rate"] == "OK"


def test_a_shared_outage_fires_no_canary_alarm(alarms: AlarmSet) -> None:
    # Both roles at 30% for ten minutes (a downstream both depend on): the fleet alarm may fire,
    # no canary alarm does, so nothing that gates or judges the canary blames it.
    outage = Minute(canary=Traffic(40, 12), primary=Traffic(800, 240))
    world = [*steady(HEALTHY, MINUTES - 10), *steady(outage, 10)]
    states = alarms.states(world)
    assert {name for name in firing(states) if name.startswith("canary")} == set()
    assert states["fleet-failure-rate"] == "ALARM"


def test_the_ceiling_needs_a_primary_to_compare_with(alarms: AlarmSet) -> None:
    # A canary failing 50% beside a primary with too little traffic to tell: the comparison and
    # the judge decide, the ceiling stays quiet.
    lonely = Minute(canary=Traffic(40, 20), primary=Traffic(2, 0))
    assert alarms.states(steady(lonely))["canary-failure-rate"] == "OK"


def test_tiny_canary_volume_stays_under_the_minimum_count(alarms: AlarmSet) -> None:
    # One failure in three messages is 33%, and means nothing.
    tiny = replace(HEALTHY, canary=Traffic(3, 1, latency_ms=900))
    assert firing(alarms.states(steady(tiny))) == set()


def test_missing_canary_data_is_not_a_failure_rate(alarms: AlarmSet) -> None:
    nothing = Minute(canary=None, primary=Traffic(800, 8), backlog=None)
    assert firing(alarms.states(steady(nothing))) == set()
    nobody = Minute(canary=None, primary=None, backlog=None)
    assert firing(alarms.states(steady(nobody))) == set()


def test_an_idle_queue_does_not_make_the_canary_silent(alarms: AlarmSet) -> None:
    idle = Minute(canary=Traffic(0), primary=Traffic(0), backlog=0)
    assert firing(alarms.states(steady(idle))) == set()


def test_a_short_pause_is_not_silence(alarms: AlarmSet) -> None:
    paused = Minute(canary=Traffic(0), primary=Traffic(800, 8), backlog=500)
    busy = replace(paused, canary=Traffic(40, 0.4))
    minutes = [*steady(busy, MINUTES - 5), *steady(paused, 4), busy]
    assert alarms.alarms["canary-silent"].state(minutes) == "OK"


def test_sub_millisecond_latencies_are_not_a_ratio(alarms: AlarmSet) -> None:
    fast = Minute(canary=Traffic(40, 0.4, latency_ms=0.2), primary=Traffic(800, 8, latency_ms=0.1))
    assert alarms.alarms["canary-latency"].state(steady(fast)) == "OK"
    close = replace(HEALTHY, canary=Traffic(40, 0.4, latency_ms=110))
    assert alarms.alarms["canary-latency"].state(steady(close)) == "OK"


# -- the canary's share: its scaling policy on modelled running task counts ----------------------


def _canary_tasks_after_scaling(
    primary_tasks: int | None, *, share: int, primary_pollers: int
) -> int:
    """Where target tracking settles the canary: capacity x metric / target, rounded up."""
    canary = render(
        "service.yaml",
        {
            **SERVICE_PARAMS,
            "DeploymentRole": "canary",
            "Pollers": 1,
            "PrimaryPollers": primary_pollers,
            "CanarySharePercent": share,
            "MinCapacity": 1,
            "MaxCapacity": 200,
        },
    )
    (policy,) = canary.resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
    configuration = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    queries = configuration["CustomizedMetricSpecification"]["Metrics"]
    (expression,) = (q["Expression"] for q in queries if q["ReturnData"])
    target = float(configuration["TargetValue"])
    (target_properties,) = canary.resources("AWS::ApplicationAutoScaling::ScalableTarget").values()
    low = int(target_properties["Properties"]["MinCapacity"])
    high = int(target_properties["Properties"]["MaxCapacity"])
    tasks = low
    for _ in range(20):
        primary = None if primary_tasks is None else float(primary_tasks)
        env = {"primaryTasks": (primary,), "canaryTasks": (float(tasks),)}
        (metric,) = evaluate(expression, env, 1)  # type: ignore[misc]
        if metric is None:  # no datapoint: target tracking does nothing
            return tasks
        wanted = max(low, min(high, math.ceil(round(tasks * metric / target, 9))))
        if wanted == tasks:
            return tasks
        tasks = wanted
    raise AssertionError("target tracking did not settle")


@pytest.mark.parametrize("primary_tasks", [2, 3, 5, 9, 20, 50, 100])
def test_the_canary_share_stays_near_its_setting_as_the_primary_scales(primary_tasks: int) -> None:
    pollers = 4
    canary = _canary_tasks_after_scaling(primary_tasks, share=10, primary_pollers=pollers)
    # The fewest whole canary tasks whose single pollers are at least 10% of all loops: at two
    # primary tasks that is one canary task, 1 / (1 + 2 x 4) = 11%; rounding up to a whole task
    # matters less the larger the fleet.
    assert canary == max(1, math.ceil(primary_tasks * pollers * 10 / 90))
    share = canary / (canary + primary_tasks * pollers)
    assert share >= 0.10 - 1e-9
    if primary_tasks >= 20:
        assert share < 0.115


def test_the_canary_share_setting_moves_the_canary() -> None:
    assert _canary_tasks_after_scaling(20, share=5, primary_pollers=4) == 5  # 5 / 85 = 5.9%
    assert _canary_tasks_after_scaling(20, share=20, primary_pollers=4) == 20  # 20 / 100
    assert _canary_tasks_after_scaling(20, share=10, primary_pollers=1) == 3  # 3 / 23 = 13%


def test_without_a_primary_the_canary_stays_at_its_minimum() -> None:
    # No RunningTaskCount for a primary that does not exist: metric math reads the missing side as
    # 0, so the canary is asked for no tasks and target tracking keeps it at MinCapacity.
    assert _canary_tasks_after_scaling(None, share=10, primary_pollers=4) == 1
    assert _canary_tasks_after_scaling(0, share=10, primary_pollers=4) == 1
