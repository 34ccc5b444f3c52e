"""bench/judge_sim.py in quick mode, and its parts: the fake CloudWatch, the baseline judges.

The simulation is seeded, so one run's outcome is exact; these tests check the machinery (the real
read path and judge, the fake CloudWatch's statistics, the Kayenta- and Flagger-like judges), not
error rates: those are bench/JUDGE.md's, measured over hundreds of runs.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest

from qworker.canary.judge import DEFAULT_POLICY
from qworker.canary.reader import MetricsQuery, read_minutes, read_threshold
from qworker.exceptions import ServerError


def _load() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "judge_sim.py"
    spec = importlib.util.spec_from_file_location("judge_sim", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["judge_sim"] = module
    spec.loader.exec_module(module)
    return module


sim = _load()


def cell(name: str) -> object:
    return next(c for c in sim._cells() if c.name.startswith(name))


def test_quick_mode_runs_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "JUDGE.md"
    assert sim.main(["--quick", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert not out.exists()
    assert table.startswith("| cell | right answer | PASS | FAIL |")
    assert table.count("\n| ") == 4  # four cells (the separator row starts "|---")


def test_a_seeded_run_is_exact_and_repeatable() -> None:
    bad = cell("1% -> 3%")
    first = sim.run_one((bad, 7, DEFAULT_POLICY))
    assert first == sim.run_one((bad, 7, DEFAULT_POLICY))
    assert set(first) == {"ours", "kayenta", "flagger"}
    assert first["ours"].decision in {"pass", "fail", "inconclusive"}


def test_dead_canary_run_fails_on_the_share_guard() -> None:
    outcome = sim.run_one((cell("dead canary"), 3, DEFAULT_POLICY))["ours"]
    assert outcome.decision == "fail"
    assert outcome.reason == "dead or starved canary"
    assert outcome.minutes <= 15


def test_fake_cloudwatch_answers_like_cloudwatch() -> None:
    world_cell = sim.Cell("t", "t", latency=1.0)
    start = sim.EPOCH + 30.0
    world = sim.World(world_cell, random.Random(1), start)  # noqa: S311 (a seeded simulation)
    now = [start + 300.0]
    client = sim.FakeCloudWatch(world, lambda: now[0], percentiles=True)
    begin = datetime.fromtimestamp(sim.EPOCH + 60.0, UTC)
    end = datetime.fromtimestamp(now[0], UTC)
    minutes = read_minutes(client, MetricsQuery("sim", queue="sim"), begin, end)
    assert [m.at for m in minutes] == [begin + timedelta(minutes=i) for i in range(5)]
    assert all(m.canary_time is not None for m in minutes)
    total = sum(
        m.canary.first_attempt_processed + m.primary.first_attempt_processed for m in minutes
    )
    assert 4 * 800 < total < 5 * 1200  # about 1000 a minute; the last minute is partial
    threshold = read_threshold(client, MetricsQuery("sim"), begin, end, 90.0)
    assert threshold is not None
    assert 20.0 < threshold < 60.0  # the log-normal's p90: 20 ms x e^(1.28 x 0.5) = 38 ms
    refusing = sim.FakeCloudWatch(world, lambda: now[0], percentiles=False)
    with pytest.raises(ServerError, match="InternalError"):
        read_threshold(refusing, MetricsQuery("sim"), begin, end, 90.0)


def test_mann_whitney_by_hand() -> None:
    # x entirely above y (3 vs 3): U = 9, z = (9 - 4.5 - 0.5) / sqrt(9 * 7 / 12) = 1.746.
    p = sim.mann_whitney_greater([4.0, 5.0, 6.0], [1.0, 2.0, 3.0])
    assert p == pytest.approx(0.0404, abs=1e-3)
    assert sim.mann_whitney_greater([1.0, 1.0], [1.0, 1.0]) == 1.0  # all tied: no evidence


def test_binomial_and_poisson_draws_are_plausible() -> None:
    rng = random.Random(5)  # noqa: S311 (a seeded simulation)
    draws = [sim.binomial(rng, 1000, 0.01) for _ in range(400)]
    assert 8.5 < sum(draws) / len(draws) < 11.5
    assert sim.binomial(rng, 10, 1.0) == 10
    assert sim.binomial(rng, 10, 0.0) == 0
    assert all(0 <= sim.binomial(rng, 10, 0.9) <= 10 for _ in range(50))
    means = [sim.poisson(rng, 5.0) for _ in range(400)] + [sim.poisson(rng, 200.0)]
    assert 4.5 < sum(means[:400]) / 400 < 5.5


def test_target_cells_get_the_critical_run_count() -> None:
    quick = [cell("10% rejects"), sim.dataclasses.replace(cell("10% retries"), critical=True)]
    rows = sim.simulate(2, quick, 1, DEFAULT_POLICY, critical_runs=3)
    assert [row[-1] for row in rows] == ["2", "3"]  # the last column: runs in the cell
    assert all(row[3].startswith("100.0% ± 0.0%") for row in rows)  # FAIL, every run
    assert [c.name for c in sim._cells() if c.critical] == [
        "A/A 0.1% 1000/min 10%",
        "A/A 1.0% 1000/min 10%",
        "A/A 5.0% 1000/min 10%",
        "1% -> 3%",
        "shared outage: both 30% for 10 min",
        "clustered failures (A/A, 1%)",
        "A/A, 0.1% timeout tail (30 s)",
    ]


def _load_obf() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "obf_boundary.py"
    spec = importlib.util.spec_from_file_location("obf_boundary", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_obf_recursion_one_look_is_the_fixed_sample_test() -> None:
    obf = _load_obf()
    assert obf.spending_bounds([1.0], 0.025)[0] == pytest.approx(1.95996, abs=1e-4)
    assert obf.constant([1.0], 0.025) == pytest.approx(1.95996, abs=1e-4)


def test_obf_recursion_reproduces_the_published_five_look_boundary() -> None:
    # Lan-DeMets O'Brien-Fleming spending, one-sided 2.5%, five equal looks: the standard table
    # (for example gsDesign's sfLDOF) gives z = 4.877, 3.357, 2.680, 2.290, 2.031.
    obf = _load_obf()
    times = [k / 5 for k in range(1, 6)]
    z = [b / t**0.5 for t, b in zip(times, obf.spending_bounds(times, 0.025), strict=True)]
    assert z == pytest.approx([4.877, 3.357, 2.680, 2.290, 2.031], abs=0.002)
    # the spent total is alpha, whatever the split
    assert sum(obf.crossing(times, obf.spending_bounds(times, 0.025))) == pytest.approx(0.025)
