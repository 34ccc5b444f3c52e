"""Seeded Monte-Carlo of the canary judge against Kayenta-like and Flagger-like judges.

One command: `.venv/bin/python bench/judge_sim.py` (a few minutes on 2 cores; `--quick` for a
smoke test) writes `bench/JUDGE.md`.

Every run simulates one bake, in 10 s EMF intervals, of a queue whose first attempts split between
a canary and a primary, each with its own first-attempt non-success rate and handler times. The
judge under test is the REAL code path of `qworker canary judge --wait`: `run_bake` on a fake clock,
looking every 60 s from a bake start at a random second of a minute, reading through the real
`CloudWatchSource` from a fake CloudWatch client that answers `GetMetricData` as CloudWatch does
(per 60 s period, partial last minute, no datapoint for a minute without data, `Sum`, `SampleCount`,
`Maximum`, `pNN` and `PR(:x)` computed exactly on the samples). "LocalStack" rows use the same fake
refusing percentile statistics with InternalError, as LocalStack 4 and moto do, so the reader falls
back. The same simulated data also feed, in the same run:

- a Kayenta-like judge: at the end of the bake (60 one-minute points; fewer than 50 is NODATA, i.e.
  inconclusive), a one-sided Mann-Whitney U test of the canary's per-minute non-success rates (and,
  in the latency cells, per-minute mean handler times) against the primary's, failing at 0.98
  confidence;
- a Flagger-like judge: every minute a check of the canary's last-minute non-success rate against a
  fixed threshold (twice the cell's base rate, at least 1 point; latency: the last-minute p99
  against twice the healthy p99), a minute without canary data failing the check; 5 failed checks
  roll back, 10 checks with fewer promote.

Every figure is a proportion of runs with its Monte-Carlo standard error sqrt(p (1 - p) / runs).
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import logging
import math
import multiprocessing
import random
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import botocore.exceptions

from qworker.canary.judge import DEFAULT_POLICY, Decision, JudgePolicy, Verdict, run_bake
from qworker.canary.reader import CloudWatchSource, LatencyStats, MetricsQuery

INTERVAL_S: Final = 10  # the worker's EMF interval
BAKE_S: Final = DEFAULT_POLICY.max_bake_s
EPOCH: Final = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
OUT: Final = Path(__file__).with_name("JUDGE.md")
MEDIAN_MS: Final = 20.0
SIGMA: Final = 0.5  # log-normal handler times
TIMEOUT_MS: Final = 30_000.0
LOOK_INTERVAL_S = 60.0  # between looks: `run_bake`'s interval_s, the CLI's --interval-s


@dataclasses.dataclass(frozen=True)
class Cell:
    """One scenario."""

    name: str
    group: str
    base: float = 0.01  # both roles' first-attempt non-success rate
    canary: float | None = None  # the canary's, when it differs
    per_min: int = 1000
    share: float = 0.10
    outage: tuple[float, float, float] | None = None  # (from s, to s, rate) on both roles
    clustered: bool = False  # per-task, per-minute rate shocks (overdispersion)
    dies_at_s: float | None = None
    latency: float | None = None  # canary handler-time factor; None: no latency data
    tail: float = 0.0  # share of messages that hit the timeout, both roles
    type_share: float = 0.0  # a message type only the canary fails ...
    type_fail: float = 0.0  # ... at this rate
    percentiles: bool = True  # False: the server refuses percentile statistics (LocalStack)
    expect: str = "pass"  # what a right judge does
    critical: bool = False  # a target is read from this cell: it gets `--critical-runs` runs


def _cells() -> list[Cell]:
    cells = [
        Cell(
            f"A/A {base:.1%} {per_min}/min {share:.0%}",
            "A/A",
            base,
            None,
            per_min,
            share,
            critical=per_min == 1000 and share == 0.10,
        )
        for base in (0.001, 0.01, 0.05)
        for per_min in (100, 1000)
        for share in (0.05, 0.10, 0.25)
    ]
    cells += [
        Cell("1% -> 1.5%", "regression", 0.01, 0.015, expect="either"),
        Cell("1% -> 2%", "regression", 0.01, 0.02, expect="fail"),
        Cell("1% -> 3%", "regression", 0.01, 0.03, expect="fail", critical=True),
        Cell("0.1% -> 0.5%", "regression", 0.001, 0.005, expect="fail"),
        Cell("5% -> 7%", "regression", 0.05, 0.07, expect="either"),
        Cell("10% rejects (1% base)", "regression", 0.01, 0.01 + 0.99 * 0.10, expect="fail"),
        Cell("10% retries (1% base)", "regression", 0.01, 0.01 + 0.99 * 0.10, expect="fail"),
        Cell(
            "defect in one message type (5% of traffic, 40% failing)",
            "regression",
            0.01,
            None,
            type_share=0.05,
            type_fail=0.4,
            expect="fail",
        ),
        Cell(
            "shared outage: both 30% for 10 min",
            "robustness",
            outage=(900.0, 1500.0, 0.30),
            critical=True,
        ),
        Cell("clustered failures (A/A, 1%)", "robustness", clustered=True, critical=True),
        Cell("dead canary at 3 min", "robustness", dies_at_s=180.0, expect="fail"),
        Cell("latency A/A", "latency", latency=1.0),
        Cell("latency x1.3", "latency", latency=1.3, expect="fail"),
        Cell("latency x2", "latency", latency=2.0, expect="fail"),
        Cell("A/A, 0.1% timeout tail (30 s)", "latency", latency=1.0, tail=0.001, critical=True),
        Cell(
            "LocalStack: latency x1.3", "latency", latency=1.3, percentiles=False, expect="either"
        ),
        Cell("LocalStack: latency x3", "latency", latency=3.0, percentiles=False, expect="fail"),
        Cell(
            "LocalStack: 0.1% timeout tail", "latency", latency=1.0, tail=0.001, percentiles=False
        ),
    ]
    return cells


# --- random draws (standard library only) ---


def binomial(rng: random.Random, n: int, p: float) -> int:
    """An exact Binomial(n, p) draw (geometric gaps; the complement above one half)."""
    if n <= 0 or p <= 0.0:
        return 0
    if p >= 1.0:
        return n
    if p > 0.5:
        return n - binomial(rng, n, 1.0 - p)
    log_q, successes, position = math.log1p(-p), 0, 0
    while True:
        position += int(math.log(1.0 - rng.random()) / log_q) + 1
        if position > n:
            return successes
        successes += 1


def poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw: exact (Knuth) below 30, normal with continuity above."""
    if mean < 30.0:
        limit, k, product = math.exp(-mean), 0, rng.random()
        while product > limit:
            k += 1
            product *= rng.random()
        return k
    return max(0, round(rng.gauss(mean, math.sqrt(mean))))


