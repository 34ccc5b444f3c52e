"""The canary judge: each decision branch, the bake loop on a fake clock, the false-alarm rate and
power measured by simulation, the CloudWatch reader, and `qworker canary judge` end to end (with an
injected reader, and against a moto server over HTTP)."""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import random
import re
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import botocore.exceptions
import pytest

from qworker.canary import cli
from qworker.canary.judge import (
    DEFAULT_POLICY,
    Decision,
    InconclusivePolicy,
    JudgePolicy,
    Reading,
    RoleCounts,
    Verdict,
    judge,
    resolve,
    run_bake,
)
from qworker.canary.reader import (
    CloudWatchSource,
    MetricsQuery,
    make_clients,
    metric_data_queries,
    queue_name_of,
    read_backlog,
    read_role_counts,
)
from qworker.exceptions import ConfigError
from qworker.metrics import DEFAULT_NAMESPACE, Dimension, MetricName


def counts(
    n: int, failed: int, processed: int | None = None, ms: float | None = None
) -> RoleCounts:
    return RoleCounts(n, failed, n if processed is None else processed, ms)


# --- judge(): one branch at a time ---------------------------------------------------------------


def test_few_messages_continue_with_what_is_missing() -> None:
    verdict = judge(counts(40, 0), counts(360, 4), elapsed_s=120.0)
    assert verdict.decision is Decision.CONTINUE
    assert not verdict.terminal
    assert any("canary first attempts 40 < 1000" in r for r in verdict.reasons)
    assert any("baked 120 s < 600 s" in r for r in verdict.reasons)


def test_pass_needs_messages_and_time() -> None:
    verdict = judge(counts(1000, 10), counts(9000, 90), elapsed_s=600.0)
    assert verdict.decision is Decision.PASS
    assert "no significant regression" in verdict.reasons[0]
    early = judge(counts(1000, 10), counts(9000, 90), elapsed_s=599.0)
    assert early.decision is Decision.CONTINUE
    assert early.reasons == ("baked 599 s < 600 s",)


def test_pass_needs_primary_messages() -> None:
    verdict = judge(counts(1000, 10), counts(50, 0), elapsed_s=900.0)
    assert verdict.decision is Decision.CONTINUE
    assert verdict.reasons == ("primary first attempts 50 < 100",)
    lax = JudgePolicy(min_primary_messages=0)
    verdict = judge(counts(1000, 10), counts(0, 0), elapsed_s=900.0, policy=lax)
    assert verdict.decision is Decision.PASS
    assert "no primary data" in verdict.reasons[0]


def test_significant_regression_fails_early() -> None:
    verdict = judge(counts(1000, 30), counts(9000, 90), elapsed_s=300.0)
    assert verdict.decision is Decision.FAIL
    ev = verdict.evidence
    assert ev.z == pytest.approx(5.3573, abs=1e-4)
    assert ev.critical_z == pytest.approx(2.128, abs=1e-3)
    assert ev.margin == pytest.approx(0.005)
    assert "worse by 2.00% > margin 0.50%" in verdict.reasons[0]


def test_significant_but_within_margin_passes() -> None:
    # 1.4% vs 1.0% on a huge planned sample: z is large, but 0.4 points is inside the 0.5 margin.
    policy = JudgePolicy(min_canary_messages=100_000)
    verdict = judge(counts(100_000, 1400), counts(900_000, 9000), elapsed_s=600.0, policy=policy)
    assert verdict.evidence.z is not None
    assert verdict.evidence.critical_z is not None
    assert verdict.evidence.z > verdict.evidence.critical_z
    assert verdict.decision is Decision.PASS


def test_beyond_margin_but_not_significant_keeps_baking() -> None:
    verdict = judge(counts(200, 5), counts(1800, 18), elapsed_s=300.0)
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


def test_ceiling_fails_fast_with_enough_messages() -> None:
    verdict = judge(counts(50, 10), counts(450, 5), elapsed_s=60.0)
    assert verdict.decision is Decision.FAIL
    assert "above the ceiling 5.00%" in verdict.reasons[0]
    assert judge(counts(5, 3), counts(45, 0), elapsed_s=60.0).decision is Decision.CONTINUE


def test_rate_not_surely_below_the_ceiling_ends_inconclusive() -> None:
    # Both roles at 4.5%: no regression, but the canary is not surely under the 5% ceiling.
    verdict = judge(counts(1000, 45), counts(9000, 405), elapsed_s=900.0)
    assert verdict.decision is Decision.CONTINUE
    assert "not yet surely below the ceiling" in verdict.reasons[0]
    late = judge(counts(1000, 45), counts(9000, 405), elapsed_s=3600.0)
    assert late.decision is Decision.INCONCLUSIVE
    assert late.reasons[0] == "no decision after 3600 s"


