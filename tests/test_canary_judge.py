"""The canary judge: each rule on hand-built counts, the bake loop on a fake clock, the CloudWatch
reader (per-minute series, percentile statistics and their fallback, ECS share), and
`qworker canary judge` end to end (with an injected reader, and against moto and LocalStack over
HTTP). The error rates are measured by bench/judge_sim.py (bench/JUDGE.md)."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import pytest

from qworker.canary import cli, stats
from qworker.canary.judge import (
    DEFAULT_POLICY,
    Decision,
    InconclusivePolicy,
    JudgePolicy,
    Minute,
    Reading,
    RoleCounts,
    TimeSummary,
    Verdict,
    judge,
    judge_reading,
    resolve,
    run_bake,
)
from qworker.canary.reader import (
    CloudWatchSource,
    LatencyStats,
    MetricsQuery,
    expected_share_from_ecs,
    make_clients,
    metric_data_queries,
    queue_name_of,
    read_backlog,
    read_minutes,
    read_role_counts,
)
from qworker.exceptions import ConfigError, QueueUnavailable, ServerError
from qworker.metrics import DEFAULT_NAMESPACE, Dimension, MetricName


def counts(
    n: int, failed: int, processed: int | None = None, ms: float | None = None
) -> RoleCounts:
    return RoleCounts(n, failed, n if processed is None else processed, ms)


# --- judge(): one rule at a time, on hand-built counts --------------------------------------------


def minute(
    c_n: int,
    c_bad: int,
    p_n: int,
    p_bad: int,
    *,
    c_time: TimeSummary | None = None,
    p_time: TimeSummary | None = None,
) -> Minute:
    return Minute(counts(c_n, c_bad), counts(p_n, p_bad), c_time, p_time)


def reading_of(minutes: list[Minute], **kwargs: Any) -> Reading:
    canary = RoleCounts(
        sum(m.canary.first_attempt_processed for m in minutes),
        sum(m.canary.first_attempt_unsucceeded for m in minutes),
        sum(m.canary.processed for m in minutes),
    )
    primary = RoleCounts(
        sum(m.primary.first_attempt_processed for m in minutes),
        sum(m.primary.first_attempt_unsucceeded for m in minutes),
        sum(m.primary.processed for m in minutes),
    )
    return Reading(canary, primary, minutes=tuple(minutes), **kwargs)


def test_few_messages_continue_with_what_is_missing() -> None:
    verdict = judge(counts(40, 0), counts(360, 4), elapsed_s=60.0)
    assert verdict.decision is Decision.CONTINUE
    assert not verdict.terminal
    assert any("canary first attempts 40 < 1000" in r for r in verdict.reasons)
    assert any("baked 60 s < 600 s" in r for r in verdict.reasons)
    assert any("upper bound on canary - primary" in r for r in verdict.reasons)


def test_pass_needs_the_upper_bound_below_the_margin() -> None:
    # 1% vs 1% on 6000 canary first attempts: the bound (+0.46%) is below the margin (0.75%).
    verdict = judge(counts(6000, 60), counts(54000, 540), elapsed_s=1800.0)
    assert verdict.decision is Decision.PASS
    ev = verdict.evidence
    assert ev.upper_bound is not None
    assert ev.margin is not None
    assert ev.margin == pytest.approx(0.0075)
    assert ev.upper_bound < ev.margin
    assert "surely below 0.75%" in verdict.reasons[0]
    # The same rates on 1000: the evidence is not there yet (a pass needs more than the minimums).
    thin = judge(counts(1000, 10), counts(9000, 90), elapsed_s=600.0)
    assert thin.decision is Decision.CONTINUE
    assert thin.reasons[0].startswith("upper bound on canary - primary +")


def test_pass_needs_messages_and_time() -> None:
    early = judge(counts(6000, 60), counts(54000, 540), elapsed_s=599.0)
    assert early.decision is Decision.CONTINUE
    assert early.reasons == ("baked 599 s < 600 s",)
    verdict = judge(counts(6000, 60), counts(50, 0), elapsed_s=1800.0)
    assert verdict.decision is Decision.CONTINUE
    assert "primary first attempts 50 < 100" in verdict.reasons


def test_worse_than_the_margin_never_passes_however_long() -> None:
    # 1.33% vs 1%: inside the fail boundary, but the bound stays above the margin: no pass.
    for elapsed in (600.0, 1800.0, 3599.0):
        verdict = judge(counts(6000, 80), counts(54000, 540), elapsed_s=elapsed)
        assert verdict.decision is Decision.CONTINUE
    late = judge(counts(6000, 80), counts(54000, 540), elapsed_s=3600.0)
    assert late.decision is Decision.INCONCLUSIVE
    assert late.reasons[0] == "no decision after 3600 s"


def test_significant_regression_fails_early() -> None:
    verdict = judge(counts(1000, 30), counts(9000, 90), elapsed_s=300.0)
    assert verdict.decision is Decision.FAIL
    ev = verdict.evidence
    assert ev.z == pytest.approx(5.3573, abs=1e-4)  # one stratum: the pooled two-proportion z
    assert ev.critical_z == pytest.approx(2.3940, abs=1e-3)  # Phi^-1(1 - 0.025 / 3) at t = 1
    assert ev.margin == pytest.approx(0.0075)
    assert "worse by 2.00% > margin 0.75%" in verdict.reasons[0]


def test_significant_but_within_margin_does_not_fail() -> None:
    # 1.5% vs 1.0% on a huge sample: z is large, but 0.5 points is inside the 0.75 margin.
    policy = JudgePolicy(min_canary_messages=100_000)
    verdict = judge(counts(100_000, 1500), counts(900_000, 9000), elapsed_s=600.0, policy=policy)
    assert verdict.evidence.z is not None
    assert verdict.evidence.critical_z is not None
    assert verdict.evidence.z > verdict.evidence.critical_z
    assert verdict.decision is not Decision.FAIL


def test_beyond_margin_but_not_significant_keeps_baking() -> None:
    verdict = judge(counts(200, 5), counts(1800, 18), elapsed_s=100.0)
    assert verdict.evidence.difference is not None
    assert verdict.evidence.margin is not None
    assert verdict.evidence.difference > verdict.evidence.margin
    assert verdict.decision is Decision.CONTINUE


def test_too_few_failures_cannot_fail_the_comparison() -> None:
    small = JudgePolicy(min_canary_messages=50, min_primary_messages=0, min_test_failures=3)
    verdict = judge(counts(50, 2), counts(450, 0), elapsed_s=60.0, policy=small)
    assert verdict.evidence.z is not None
    assert verdict.evidence.z > (verdict.evidence.critical_z or math.inf)
    assert verdict.decision is not Decision.FAIL
    fewer = dataclasses.replace(small, min_test_failures=2)
    assert judge(counts(50, 2), counts(450, 0), 60.0, policy=fewer).decision is Decision.FAIL


def test_ceiling_fails_fast_where_the_primary_is_surely_below_it() -> None:
    verdict = judge(counts(50, 20), counts(450, 5), elapsed_s=60.0)
    assert verdict.decision is Decision.FAIL
    assert "above the ceiling 5.00%" in verdict.reasons[0]
    assert "while the primary's is below it" in verdict.reasons[0]
    assert judge(counts(5, 3), counts(45, 0), elapsed_s=60.0).decision is Decision.CONTINUE


def test_shared_outage_is_no_ceiling_breach_and_no_regression() -> None:
    # Both roles at 30% for ten minutes, 1% otherwise: the canary is no worse.
    minutes = [minute(100, 1, 900, 9) for _ in range(5)]
    minutes += [minute(100, 30, 900, 270) for _ in range(10)]
    minutes += [minute(100, 1, 900, 9) for _ in range(15)]
    reading = reading_of(minutes)
    for elapsed in (300.0, 900.0, 1800.0):
        verdict = judge_reading(reading, elapsed)
        assert verdict.decision is not Decision.FAIL
    assert judge_reading(reading, 1800.0).evidence.canary_rate == pytest.approx(0.106666, 1e-4)
    # The outage minutes weigh little: the pass comes once the rest is evidence enough.
    quiet = [minute(200, 2, 1800, 18) for _ in range(30)]
    verdict = judge_reading(reading_of(minutes[:15] + quiet), 2700.0)
    assert verdict.decision is Decision.PASS


def test_minutes_with_a_shared_outage_still_catch_a_worse_canary() -> None:
    minutes = [minute(100, 30, 900, 270) for _ in range(10)]
    minutes += [minute(100, 4, 900, 9) for _ in range(20)]
    verdict = judge_reading(reading_of(minutes), 1800.0)
    assert verdict.evidence.margin is not None
    assert verdict.evidence.margin < 0.02  # unweighted, the outage would make it 8 points
    assert verdict.decision is Decision.FAIL
    assert "worse by" in verdict.reasons[0]


def test_clustered_minutes_widen_the_error() -> None:
    # Same totals (4% vs 1%, 800 canary), once spread evenly, once all in two bad minutes.
    even = [minute(100, 4, 900, 9) for _ in range(8)]
    clustered = [minute(100, 16, 900, 9) for _ in range(2)] + [
        minute(100, 0, 900, 9) for _ in range(6)
    ]
    smooth, lumpy = (
        judge_reading(reading_of(even), 480.0),
        judge_reading(reading_of(clustered), 480.0),
    )
    assert smooth.evidence.dispersion == 1.0
    assert lumpy.evidence.dispersion is not None
    assert lumpy.evidence.dispersion > 3.0
    assert smooth.decision is Decision.FAIL
    assert lumpy.decision is Decision.CONTINUE  # two bad minutes are not yet evidence


@pytest.mark.parametrize(("backlog", "primary_processed"), [(25, 5), (0, 500), (None, 500)])
def test_silent_canary_fails(backlog: int | None, primary_processed: int) -> None:
    primary = counts(primary_processed, 0)
    verdict = judge(RoleCounts(), primary, elapsed_s=301.0, backlog=backlog)
    assert verdict.decision is Decision.FAIL
    assert verdict.reasons[0].startswith("silent canary: 0 processed in 301 s")
    assert judge(RoleCounts(), primary, 200.0, backlog).decision is Decision.CONTINUE


def test_no_data_from_either_role_is_inconclusive_not_a_silent_canary() -> None:
    verdict = judge(RoleCounts(), RoleCounts(), elapsed_s=301.0, backlog=25)
    assert verdict.decision is Decision.INCONCLUSIVE
    assert verdict.reasons[0].startswith("no metrics from either role in 301 s")
    assert "--namespace" in verdict.reasons[0]
    # Before silent_after_s, or without a backlog, the bake goes on.
    assert judge(RoleCounts(), RoleCounts(), 299.0, backlog=25).decision is Decision.CONTINUE
    assert judge(RoleCounts(), RoleCounts(), 301.0, backlog=0).decision is Decision.CONTINUE


def test_dead_canary_fails_on_its_share() -> None:
    policy = JudgePolicy(expected_canary_share=0.1)
    alive = [minute(100, 1, 900, 9) for _ in range(3)]
    dead = [minute(0, 0, 1000, 10) for _ in range(6)]
    verdict = judge_reading(reading_of(alive + dead), 540.0, policy)
    assert verdict.decision is Decision.FAIL
    assert verdict.reasons[0].startswith("dead or starved canary")
    ev = verdict.evidence
    assert ev.recent_canary_share == 0.0
    assert ev.canary_share_upper is not None
    assert ev.canary_share_upper < 0.05
    # Without an expected share the guard is off (the canary processed something: not silent).
    assert judge_reading(reading_of(alive + dead), 540.0).decision is not Decision.FAIL
    # A canary at its expected share is not starved.
    healthy = judge_reading(reading_of(alive * 2), 420.0, policy)
    assert healthy.decision is Decision.CONTINUE


def test_starved_canary_fails_on_its_bake_share() -> None:
    policy = JudgePolicy(expected_canary_share=0.25)
    verdict = judge(counts(200, 2), counts(9800, 98), elapsed_s=600.0, policy=policy)
    assert verdict.decision is Decision.FAIL
    assert "far below 0.5 x the expected 25.00%" in verdict.reasons[0]


def slow_minute(c_slow: int, p_slow: int, n_c: int = 100, n_p: int = 900) -> Minute:
    return minute(
        n_c,
        1,
        n_p,
        9,
        c_time=TimeSummary(n_c, 20.0 * n_c, 80.0, c_slow),
        p_time=TimeSummary(n_p, 20.0 * n_p, 80.0, p_slow),
    )


def test_latency_by_distribution_fails_a_slower_canary() -> None:
    slow = reading_of([slow_minute(30, 90) for _ in range(5)], latency_threshold_ms=40.0)
    verdict = judge_reading(slow, 300.0)
    assert verdict.decision is Decision.FAIL
    assert verdict.evidence.latency_method == "percentile"
    assert verdict.evidence.canary_slow_rate == pytest.approx(0.3)
    assert verdict.evidence.primary_slow_rate == pytest.approx(0.1)
    assert (
        "30.0% of its messages took longer than the primary's p90 (40.0 ms)" in (verdict.reasons[0])
    )
    alike = reading_of([slow_minute(11, 90) for _ in range(5)], latency_threshold_ms=40.0)
    assert judge_reading(alike, 300.0).decision is Decision.CONTINUE


def test_latency_margin_must_be_cleared_for_a_pass() -> None:
    # Failure rates alike on 6000 canary messages, but the slow share 14% vs 10%: not surely
    # within the latency margin (5 points) yet, and not surely beyond it: no pass.
    minutes = [slow_minute(14, 90) for _ in range(60)]
    verdict = judge_reading(reading_of(minutes, latency_threshold_ms=40.0), 3599.0)
    assert verdict.decision is Decision.CONTINUE
    assert any("slow-share difference" in r for r in verdict.reasons)
    fine = [slow_minute(10, 90) for _ in range(60)]
    assert judge_reading(reading_of(fine, latency_threshold_ms=40.0), 3599.0).decision is (
        Decision.PASS
    )


def fallback_minute(c_sum: float, c_max: float, p_sum: float = 18_000.0) -> Minute:
    return minute(
        100,
        1,
        900,
        9,
        c_time=TimeSummary(100, c_sum, c_max),
        p_time=TimeSummary(900, p_sum, 80.0),
    )


def test_latency_fallback_catches_a_grossly_slow_canary() -> None:
    # Three whole minutes and the newest, partial one (not judged: a role may not have flushed).
    slow = reading_of([fallback_minute(6000.0, 200.0) for _ in range(4)])  # 3x
    verdict = judge_reading(slow, 240.0)
    assert verdict.decision is Decision.FAIL
    assert verdict.evidence.latency_method == "fallback"
    assert verdict.evidence.latency_ratio == pytest.approx((5800.0 / 99) / (17920.0 / 899))
    assert "median per-minute processing time" in verdict.reasons[0]
    # Too few whole minutes to say.
    assert judge_reading(reading_of([fallback_minute(6000.0, 200.0)] * 3), 180.0).decision is (
        Decision.CONTINUE
    )


def test_the_newest_minute_before_a_role_flushed_is_not_judged() -> None:
    # Two healthy whole minutes, then the newest minute where only the primary has flushed yet: the
    # canary is neither dead (0 of its share) nor slow (a handful of messages) on that evidence.
    healthy = [minute(100, 1, 900, 9) for _ in range(2)]
    lagging = minute(0, 0, 400, 4)
    policy = JudgePolicy(expected_canary_share=0.1)
    verdict = judge_reading(reading_of([*healthy, lagging]), 150.0, policy)
    assert verdict.decision is Decision.CONTINUE, verdict.reasons
    assert not any("dead or starved" in reason for reason in verdict.reasons)
    # The same newest minute as the only one the bake has: nothing to judge a share on yet.
    early = judge_reading(reading_of([lagging]), 30.0, policy)
    assert early.decision is Decision.CONTINUE, early.reasons
    # Once whole minutes show it, a silent canary is caught.
    dead = [minute(0, 0, 400, 4) for _ in range(3)]
    late = judge_reading(reading_of(dead), 180.0, policy)
    assert late.decision is Decision.FAIL
    assert "dead or starved" in late.reasons[0]


def test_latency_fallback_ignores_a_timeout_tail() -> None:
    # Each minute one canary message ran into a 30 s timeout: the mean is 15x, the trimmed mean not.
    tail = [fallback_minute(2000.0 - 20.0 + 30_000.0, 30_000.0) for _ in range(5)]
    verdict = judge_reading(reading_of(tail), 300.0)
    assert verdict.decision is Decision.CONTINUE
    assert verdict.evidence.latency_ratio == pytest.approx(1.0, abs=0.01)


def test_low_traffic_says_cannot_reach_n_at_the_first_look_that_can_know() -> None:
    # 5 canary first attempts a minute: an hour brings ~300, far from the 1000 or more needed.
    minutes = [minute(5, 0, 45, 1) for _ in range(3)]
    early = judge_reading(reading_of(minutes[:2]), 119.0)
    assert early.decision is Decision.CONTINUE  # one complete minute: no rate yet
    verdict = judge_reading(reading_of(minutes), 180.0)
    assert verdict.decision is Decision.INCONCLUSIVE
    assert verdict.reasons[0].startswith("cannot reach N = ")
    ev = verdict.evidence
    assert ev.least_canary_messages is not None
    assert ev.reachable_canary_messages is not None
    assert ev.reachable_canary_messages < ev.least_canary_messages


def test_cannot_reach_waits_for_the_dead_canary_guard() -> None:
    policy = JudgePolicy(expected_canary_share=0.1)
    minutes = [minute(3, 0, 97, 1)] * 3  # looks starved, not yet surely
    verdict = judge_reading(reading_of(minutes), 180.0, policy)
    assert verdict.decision is Decision.CONTINUE


def test_bake_sizing_is_a_function_of_rate_margin_and_share() -> None:
    verdict = judge(counts(500, 5), counts(4500, 45), elapsed_s=300.0)
    expected = stats.planned_sample(0.01, 0.0075, 0.1, 0.05, 0.95)
    assert verdict.evidence.planned_canary_messages == expected
    assert expected == 3664


def test_every_failed_check_is_a_reason() -> None:
    policy = JudgePolicy(expected_canary_share=0.5)
    verdict = judge(counts(1000, 200), counts(9000, 90), elapsed_s=300.0, policy=policy)
    assert verdict.decision is Decision.FAIL
    assert len(verdict.reasons) == 3  # share, ceiling, regression
    assert verdict.reasons[0].startswith("dead or starved")


@pytest.mark.parametrize(
    ("decision", "policy", "expected"),
    [
        (Decision.INCONCLUSIVE, InconclusivePolicy.FAIL, Decision.FAIL),
        (Decision.INCONCLUSIVE, InconclusivePolicy.PASS, Decision.PASS),
        (Decision.INCONCLUSIVE, InconclusivePolicy.REPORT, Decision.INCONCLUSIVE),
        (Decision.PASS, InconclusivePolicy.FAIL, Decision.PASS),
        (Decision.FAIL, InconclusivePolicy.PASS, Decision.FAIL),
    ],
)
def test_resolve(decision: Decision, policy: InconclusivePolicy, expected: Decision) -> None:
    assert resolve(decision, policy) is expected


@pytest.mark.parametrize(
    "change",
    [
        {"alpha": 0.0},
        {"min_bake_s": 4000.0},
        {"abs_margin": -0.1},
        {"absolute_failure_ceiling": 0.0},
        {"min_canary_messages": 0},
        {"pass_power": 0.4},
        {"expected_canary_share": 1.0},
        {"latency_fallback_ratio": 1.0},
    ],
)
def test_policy_rejects_impossible_values(change: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(change))):
        dataclasses.replace(DEFAULT_POLICY, **change)


@pytest.mark.parametrize(("n", "failed", "processed"), [(-1, 0, 0), (5, 6, 6), (5, 0, -1)])
def test_role_counts_reject_impossible_counts(n: int, failed: int, processed: int) -> None:
    with pytest.raises(ValueError, match=r"count|non-successes"):
        RoleCounts(n, failed, processed)


# --- run_bake(): a fake clock, no sleeping --------------------------------------------------------


class FakeClock:
    """Seconds that pass only when the code under test sleeps."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_bake_looks_every_interval_until_pass() -> None:
    clock = FakeClock()
    start = clock()

    def read() -> Reading:  # 100 canary and 900 primary first attempts a minute, 1% failing
        minutes = int((clock() - start) // 60)
        return Reading(counts(100 * minutes, minutes), counts(900 * minutes, 9 * minutes), 0)

    looks: list[Verdict] = []
    verdict = run_bake(read, clock, clock.sleep, interval_s=60.0, on_look=looks.append)
    assert verdict.decision is Decision.PASS
    assert verdict.evidence.elapsed_s == 1380.0  # 2300 canary first attempts: the bound is in
    assert clock.sleeps == [60.0] * 23
    assert [v.decision for v in looks] == [Decision.CONTINUE] * 23 + [Decision.PASS]


def test_bake_ends_inconclusive_exactly_at_max_bake() -> None:
    clock = FakeClock()
    policy = JudgePolicy(max_bake_s=1000.0)
    verdict = run_bake(lambda: Reading(RoleCounts(), RoleCounts()), clock, clock.sleep, policy)
    assert verdict.decision is Decision.INCONCLUSIVE
    assert verdict.evidence.elapsed_s == 1000.0
    assert clock.sleeps == [60.0] * 16 + [40.0]


def test_bake_fails_early_and_counts_from_a_past_start() -> None:
    clock = FakeClock()
    reading = Reading(counts(1000, 30), counts(9000, 90))
    verdict = run_bake(lambda: reading, clock, clock.sleep, started_s=clock() - 120.0)
    assert verdict.decision is Decision.FAIL
    assert verdict.evidence.elapsed_s == 120.0
    assert clock.sleeps == []


def test_bake_rejects_a_bad_interval() -> None:
    clock = FakeClock()
    with pytest.raises(ValueError, match="interval_s"):
        run_bake(lambda: Reading(RoleCounts(), RoleCounts()), clock, clock.sleep, interval_s=0.0)


# --- reader: pagination, missing data, the window ------------------------------------------------


class PagedCloudWatch:
    """A CloudWatch stand-in that answers GetMetricData in pages, to check NextToken handling."""

    def __init__(self, pages: list[dict[str, object]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, object]] = []

    def get_metric_data(self, **kwargs: object) -> Mapping[str, object]:
        self.calls.append(kwargs)
        return self.pages[len(self.calls) - 1]


T0 = datetime(2024, 1, 1, 12, tzinfo=UTC)


def _result(query_id: str, *values: float, first: int = 0) -> dict[str, object]:
    stamps = [T0 + timedelta(minutes=first + i) for i in range(len(values))]
    return {"Id": query_id, "Timestamps": stamps, "Values": list(values)}


def test_reader_keeps_minutes_sums_every_page_and_reads_missing_data_as_zero() -> None:
    pages: list[dict[str, object]] = [
        {
            "MetricDataResults": [
                _result("canary_firstattemptprocessed_sum", 40.0, 60.0),
                _result("canary_firstattemptunsucceeded_sum", 1.0),
                _result("canary_processingtime_sum", 1000.0),
                _result("canary_processingtime_samplecount", 100.0),
                _result("canary_processingtime_maximum", 90.0),
                _result("primary_firstattemptprocessed_sum"),
            ],
            "NextToken": "page-2",
        },
        {
            "MetricDataResults": [
                _result("canary_firstattemptprocessed_sum", 5.0, first=2),
                _result("primary_firstattemptprocessed_sum", 900.0, first=1),
                _result("primary_firstattemptunsucceeded_sum", 950.0, first=1),  # split edge
            ]
        },
    ]
    client = PagedCloudWatch(pages)
    canary, primary = read_role_counts(client, MetricsQuery("orders"), T0, T0 + timedelta(1))
    assert canary == RoleCounts(105, 1, 0, 10.0)
    assert primary == RoleCounts(900, 900, 0, None)
    assert "NextToken" not in client.calls[0]
    assert client.calls[1]["NextToken"] == "page-2"
    assert client.calls[0]["ScanBy"] == "TimestampAscending"
    client = PagedCloudWatch(pages)
    minutes = read_minutes(client, MetricsQuery("orders"), T0, T0 + timedelta(1))
    assert [m.canary.first_attempt_processed for m in minutes] == [40, 60, 5]
    assert [m.primary.first_attempt_unsucceeded for m in minutes] == [0, 900, 0]
    assert minutes[0].canary_time == TimeSummary(100, 1000.0, 90.0)
    assert minutes[0].at == T0
    assert minutes[1].canary_time is None


def test_queries_name_the_schema() -> None:
    queries = metric_data_queries(MetricsQuery("orders", queue="orders-q", namespace="Custom"))
    assert len(queries) == 12
    stats_of = {(q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Stat"]) for q in queries}  # type: ignore[index]
    assert (MetricName.FIRST_ATTEMPT_UNSUCCEEDED, "Sum") in stats_of
    assert (MetricName.FIRST_ATTEMPT_PROCESSED, "Sum") in stats_of
    assert (MetricName.PROCESSING_TIME, "Maximum") in stats_of
    assert (MetricName.FIRST_ATTEMPT_FAILED, "Sum") not in stats_of
    metric = queries[0]["MetricStat"]["Metric"]  # type: ignore[index]
    assert metric["Namespace"] == "Custom"
    assert [d["Name"] for d in metric["Dimensions"]] == [
        Dimension.SERVICE,
        Dimension.DEPLOYMENT_ROLE,
        Dimension.QUEUE,
    ]
    no_queue = metric_data_queries(MetricsQuery("orders"))[0]["MetricStat"]["Metric"]  # type: ignore[index]
    assert len(no_queue["Dimensions"]) == 2
    assert MetricsQuery("orders").namespace == DEFAULT_NAMESPACE


def test_source_starts_at_the_next_minute_and_skips_an_empty_window() -> None:
    client = PagedCloudWatch([{"MetricDataResults": []}] * 3)
    start = datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC)
    now = [start + timedelta(seconds=20)]
    source = CloudWatchSource(client, MetricsQuery("orders"), start, now=lambda: now[0])
    assert source() == Reading(RoleCounts(), RoleCounts(), None)
    assert client.calls == []
    now[0] = start + timedelta(minutes=5)
    source()
    assert client.calls[0]["StartTime"] == datetime(2024, 1, 1, 12, 1, tzinfo=UTC)
    assert client.calls[0]["EndTime"] == now[0]


class SampleCloudWatch:
    """GetMetricData computed faithfully on given per-minute samples, percentiles included.

    `pNN` is the nearest-rank percentile of the period's samples; `PR(:x)` the percentage of
    samples at or below x (CloudWatch's percentile rank); `TC(x:)` the count of samples above x.
    """

    def __init__(
        self, samples: dict[tuple[str, int], list[float]], *, refuse: bool = False
    ) -> None:
        self.samples = samples  # (role, minute index from T0) -> handler times
        self.refuse = refuse
        self.calls: list[str] = []

    def get_metric_data(self, **kwargs: Any) -> Mapping[str, object]:
        results = []
        for query in kwargs["MetricDataQueries"]:
            stat = query["MetricStat"]["Stat"]
            self.calls.append(stat)
            if self.refuse and stat not in {"Sum", "SampleCount", "Maximum", "Minimum", "Average"}:
                raise botocore.exceptions.ClientError(
                    {"Error": {"Code": "InternalError", "Message": "aggregation failed"}},
                    "GetMetricData",
                )
            dims = query["MetricStat"]["Metric"]["Dimensions"]
            role = next(d["Value"] for d in dims if d["Name"] == "DeploymentRole")
            metric = query["MetricStat"]["Metric"]["MetricName"]
            step = query["MetricStat"]["Period"] // 60
            groups: dict[int, list[float]] = {}
            for (who, index), values in sorted(self.samples.items()):
                if who == role:
                    groups.setdefault(index // step * step, []).extend(values)
            stamps, values_out = [], []
            for index, values in sorted(groups.items()):
                stamps.append(T0 + timedelta(minutes=index))
                values_out.append(self._stat(metric, stat, sorted(values)))
            results.append({"Id": query["Id"], "Timestamps": stamps, "Values": values_out})
        return {"MetricDataResults": results}

    @staticmethod
    def _stat(metric: str, stat: str, values: list[float]) -> float:  # noqa: PLR0911 (one per statistic)
        if metric != MetricName.PROCESSING_TIME:
            return float(len(values)) if "Unsucceeded" not in metric else 0.0
        if stat == "Sum":
            return sum(values)
        if stat == "SampleCount":
            return float(len(values))
        if stat == "Maximum":
            return max(values)
        if stat.startswith("PR(:"):
            limit = float(stat[4:-1])
            return 100.0 * sum(v <= limit for v in values) / len(values)
        if stat.startswith("TC("):
            limit = float(stat[3:-2])
            return float(sum(v > limit for v in values))
        rank = max(1, math.ceil(float(stat[1:]) / 100.0 * len(values)))
        return values[rank - 1]


def _samples(canary_factor: float, minutes: int = 5) -> dict[tuple[str, int], list[float]]:
    base = [float(ms) for ms in range(1, 101)]  # 1..100 ms: p90 is 90 ms
    samples: dict[tuple[str, int], list[float]] = {}
    for index in range(minutes):
        samples["primary", index] = base * 9
        samples["canary", index] = [v * canary_factor for v in base]
    return samples


def test_source_reads_percentiles_and_slow_counts() -> None:
    client = SampleCloudWatch(_samples(1.5))
    now = T0 + timedelta(minutes=5)
    source = CloudWatchSource(client, MetricsQuery("orders"), T0, now=lambda: now)
    reading = source()
    assert reading.latency_threshold_ms == 90.0
    assert "p90" in client.calls
    assert "PR(:90)" in client.calls
    first = reading.minutes[0]
    assert first.primary_time is not None
    assert first.canary_time is not None
    assert first.primary_time.slow == 90  # 10 of every 100 above 90 ms, 9 times
    assert first.canary_time.slow == 40  # 1.5 x 61..100 > 90 ms
    verdict = judge_reading(reading, 300.0)
    assert verdict.evidence.latency_method == "percentile"
    assert verdict.evidence.canary_slow_rate == pytest.approx(0.4)
    # The same data the other way round: TC(90:) counts what PR(:90) implies.
    tc = SampleCloudWatch._stat(
        MetricName.PROCESSING_TIME, "TC(90:)", sorted(_samples(1.5)["canary", 0])
    )
    assert tc == 40.0


def test_source_falls_back_once_when_percentiles_are_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = SampleCloudWatch(_samples(3.0), refuse=True)
    now = T0 + timedelta(minutes=5)
    source = CloudWatchSource(client, MetricsQuery("orders"), T0, now=lambda: now)
    with caplog.at_level("WARNING", logger="qworker.canary.reader"):
        first, second = source(), source()
    assert source.latency is LatencyStats.FALLBACK
    assert client.calls.count("p90") == 1  # asked once, then never again
    assert sum("percentile statistics unavailable" in r.message for r in caplog.records) == 1
    assert first.latency_threshold_ms is None
    assert second.minutes[0].canary_time == TimeSummary(100, sum(range(1, 101)) * 3.0, 300.0)
    verdict = judge_reading(second, 300.0)
    assert verdict.evidence.latency_method == "fallback"
    assert verdict.decision is Decision.FAIL


def test_source_percentile_mode_does_not_fall_back() -> None:
    client = SampleCloudWatch(_samples(1.0), refuse=True)
    now = T0 + timedelta(minutes=5)
    source = CloudWatchSource(
        client, MetricsQuery("orders"), T0, now=lambda: now, latency=LatencyStats.PERCENTILE
    )
    with pytest.raises(ServerError) as info:  # botocore's error, mapped by qworker._aws
        source()
    assert info.value.code == "InternalError"


class FakeEcs:
    def __init__(
        self,
        running: dict[str, int],
        pollers: dict[str, str | None],
        concurrency: dict[str, str] | None = None,
    ) -> None:
        self.running, self.pollers, self.concurrency = running, pollers, concurrency or {}

    def describe_services(self, **kwargs: Any) -> Mapping[str, object]:
        return {
            "services": [
                {"serviceName": name, "runningCount": self.running[name], "taskDefinition": name}
                for name in kwargs["services"]
                if name in self.running
            ]
        }

    def describe_task_definition(self, **kwargs: Any) -> Mapping[str, object]:
        name = kwargs["taskDefinition"]
        value = self.pollers[name]
        env = [] if value is None else [{"name": "QWORKER_POLLERS", "value": value}]
        if name in self.concurrency:
            env.append({"name": "QWORKER_CONCURRENCY", "value": self.concurrency[name]})
        return {"taskDefinition": {"containerDefinitions": [{"environment": env}]}}


def test_expected_share_from_ecs_tasks_and_pollers() -> None:
    # The primary sets no pollers: the worker's default for the default concurrency (16 -> 8).
    ecs = FakeEcs({"canary": 1, "primary": 4}, {"canary": "4", "primary": None})
    assert expected_share_from_ecs(ecs, "c", "canary", "primary", 16) == pytest.approx(4 / 36)
    idle = FakeEcs({"canary": 0, "primary": 0}, {"canary": None, "primary": None})
    assert expected_share_from_ecs(idle, "c", "canary", "primary", 16) is None
    with pytest.raises(LookupError, match="missing"):
        expected_share_from_ecs(ecs, "c", "missing", "primary", 16)


def test_expected_share_from_ecs_pollers_follow_each_task_definitions_concurrency() -> None:
    """Pollers absent or 0 follow the task's own QWORKER_CONCURRENCY, as the worker does."""
    ecs = FakeEcs(
        {"canary": 1, "primary": 3},
        {"canary": "0", "primary": None},
        concurrency={"canary": "160", "primary": "400"},
    )
    # canary: 160 slots -> 16 pollers; primary: 400 slots -> 40 pollers each, 3 tasks.
    assert expected_share_from_ecs(ecs, "c", "canary", "primary", 16) == pytest.approx(
        16 / (16 + 3 * 40)
    )
    malformed = FakeEcs({"canary": 1, "primary": 1}, {"canary": "x", "primary": "2"})
    # A malformed value is what the worker would refuse; the share falls back to the default.
    assert expected_share_from_ecs(malformed, "c", "canary", "primary", 16) == pytest.approx(8 / 10)


def test_queue_name_of() -> None:
    assert queue_name_of("orders") == "orders"
    assert queue_name_of("https://sqs.eu-west-1.amazonaws.com/123456789012/orders.fifo") == (
        "orders.fifo"
    )


# --- the CLI with an injected reader --------------------------------------------------------------


def run_cli(
    argv: list[str], reading: Reading | Callable[[], Reading], clock: FakeClock | None = None
) -> tuple[int, str, str]:
    args = cli.build_parser().parse_args(["canary", "judge", "--service", "orders", *argv])
    out, err = io.StringIO(), io.StringIO()
    clock = clock or FakeClock(datetime(2024, 6, 1, 12, tzinfo=UTC).timestamp())
    source = reading if callable(reading) else (lambda: reading)
    code = cli.judge_command(
        args, source=source, clock=clock, sleep=clock.sleep, stdout=out, stderr=err
    )
    return code, out.getvalue(), err.getvalue()


GOOD = Reading(counts(6000, 60, 6010, 12.0), counts(54000, 540, 54100, 11.0), backlog=3)
BAD = Reading(counts(1000, 30), counts(9000, 90))
THIN = Reading(counts(400, 4), counts(3600, 36))


def test_cli_pass_prints_the_evidence_table() -> None:
    code, out, _ = run_cli(["--since-minutes", "30"], GOOD)
    assert code == 0
    assert out.startswith("canary judgement: PASS\n")
    assert re.search(r"first-attempt non-success rate +1\.00% +1\.00%\n", out)
    assert re.search(r"backlog +3\n", out)
    assert "mean processing time (ms)" in out
    assert "upper bound" in out
    assert "z / critical z" in out


def test_cli_fail_exits_1_and_json_has_the_numbers() -> None:
    code, out, _ = run_cli(["--since-minutes", "30", "--json"], BAD)
    assert code == 1
    document = json.loads(out)
    assert document["decision"] == "fail"
    assert document["exit_code"] == 1
    assert document["evidence"]["canary"]["first_attempt_unsucceeded"] == 30
    assert document["evidence"]["z"] == pytest.approx(5.3573, abs=1e-4)


@pytest.mark.parametrize(
    ("flags", "code", "title"),
    [
        ([], 1, "INCONCLUSIVE -> FAIL"),
        (["--inconclusive-pass"], 0, "INCONCLUSIVE -> PASS"),
        (["--on-inconclusive", "report"], 3, "INCONCLUSIVE\n"),
    ],
)
def test_cli_inconclusive_policy(flags: list[str], code: int, title: str) -> None:
    result = run_cli(["--since-minutes", "60", *flags], THIN)
    assert result[0] == code
    assert title in result[1]


@pytest.mark.parametrize("start", ["2024-06-01T11:40:00", "2024-06-01T13:40:00+02:00"])
def test_cli_start_is_utc_unless_it_says_otherwise(start: str) -> None:
    code, out, _ = run_cli(["--start", start, "--json"], GOOD)  # the fake now is 12:00 UTC
    assert code == 0
    assert json.loads(out)["evidence"]["elapsed_s"] == 1200.0


def test_cli_one_look_without_enough_evidence_exits_3() -> None:
    assert run_cli(["--since-minutes", "5"], THIN)[0] == 3


def test_cli_policy_flags_reach_the_judge() -> None:
    flags = ["--since-minutes", "5", "--min-canary-messages", "400", "--min-bake-s", "60"]
    assert run_cli(flags, THIN)[0] == 3
    assert run_cli([*flags, "--abs-margin", "0.05"], THIN)[0] == 0


def test_cli_has_a_flag_for_every_policy_field() -> None:
    parser = cli.build_parser()
    for field in dataclasses.fields(JudgePolicy):
        if field.name == "inconclusive_policy":
            continue
        flag = "--" + field.name.replace("_", "-")
        value = "--no-continuity-correction" if field.type == "bool" else None
        argv = ["canary", "judge", "--service", "s"]
        argv += [value] if value else [flag, "0.5" if "float" in str(field.type) else "7"]
        args = parser.parse_args(argv)
        assert getattr(args, field.name) is not None, flag


def test_cli_later_flags_win_so_extra_arguments_override() -> None:
    extra = ["--abs-margin", "0.05", "--min-canary-messages", "400", "--min-bake-s", "60"]
    flags = ["--since-minutes", "5", "--abs-margin", "0.001", *extra]
    assert run_cli(flags, THIN)[0] == 0


@pytest.mark.parametrize("max_bake", ["300", "450", "3600"])
def test_cli_short_max_bake_clamps_the_min_bake(max_bake: str) -> None:
    code, out, err = run_cli(["--since-minutes", "60", "--max-bake-s", max_bake, "--json"], GOOD)
    assert code == 0, err
    policy = json.loads(out)["policy"]
    assert policy["max_bake_s"] == float(max_bake)
    assert policy["min_bake_s"] == min(600.0, float(max_bake))


def test_cli_explicit_min_bake_above_max_bake_exits_2() -> None:
    code, _, err = run_cli(
        ["--since-minutes", "5", "--min-bake-s", "900", "--max-bake-s", "300"], GOOD
    )
    assert code == 2
    assert "min_bake_s" in err


def test_cli_expected_share_flag_and_from_ecs() -> None:
    dead = Reading(counts(0, 0, 1), counts(5000, 50))
    code, out, _ = run_cli(["--since-minutes", "10", "--expected-canary-share", "0.1"], dead)
    assert code == 1
    assert "dead or starved canary" in out
    args = cli.build_parser().parse_args(
        [
            "canary",
            "judge",
            "--service",
            "orders",
            "--since-minutes",
            "10",
            "--json",
            "--ecs-cluster",
            "c",
            "--canary-ecs-service",
            "canary",
            "--primary-ecs-service",
            "primary",
        ]
    )
    out_io, err_io = io.StringIO(), io.StringIO()
    clock = FakeClock(datetime(2024, 6, 1, 12, tzinfo=UTC).timestamp())
    ecs = FakeEcs({"canary": 1, "primary": 9}, {"canary": None, "primary": None})
    code = cli.judge_command(
        args,
        source=lambda: dead,
        ecs=ecs,
        clock=clock,
        sleep=clock.sleep,
        stdout=out_io,
        stderr=err_io,
    )
    assert code == 1
    assert json.loads(out_io.getvalue())["policy"]["expected_canary_share"] == pytest.approx(0.1)
    half = args.primary_ecs_service
    args.primary_ecs_service = None
    assert cli.judge_command(args, source=lambda: dead, ecs=ecs, clock=clock, stderr=err_io) == 2
    args.primary_ecs_service = half
    args.canary_ecs_service = "missing"
    code = cli.judge_command(args, source=lambda: dead, ecs=ecs, clock=clock, stderr=err_io)
    assert code == 4


def test_cli_wait_bakes_until_a_decision() -> None:
    clock = FakeClock(datetime(2024, 6, 1, 12, tzinfo=UTC).timestamp())
    start = clock()

    def read() -> Reading:
        minutes = int((clock() - start) // 60)
        return Reading(counts(100 * minutes, minutes), counts(900 * minutes, 9 * minutes), 0)

    code, out, err = run_cli(["--wait", "--interval-s", "120", "--max-bake-s", "1800"], read, clock)
    assert code == 0
    assert "PASS" in out
    assert clock.sleeps == [120.0] * 12  # the bound is below the margin at 2400 canary
    assert err.count("continue: canary") == 12


@pytest.mark.parametrize(
    "flags",
    [
        [],  # no window and no --wait
        ["--start", "2099-01-01T00:00:00Z"],
        ["--since-minutes", "0"],
        ["--since-minutes", "5", "--interval-s", "0"],
        ["--since-minutes", "5", "--alpha", "2"],
    ],
)
def test_cli_bad_values_exit_2(flags: list[str]) -> None:
    code, _, err = run_cli(flags, GOOD)
    assert code == 2
    assert "error:" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["canary", "judge"],  # no --service
        ["canary", "judge", "--service", "s", "--start", "yesterday"],
        ["canary", "judge", "--service", "s", "--since-minutes", "5", "--start", "2024-01-01"],
        ["canary"],
    ],
)
def test_cli_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_unreadable_metrics_exit_4() -> None:
    def broken() -> Reading:  # the reader maps botocore's errors (see test_canary_cli.py)
        raise QueueUnavailable("GetMetricData: Could not connect to the endpoint URL")

    code, _, err = run_cli(["--since-minutes", "5"], broken)
    assert code == 4
    assert "cannot read the metrics" in err


def test_register_adds_canary_judge_to_another_parser() -> None:
    parser = argparse.ArgumentParser(prog="qworker")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run")
    cli.register(sub)
    args = parser.parse_args(
        ["canary", "judge", "--service", "s", "--queue", "q", "--wait", "--max-bake-s", "900"]
    )
    assert args.func is cli.judge_command
    assert (args.service, args.queue, args.wait, args.max_bake_s) == ("s", "q", True, 900.0)


# --- end to end against moto's and LocalStack's CloudWatch, over HTTP ---------------------


# The shared server fixtures (tests/servers.py, through conftest) start each server once per session
# on 127.0.0.1 and stop it by PID. Another CloudWatch-compatible server is one more param here.
@pytest.fixture(
    params=[
        pytest.param("moto", marks=[pytest.mark.integration, pytest.mark.moto]),
        pytest.param("localstack", marks=[pytest.mark.integration, pytest.mark.localstack]),
    ]
)
def metrics_endpoint(request: pytest.FixtureRequest) -> str:
    server = request.getfixturevalue(f"{request.param}_server")
    endpoint: str = server.endpoint_url
    return endpoint


MINUTES_AGO = range(10, 4, -1)  # six minutes of data, the newest five minutes ago


def put_role_metrics(
    cloudwatch: Any, service: str, role: str, *, n: int, unsucceeded: int, ms: float
) -> None:
    """Put one role's metrics per minute the way the worker emits them: both dimension sets."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    base = [{"Name": "Service", "Value": service}, {"Name": "DeploymentRole", "Value": role}]
    for ago in MINUTES_AGO:
        when = now - timedelta(minutes=ago)
        for dims in (base, [*base, {"Name": "Queue", "Value": service}]):
            values = {
                MetricName.FIRST_ATTEMPT_PROCESSED: n,
                MetricName.FIRST_ATTEMPT_FAILED: unsucceeded // 2,
                MetricName.FIRST_ATTEMPT_UNSUCCEEDED: unsucceeded,
                MetricName.PROCESSED: n + unsucceeded,
            }
            data: list[dict[str, Any]] = [
                {"MetricName": name.value, "Dimensions": dims, "Value": value, "Timestamp": when}
                for name, value in values.items()
            ]
            stats = {"SampleCount": n, "Sum": n * ms, "Minimum": 1.0, "Maximum": 10 * ms}
            data.append(
                {
                    "MetricName": MetricName.PROCESSING_TIME.value,
                    "Dimensions": dims,
                    "StatisticValues": stats,
                    "Timestamp": when,
                    "Unit": "Milliseconds",
                }
            )
            cloudwatch.put_metric_data(Namespace=DEFAULT_NAMESPACE, MetricData=data)


@pytest.mark.usefixtures("aws_env")
@pytest.mark.parametrize(("canary_unsucceeded", "code"), [(10, 0), (30, 1)])
def test_cli_end_to_end_on_a_server(
    metrics_endpoint: str,
    canary_unsucceeded: int,
    code: int,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    service = f"orders-{canary_unsucceeded}-{uuid.uuid4().hex[:6]}"
    cloudwatch, sqs = make_clients("us-east-1", metrics_endpoint)
    put_role_metrics(cloudwatch, service, "canary", n=1000, unsucceeded=canary_unsucceeded, ms=12.0)
    put_role_metrics(cloudwatch, service, "primary", n=9000, unsucceeded=90, ms=10.0)
    url = sqs.create_queue(QueueName=service)["QueueUrl"]  # type: ignore[attr-defined]
    sqs.send_message(QueueUrl=url, MessageBody="{}")  # type: ignore[attr-defined]
    argv = ["canary", "judge", "--service", service, "--queue", service]
    argv += ["--endpoint-url", metrics_endpoint, "--since-minutes", "30", "--json"]
    assert cli.main(argv) == code
    evidence = json.loads(capsys.readouterr().out)["evidence"]
    minutes = len(MINUTES_AGO)
    assert evidence["canary"] == {
        "first_attempt_processed": 1000 * minutes,
        "first_attempt_unsucceeded": canary_unsucceeded * minutes,  # not FirstAttemptFailed
        "processed": (1000 + canary_unsucceeded) * minutes,
        "processing_time_avg_ms": 12.0,
    }
    assert evidence["primary"]["first_attempt_processed"] == 9000 * minutes
    assert evidence["strata"] == minutes  # the per-minute series, one stratum a minute
    assert evidence["backlog"] == 1
    # Neither server serves percentile statistics: the judge falls back to trimmed means.
    assert evidence["latency_method"] == "fallback"
    assert evidence["latency_ratio"] == pytest.approx((11880.0 / 999) / (89900.0 / 8999))
    assert cli.main([*argv, "--no-backlog"]) == code
    assert json.loads(capsys.readouterr().out)["evidence"]["backlog"] is None
    if "localstack" in request.node.name:
        # LocalStack's GetMetricData matches any series whose dimensions CONTAIN the query's, so a
        # [Service, DeploymentRole] query also sums the [..., Queue] series (real CloudWatch matches
        # the set exactly). On LocalStack the judge must be given --queue.
        return
    # Without --queue the [Service, DeploymentRole] series gives the same totals: no double count.
    assert cli.main([*argv[:4], *argv[6:]]) == code
    assert json.loads(capsys.readouterr().out)["evidence"]["canary"] == evidence["canary"]


@pytest.mark.usefixtures("aws_env")
def test_backlog_of_a_missing_queue_is_unknown(metrics_endpoint: str) -> None:
    _, sqs = make_clients("us-east-1", metrics_endpoint)
    assert read_backlog(sqs, "no-such-queue") is None
    url = sqs.create_queue(QueueName="backlog-by-url")["QueueUrl"]  # type: ignore[attr-defined]
    assert read_backlog(sqs, url) == 0