# --- the simulated world and its CloudWatch ---


@dataclasses.dataclass
class Bucket:
    """One role's data in one minute."""

    first: int = 0
    unsucceeded: int = 0
    times: list[float] = dataclasses.field(default_factory=list)
    sorted_times: list[float] | None = None

    def ordered(self) -> list[float]:
        if self.sorted_times is None or len(self.sorted_times) != len(self.times):
            self.sorted_times = sorted(self.times)
        return self.sorted_times


class World:
    """The queue's traffic, generated 10 s at a time as the fake clock advances."""

    def __init__(self, cell: Cell, rng: random.Random, start: float) -> None:
        self.cell, self.rng, self.start = cell, rng, start
        self.generated_to = start - 120.0  # both roles ran before the bake started
        self.buckets: dict[tuple[str, int], Bucket] = {}
        self.canary_tasks = max(1, round(10 * cell.share))
        self.primary_tasks = max(1, round(10 * (1 - cell.share)))
        self.shocks: dict[tuple[str, int, int], float] = {}

    def _rate(self, role: str, t: float, task: int) -> float:
        cell = self.cell
        rate = cell.base
        if role == "canary" and cell.canary is not None:
            rate = cell.canary
        if cell.outage and cell.outage[0] <= t - self.start < cell.outage[1]:
            rate = cell.outage[2]
        if cell.clustered:
            key = (role, task, int(t // 60))
            if key not in self.shocks:  # a task's minute: exponential shocks, mean 1
                self.shocks[key] = self.rng.expovariate(1.0)
            rate = min(1.0, rate * self.shocks[key])
        return rate

    def advance(self, now: float) -> None:
        while self.generated_to + INTERVAL_S <= now:
            t = self.generated_to
            self.generated_to += INTERVAL_S
            self._interval(t)

    def _interval(self, t: float) -> None:
        cell, rng = self.cell, self.rng
        arrivals = poisson(rng, cell.per_min * INTERVAL_S / 60.0)
        alive = cell.dies_at_s is None or t - self.start < cell.dies_at_s
        to_canary = binomial(rng, arrivals, cell.share) if alive else 0
        minute = int((t + INTERVAL_S) // 60)  # the EMF document's timestamp: its flush
        for role, n, tasks in (
            ("canary", to_canary, self.canary_tasks),
            ("primary", arrivals - to_canary, self.primary_tasks),
        ):
            if role == "canary" and not alive:
                continue
            bucket = self.buckets.setdefault((role, minute), Bucket())
            per_task = [n // tasks + (1 if i < n % tasks else 0) for i in range(tasks)]
            for task, k in enumerate(per_task):
                failed = binomial(rng, k, self._rate(role, t, task))
                if role == "canary" and cell.type_share:
                    typed = binomial(rng, k - failed, cell.type_share)
                    failed += binomial(rng, typed, cell.type_fail)
                bucket.first += k
                bucket.unsucceeded += failed
            if cell.latency is not None:
                factor = cell.latency if role == "canary" else 1.0
                for _ in range(n):
                    if cell.tail and rng.random() < cell.tail:
                        bucket.times.append(TIMEOUT_MS)
                    else:
                        bucket.times.append(factor * rng.lognormvariate(math.log(MEDIAN_MS), SIGMA))

    def minutes(self, role: str, first: int, last: int) -> list[tuple[int, Bucket]]:
        return [
            (m, b) for m in range(first, last + 1) if (b := self.buckets.get((role, m))) is not None
        ]


def _percentile(values: Sequence[float], pct: float) -> float:
    index = max(0, min(len(values) - 1, math.ceil(pct / 100.0 * len(values)) - 1))
    return values[index]


class FakeCloudWatch:
    """GetMetricData over the world, as CloudWatch answers it (one page)."""

    def __init__(self, world: World, now: Callable[[], float], *, percentiles: bool) -> None:
        self.world, self.now, self.percentiles = world, now, percentiles

    def get_metric_data(self, **kwargs: object) -> Mapping[str, object]:
        start = _seconds(kwargs["StartTime"])
        end = min(_seconds(kwargs["EndTime"]), self.now())
        self.world.advance(self.now())
        queries = kwargs["MetricDataQueries"]
        assert isinstance(queries, list)
        results = []
        for query in queries:
            stat_spec = query["MetricStat"]
            stat, period = stat_spec["Stat"], stat_spec["Period"]
            role = next(
                d["Value"]
                for d in stat_spec["Metric"]["Dimensions"]
                if d["Name"] == "DeploymentRole"
            )
            if stat.startswith(("p", "PR", "TC", "TM")) and not self.percentiles:
                raise botocore.exceptions.ClientError(
                    {"Error": {"Code": "InternalError", "Message": "exception while aggregating"}},
                    "GetMetricData",
                )
            metric = stat_spec["Metric"]["MetricName"]
            stamps, values = self._series(role, metric, stat, period, start, end)
            results.append({"Id": query["Id"], "Timestamps": stamps, "Values": values})
        return {"MetricDataResults": results}

    def _series(  # noqa: PLR0917 (one GetMetricData query's parts)
        self, role: str, metric: str, stat: str, period: int, start: float, end: float
    ) -> tuple[list[datetime], list[float]]:
        first, last = int(start // 60), math.ceil(end / 60) - 1
        buckets = self.world.minutes(role, first, last)
        step = period // 60
        groups: dict[int, list[Bucket]] = {}
        for minute, bucket in buckets:
            groups.setdefault(first + (minute - first) // step * step, []).append(bucket)
        stamps, values = [], []
        for minute, group in sorted(groups.items()):
            value = _statistic(metric, stat, group)
            if value is not None:
                stamps.append(datetime.fromtimestamp(minute * 60, UTC))
                values.append(value)
        return stamps, values


def _statistic(metric: str, stat: str, group: list[Bucket]) -> float | None:  # noqa: PLR0911
    if metric == "FirstAttemptProcessed":
        return float(sum(b.first for b in group))
    if metric == "FirstAttemptUnsucceeded":
        return float(sum(b.unsucceeded for b in group))
    if metric == "Processed":
        return float(sum(b.first for b in group))
    times = [t for b in group for t in b.ordered()] if len(group) > 1 else group[0].ordered()
    if not times:
        return None
    if stat == "Sum":
        return math.fsum(times)
    if stat == "SampleCount":
        return float(len(times))
    if stat == "Maximum":
        return max(times)
    if stat.startswith("PR(:"):
        threshold = float(stat[4:-1])
        return 100.0 * bisect.bisect_right(times, threshold) / len(times)
    if stat.startswith("p"):
        return _percentile(sorted(times) if len(group) > 1 else times, float(stat[1:]))
    raise ValueError(stat)


def _seconds(value: object) -> float:
    assert isinstance(value, datetime)
    return value.timestamp()


# --- the judges ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One judge's decision in one run."""

    decision: str  # pass, fail, inconclusive
    minutes: float
    canary_n: int = 0
    reason: str = ""
    by_1000: bool = False  # failed at or before the first look with >= 1000 canary first attempts


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def _ours(world: World, cell: Cell, policy: JudgePolicy, start: float) -> Outcome:
    clock = Clock(start)
    cloudwatch = FakeCloudWatch(world, clock, percentiles=cell.percentiles)
    source = CloudWatchSource(
        cloudwatch,
        MetricsQuery("sim", queue="sim"),
        datetime.fromtimestamp(start, UTC),
        now=lambda: datetime.fromtimestamp(clock(), UTC),
        latency=LatencyStats.AUTO,
    )
    looks: list[Verdict] = []
    verdict: Verdict = run_bake(
        source,
        clock,
        clock.sleep,
        policy,
        interval_s=LOOK_INTERVAL_S,
        started_s=start,
        on_look=looks.append,
    )
    decision = verdict.decision
    reach = next(
        (i for i, v in enumerate(looks) if v.evidence.canary.first_attempt_processed >= 1000),
        len(looks),
    )
    return Outcome(
        decision.value,
        verdict.evidence.elapsed_s / 60.0,
        verdict.evidence.canary.first_attempt_processed,
        _reason(verdict.reasons[0]) if decision is not Decision.PASS else "",
        decision is Decision.FAIL and len(looks) - 1 <= reach,
    )


_REASONS: Final = (
    ("slower", "latency"),
    ("worse by", "regression"),
    ("dead or starved", "dead or starved canary"),
    ("silent canary", "silent canary"),
    ("above the ceiling", "ceiling"),
    ("cannot reach", "cannot reach N"),
    ("no decision after", "max bake"),
)


def _reason(text: str) -> str:
    return next((label for key, label in _REASONS if key in text), text[:40])


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value that x tends to be larger than y (normal approximation, tie-corrected)."""
    n1, n2 = len(x), len(y)
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[k] = (i + j) / 2.0 + 1.0
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    r1 = sum(r for r, (_, g) in zip(ranks, pooled, strict=True) if g == 0)
    u = r1 - n1 * (n1 + 1) / 2.0
    n = n1 + n2
    variance = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    if variance <= 0.0:
        return 1.0
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(variance)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _per_minute(world: World, role: str, first: int, last: int) -> dict[int, Bucket]:
    return dict(world.minutes(role, first, last))


def _kayenta(world: World, cell: Cell, start: float) -> Outcome:
    end = start + BAKE_S
    world.advance(end)
    first, last = math.ceil(start / 60), int(end // 60) - 1
    canary = _per_minute(world, "canary", first, last)
    primary = _per_minute(world, "primary", first, last)
    shared = [m for m in canary if m in primary and canary[m].first and primary[m].first]
    if len(shared) < 50:
        return Outcome("inconclusive", BAKE_S / 60.0, reason="NODATA: fewer than 50 points")
    rate_c = [canary[m].unsucceeded / canary[m].first for m in shared]
    rate_p = [primary[m].unsucceeded / primary[m].first for m in shared]
    failed = mann_whitney_greater(rate_c, rate_p) < 0.02
    if cell.latency is not None:
        mean_c = [statistics.fmean(canary[m].times) for m in shared if canary[m].times]
        mean_p = [statistics.fmean(primary[m].times) for m in shared if primary[m].times]
        failed = failed or mann_whitney_greater(mean_c, mean_p) < 0.02
    return Outcome(
        "fail" if failed else "pass", BAKE_S / 60.0, sum(b.first for b in canary.values())
    )


def _flagger(world: World, cell: Cell, start: float) -> Outcome:
    threshold = max(0.01, 2 * cell.base)
    healthy_p99 = MEDIAN_MS * math.exp(2.326 * SIGMA)
    failed_checks = 0
    first = math.ceil(start / 60)
    for check in range(1, 11):
        world.advance(start + 60 * check)
        minute = first + check - 1
        canary = world.buckets.get(("canary", minute))
        ok = canary is not None and canary.first > 0
        if ok and canary is not None:
            ok = canary.unsucceeded / canary.first <= threshold
            if cell.latency is not None and canary.times:
                ok = ok and _percentile(canary.ordered(), 99.0) <= 2 * healthy_p99
        failed_checks += not ok
        if failed_checks >= 5:
            return Outcome("fail", float(check))
    return Outcome("pass", 10.0)


# --- running the cells ---


def run_one(args: tuple[Cell, int, JudgePolicy]) -> dict[str, Outcome]:
    cell, seed, policy = args
    rng = random.Random(seed)  # noqa: S311 (a seeded simulation)
    start = EPOCH + 3600.0 * (seed % 1000) + rng.uniform(0.0, 60.0)
    world = World(cell, rng, start)
    share_policy = dataclasses.replace(policy, expected_canary_share=cell.share)
    ours = _ours(world, cell, share_policy, start)
    return {
        "ours": ours,
        "kayenta": _kayenta(world, cell, start),
        "flagger": _flagger(world, cell, start),
    }


@dataclasses.dataclass
class Tally:
    """One judge's results in one cell."""

    outcomes: list[Outcome]

    def share(self, test: Callable[[Outcome], bool]) -> tuple[float, float]:
        n = len(self.outcomes)
        p = sum(test(o) for o in self.outcomes) / n
        return p, math.sqrt(p * (1 - p) / n)


def _fmt(value: tuple[float, float]) -> str:
    p, se = value
    return f"{p:.1%} ± {se:.1%}"


def _row(cell: Cell, tallies: Mapping[str, Tally]) -> list[str]:
    ours = tallies["ours"]
    fails = [o for o in ours.outcomes if o.decision == "fail"]
    minutes = statistics.median(o.minutes for o in fails) if fails else float("nan")
    within = ours.share(lambda o: o.decision == "fail" and o.canary_n <= 1000)
    by_look = ours.share(lambda o: o.by_1000)
    latency = ours.share(lambda o: o.decision == "fail" and o.reason == "latency")
    reasons: dict[str, int] = {}
    for o in ours.outcomes:
        if o.reason:
            reasons[o.reason] = reasons.get(o.reason, 0) + 1
    top = max(reasons, key=lambda r: reasons[r]) if reasons else "-"
    return [
        cell.name,
        cell.expect,
        _fmt(ours.share(lambda o: o.decision == "pass")),
        _fmt(ours.share(lambda o: o.decision == "fail")),
        _fmt(ours.share(lambda o: o.decision == "inconclusive")),
        f"{statistics.median(o.minutes for o in ours.outcomes):.0f}"
        + (f" / {minutes:.0f}" if fails else ""),
        f"{_fmt(within)} / {_fmt(by_look)}" if cell.expect == "fail" else "-",
        _fmt(latency) if cell.latency is not None else "-",
        top[:60],
        _fmt(tallies["kayenta"].share(lambda o: o.decision == "fail"))
        + f" ({_fmt(tallies['kayenta'].share(lambda o: o.decision == 'inconclusive'))} nodata)",
        _fmt(tallies["flagger"].share(lambda o: o.decision == "fail")),
    ]


HEADER: Final = [
    "cell",
    "right answer",
    "PASS",
    "FAIL",
    "INCONCLUSIVE",
    "median min (all / fails)",
    "FAIL with <= 1000 canary / by the look reaching 1000",
    "FAIL on latency",
    "commonest non-pass reason",
    "Kayenta-like FAIL",
    "Flagger-like FAIL",
    "runs",
]


def simulate(
    runs: int,
    cells: list[Cell],
    workers: int,
    policy: JudgePolicy,
    critical_runs: int | None = None,
) -> list[list[str]]:
    """Every cell's row: `runs` seeded runs, or `critical_runs` in a cell a target is read from.

    Seeds depend on the cell's position and the run's number only, so a cell's first runs are the
    same whatever the count.
    """
    counts = [critical_runs if c.critical and critical_runs else runs for c in cells]
    jobs = [
        (cell, 1_000_003 * index + run, policy)
        for index, (cell, count) in enumerate(zip(cells, counts, strict=True))
        for run in range(count)
    ]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(run_one, jobs, chunksize=max(1, runs // 4))
    rows, begin = [], 0
    for cell, count in zip(cells, counts, strict=True):
        chunk = results[begin : begin + count]
        begin += count
        tallies = {name: Tally([r[name] for r in chunk]) for name in ("ours", "kayenta", "flagger")}
        rows.append([*_row(cell, tallies), str(count)])
    return rows


def table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=200, help="runs per cell")
    parser.add_argument(
        "--critical-runs",
        type=int,
        default=1000,
        help="runs of each cell a target is read from (a smaller standard error)",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke test: 4 runs of a few cells")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cells", help="only cells whose name contains this")
    parser.add_argument("--out", type=Path, default=OUT, help="where the Markdown goes")
    args = parser.parse_args(argv)
    logging.getLogger("qworker.canary.reader").setLevel(logging.ERROR)  # the fallback note, per run
    cells = _cells()
    if args.cells:
        cells = [c for c in cells if args.cells in c.name]
    runs, critical = args.runs, args.critical_runs
    if args.quick:
        quick = ("A/A 1.0% 1000/min 10%", "1% -> 3%", "dead canary", "LocalStack: latency x3")
        cells, runs, critical = [c for c in cells if c.name.startswith(quick)], 4, 4
    began = time.monotonic()
    rows = simulate(runs, cells, min(2, args.workers), DEFAULT_POLICY, critical)
    took = time.monotonic() - began
    text = table(rows)
    print(text)
    print(f"\n{runs} runs per cell ({critical} critical), {took:.0f} s", file=sys.stderr)
    if not args.quick:
        write_report(args.out, text, f"{runs} runs per cell, {critical} in the target cells", took)
    return 0


def write_report(path: Path, text: str, runs: str, took: float) -> None:
    marker = "<!-- table -->"
    if path.exists() and marker in (old := path.read_text()):
        before, _, rest = old.partition(marker)
        _, _, after = rest.partition(marker)
        path.write_text(
            f"{before}{marker}\n{text}\n\n{runs}; {took:.0f} s on this machine.\n{marker}{after}"
        )
    else:
        path.write_text(f"# Canary judge simulation\n\n{marker}\n{text}\n{marker}\n")


if __name__ == "__main__":
    raise SystemExit(main())