@pytest.mark.parametrize(("backlog", "primary_processed"), [(25, 0), (0, 500), (None, 500)])
def test_silent_canary_fails(backlog: int | None, primary_processed: int) -> None:
    primary = counts(primary_processed, 0)
    verdict = judge(RoleCounts(), primary, elapsed_s=301.0, backlog=backlog)
    assert verdict.decision is Decision.FAIL
    assert verdict.reasons[0].startswith("silent canary: 0 processed in 301 s")
    assert judge(RoleCounts(), primary, 200.0, backlog).decision is Decision.CONTINUE


def test_idle_queue_is_not_a_silent_canary() -> None:
    verdict = judge(RoleCounts(), RoleCounts(), elapsed_s=3600.0, backlog=0)
    assert verdict.decision is Decision.INCONCLUSIVE
    # A quiet queue: a 10% canary missing all of 150 messages is unlikely but not evidence enough.
    assert judge(RoleCounts(), counts(150, 0), 900.0, backlog=0).decision is Decision.CONTINUE


def test_slow_canary_fails() -> None:
    verdict = judge(counts(1000, 10, ms=30.0), counts(9000, 90, ms=10.0), elapsed_s=300.0)
    assert verdict.decision is Decision.FAIL
    assert verdict.evidence.latency_ratio == pytest.approx(3.0)
    assert "3.00x the primary's 10.0 ms" in verdict.reasons[0]


@pytest.mark.parametrize(
    ("canary", "primary"),
    [
        (counts(1000, 10, ms=14.0), counts(9000, 90, ms=10.0)),  # within the ratio
        (counts(1000, 10, ms=3.0), counts(9000, 90, ms=1.0)),  # 3x, but only 2 ms
        (counts(50, 0, ms=30.0), counts(450, 4, ms=10.0)),  # too few messages
        (counts(1000, 10, ms=30.0), counts(9000, 90, ms=None)),  # no primary data
    ],
)
def test_latency_guards(canary: RoleCounts, primary: RoleCounts) -> None:
    assert judge(canary, primary, elapsed_s=300.0).decision is Decision.CONTINUE


def test_every_failed_check_is_a_reason() -> None:
    verdict = judge(counts(1000, 200, ms=50.0), counts(9000, 90, ms=10.0), elapsed_s=300.0)
    assert verdict.decision is Decision.FAIL
    assert len(verdict.reasons) == 3  # ceiling, regression, latency


def test_not_enough_evidence_by_max_bake_is_inconclusive() -> None:
    verdict = judge(counts(400, 4), counts(3600, 36), elapsed_s=3600.0)
    assert verdict.decision is Decision.INCONCLUSIVE
    assert "canary first attempts 400 < 1000" in verdict.reasons


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
        {"ceiling_pass_confidence": 1.0},
    ],
)
def test_policy_rejects_impossible_values(change: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=next(iter(change))):
        dataclasses.replace(DEFAULT_POLICY, **change)


@pytest.mark.parametrize(("n", "failed", "processed"), [(-1, 0, 0), (5, 6, 6), (5, 0, -1)])
def test_role_counts_reject_impossible_counts(n: int, failed: int, processed: int) -> None:
    with pytest.raises(ValueError, match=r"count|failures"):
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
    assert verdict.evidence.elapsed_s == 600.0  # 1000 canary messages at 10 min = min_bake_s
    assert clock.sleeps == [60.0] * 10
    assert [v.decision for v in looks] == [Decision.CONTINUE] * 10 + [Decision.PASS]


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


# --- simulation: false alarms (A/A) and power, as the bake would look --------------------------

SIM_RUNS = 2000
CANARY_SHARE = 0.1  # 9:1 primary:canary
TRAFFIC_PER_MINUTE = {"slow": 100, "steady": 500, "busy": 2500}  # all first attempts, both roles


def binomial(rng: random.Random, n: int, p: float) -> int:
    """An exact Binomial(n, p) draw by geometric gaps between successes (fast for small p)."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    log_q, successes, position = math.log1p(-p), 0, 0
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return successes
        successes += 1


def simulate_bake(
    rng: random.Random, canary_rate: float, primary_rate: float, per_min: int
) -> Verdict:
    """One bake: messages arrive at random to either role while the judge looks every minute."""
    clock = FakeClock(0.0)
    canary, primary = [0, 0], [0, 0]

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        arrived = round(per_min * seconds / 60.0)
        to_canary = binomial(rng, arrived, CANARY_SHARE)
        canary[0] += to_canary
        canary[1] += binomial(rng, to_canary, canary_rate)
        primary[0] += arrived - to_canary
        primary[1] += binomial(rng, arrived - to_canary, primary_rate)

    def read() -> Reading:
        return Reading(counts(*canary), counts(*primary), backlog=0)

    return run_bake(read, clock, sleep, DEFAULT_POLICY, interval_s=60.0)


def measure(canary_rate: float, primary_rate: float, per_min: int) -> dict[str, float]:
    rng = random.Random(20240611 + per_min)  # noqa: S311 (a seeded simulation, not crypto)
    verdicts = [simulate_bake(rng, canary_rate, primary_rate, per_min) for _ in range(SIM_RUNS)]
    fails = [v for v in verdicts if v.decision is Decision.FAIL]
    return {
        "fail": len(fails) / SIM_RUNS,
        "fail_within_1000": sum(v.evidence.canary.first_attempt_processed <= 1000 for v in fails)
        / SIM_RUNS,
        "pass": sum(v.decision is Decision.PASS for v in verdicts) / SIM_RUNS,
        "inconclusive": sum(v.decision is Decision.INCONCLUSIVE for v in verdicts) / SIM_RUNS,
    }


@pytest.mark.parametrize("traffic", list(TRAFFIC_PER_MINUTE))
def test_false_alarm_rate_a_a(traffic: str, record_property: Callable[[str, object], None]) -> None:
    rates = measure(0.01, 0.01, TRAFFIC_PER_MINUTE[traffic])
    print(f"A/A 1% vs 1%, {traffic} ({TRAFFIC_PER_MINUTE[traffic]}/min): {rates}")  # noqa: T201 (the measured rates are this test's report: pytest -s)
    record_property(f"false_alarm_{traffic}", rates["fail"])
    assert rates["fail"] <= 0.05
    if traffic != "slow":  # slow traffic never reaches 1000 canary messages within max_bake_s
        assert rates["pass"] >= 0.9


@pytest.mark.parametrize("traffic", list(TRAFFIC_PER_MINUTE))
def test_power_3pct_vs_1pct(traffic: str, record_property: Callable[[str, object], None]) -> None:
    rates = measure(0.03, 0.01, TRAFFIC_PER_MINUTE[traffic])
    print(f"canary 3% vs primary 1%, {traffic} ({TRAFFIC_PER_MINUTE[traffic]}/min): {rates}")  # noqa: T201 (the measured rates are this test's report: pytest -s)
    record_property(f"power_{traffic}", rates["fail_within_1000"])
    assert rates["fail_within_1000"] >= 0.8


# --- reader: pagination, missing data, the window ------------------------------------------------


class PagedCloudWatch:
    """A CloudWatch stand-in that answers GetMetricData in pages, to check NextToken handling."""

    def __init__(self, pages: list[dict[str, object]]) -> None:
        self.pages = pages
        self.calls: list[dict[str, object]] = []

    def get_metric_data(self, **kwargs: object) -> Mapping[str, object]:
        self.calls.append(kwargs)
        return self.pages[len(self.calls) - 1]


def _result(query_id: str, *values: float) -> dict[str, object]:
    return {"Id": query_id, "Values": list(values)}


def test_reader_sums_every_page_and_reads_missing_data_as_zero() -> None:
    pages: list[dict[str, object]] = [
        {
            "MetricDataResults": [
                _result("canary_firstattemptprocessed_sum", 40.0, 60.0),
                _result("canary_firstattemptfailed_sum", 1.0),
                _result("canary_processingtime_sum", 1000.0),
                _result("canary_processingtime_samplecount", 100.0),
                _result("primary_firstattemptprocessed_sum"),
            ],
            "NextToken": "page-2",
        },
        {
            "MetricDataResults": [
                _result("canary_firstattemptprocessed_sum", 5.0),
                _result("primary_firstattemptprocessed_sum", 900.0),
                _result("primary_firstattemptfailed_sum", 950.0),  # split across the window edge
            ]
        },
    ]
    client = PagedCloudWatch(pages)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    canary, primary = read_role_counts(client, MetricsQuery("orders"), start, start + timedelta(1))
    assert canary == RoleCounts(105, 1, 0, 10.0)
    assert primary == RoleCounts(900, 900, 0, None)
    assert "NextToken" not in client.calls[0]
    assert client.calls[1]["NextToken"] == "page-2"


def test_queries_name_the_schema() -> None:
    queries = metric_data_queries(MetricsQuery("orders", queue="orders-q", namespace="Custom"))
    assert len(queries) == 10
    metric = queries[0]["MetricStat"]["Metric"]  # type: ignore[index]
    assert metric["Namespace"] == "Custom"
    assert metric["MetricName"] == MetricName.FIRST_ATTEMPT_PROCESSED
    assert [d["Name"] for d in metric["Dimensions"]] == [
        Dimension.SERVICE,
        Dimension.DEPLOYMENT_ROLE,
        Dimension.QUEUE,
    ]
    no_queue = metric_data_queries(MetricsQuery("orders"))[0]["MetricStat"]["Metric"]  # type: ignore[index]
    assert len(no_queue["Dimensions"]) == 2
    assert MetricsQuery("orders").namespace == DEFAULT_NAMESPACE


def test_source_starts_at_the_next_minute_and_skips_an_empty_window() -> None:
    client = PagedCloudWatch([{"MetricDataResults": []}])
    start = datetime(2024, 1, 1, 12, 0, 30, tzinfo=UTC)
    now = [start + timedelta(seconds=20)]
    source = CloudWatchSource(client, MetricsQuery("orders"), start, now=lambda: now[0])
    assert source() == Reading(RoleCounts(), RoleCounts(), None)
    assert client.calls == []
    now[0] = start + timedelta(minutes=5)
    source()
    assert client.calls[0]["StartTime"] == datetime(2024, 1, 1, 12, 1, tzinfo=UTC)
    assert client.calls[0]["EndTime"] == now[0]


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


GOOD = Reading(counts(1000, 10, 1010, 12.0), counts(9000, 90, 9100, 11.0), backlog=3)
BAD = Reading(counts(1000, 30), counts(9000, 90))
THIN = Reading(counts(400, 4), counts(3600, 36))


def test_cli_pass_prints_the_evidence_table() -> None:
    code, out, _ = run_cli(["--since-minutes", "30"], GOOD)
    assert code == 0
    assert out.startswith("canary judgement: PASS\n")
    assert re.search(r"first-attempt failure rate +1\.00% +1\.00%\n", out)
    assert re.search(r"backlog +3\n", out)
    assert "mean processing time (ms)" in out
    assert "latency ratio" in out
    assert "z / critical z" in out


def test_cli_fail_exits_1_and_json_has_the_numbers() -> None:
    code, out, _ = run_cli(["--since-minutes", "30", "--json"], BAD)
    assert code == 1
    document = json.loads(out)
    assert document["decision"] == "fail"
    assert document["exit_code"] == 1
    assert document["evidence"]["canary"]["first_attempt_failed"] == 30
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
    assert run_cli(flags, THIN)[0] == 0


def test_cli_wait_bakes_until_a_decision() -> None:
    clock = FakeClock(datetime(2024, 6, 1, 12, tzinfo=UTC).timestamp())
    start = clock()

    def read() -> Reading:
        minutes = int((clock() - start) // 60)
        return Reading(counts(100 * minutes, minutes), counts(900 * minutes, 9 * minutes), 0)

    code, out, err = run_cli(["--wait", "--interval-s", "120", "--max-bake-s", "1800"], read, clock)
    assert code == 0
    assert "PASS" in out
    assert clock.sleeps == [120.0] * 5
    assert err.count("continue: canary") == 5


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
    def broken() -> Reading:
        raise botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:9")

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


def put_role_metrics(
    cloudwatch: Any, service: str, role: str, *, n: int, failed: int, ms: float
) -> None:
    """Put one role's metrics the way the worker emits them: under both dimension sets."""
    when = datetime.now(UTC) - timedelta(minutes=5)
    base = [{"Name": "Service", "Value": service}, {"Name": "DeploymentRole", "Value": role}]
    for dims in (base, [*base, {"Name": "Queue", "Value": service}]):
        values = {
            MetricName.FIRST_ATTEMPT_PROCESSED: n,
            MetricName.FIRST_ATTEMPT_FAILED: failed,
            MetricName.PROCESSED: n + failed,
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
@pytest.mark.parametrize(("canary_failed", "code"), [(10, 0), (30, 1)])
def test_cli_end_to_end_on_a_server(
    metrics_endpoint: str,
    canary_failed: int,
    code: int,
    capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    service = f"orders-{canary_failed}-{uuid.uuid4().hex[:6]}"
    cloudwatch, sqs = make_clients("us-east-1", metrics_endpoint)
    put_role_metrics(cloudwatch, service, "canary", n=1000, failed=canary_failed, ms=12.0)
    put_role_metrics(cloudwatch, service, "primary", n=9000, failed=90, ms=10.0)
    url = sqs.create_queue(QueueName=service)["QueueUrl"]  # type: ignore[attr-defined]
    sqs.send_message(QueueUrl=url, MessageBody="{}")  # type: ignore[attr-defined]
    argv = ["canary", "judge", "--service", service, "--queue", service]
    argv += ["--endpoint-url", metrics_endpoint, "--since-minutes", "30", "--json"]
    assert cli.main(argv) == code
    evidence = json.loads(capsys.readouterr().out)["evidence"]
    assert evidence["canary"] == {
        "first_attempt_processed": 1000,
        "first_attempt_failed": canary_failed,
        "processed": 1000 + canary_failed,
        "processing_time_avg_ms": 12.0,
    }
    assert evidence["primary"]["first_attempt_processed"] == 9000
    assert evidence["backlog"] == 1
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
