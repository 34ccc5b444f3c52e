"""The throughput benchmarks' own logic: ratios and summary rows, and the capacity simulation.

No timing is asserted: the summaries are fed made-up runs, and the simulation's contenders are
checked for what they handle (every message once, never more handlers than allowed).
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is not a package; its scripts import each other

bench_capacity = importlib.import_module("bench_capacity")
bench_throughput = importlib.import_module("bench_throughput")
run_all = importlib.import_module("run_all")
Section = importlib.import_module("benchlib").Section

RATES = {
    "qworker": (900.0, 1100.0),
    "bare aiobotocore": (1000.0, 1000.0),
    "qworker defaults": (500.0, 700.0),
    "qworker + tracing 1.0": (810.0, 880.0),
    "qworker I/O-bound": (1500.0, 1600.0),
    "bare I/O-bound": (1800.0, 2400.0),
    "naive boto3 (1 msg)": (50.0, 50.0),
}
CLIENT_US = {"qworker": 250.0, "bare aiobotocore": 200.0, "qworker + tracing 1.0": 300.0}


def made_up_runs() -> list[Any]:
    runs = []
    for name, rates in RATES.items():
        for index, rate in enumerate(rates):
            messages = 3000
            seconds = messages / rate
            client = CLIENT_US.get(name, 220.0) * messages / 1e6
            run = bench_throughput.Run(
                name, index, messages, seconds, client, 300.0 * messages / 1e6, 1.0, 2.5
            )
            run.receives = 330 if "qworker" in name else 300
            runs.append(run)
    return runs


def test_summary_ratios() -> None:
    section = bench_throughput._summarise(made_up_runs(), "1 2 3", "4 5 6", {"concurrency": 16})
    data = section.data
    assert data["qworker"]["ratio_to_bare"] == pytest.approx(1.0)
    assert data["qworker"]["paired_ratios"] == pytest.approx([0.9, 1.1])
    # I/O-bound: against min(C/t = 2000, the bare loop's median 2100) = 2000.
    io = data["qworker I/O-bound"]
    assert io["ideal_msg_per_s"] == pytest.approx(2000.0)
    assert io["ratio_to_ideal"] == pytest.approx(1550.0 / 2000.0)
    assert io["paired_ratios_to_ideal"] == pytest.approx([1500 / 1800, 1600 / 2000])
    assert io["median_paired_ratio_to_ideal"] == pytest.approx((1500 / 1800 + 1600 / 2000) / 2)
    assert io["receives_per_msg"] == pytest.approx(0.11)
    assert data["bare I/O-bound"]["receives_per_msg"] == pytest.approx(0.1)
    tracing = data["qworker + tracing 1.0"]
    assert tracing["cost"] == pytest.approx(1 - (0.9 + 0.8) / 2)
    # CPU-bound: (250 + 300) / (300 + 300) of the untraced qworker's CPU.
    assert tracing["cpu_bound_cost"] == pytest.approx(1 - 550 / 600)
    assert data["client_cpu_ratio"] == pytest.approx(250 / 200)
    assert data["qworker"]["cpu_bound_ratio"] == pytest.approx(500 / 550)
    assert data["loadavg_before"] == "1 2 3"
    assert "| qworker I/O-bound | 1,550 |" in section.markdown


def test_client_cpu_ratio_pairs_each_round_with_the_bare_loop_of_that_round() -> None:
    runs = made_up_runs()
    per_round = {("qworker", 0): 250.0, ("qworker", 1): 300.0}
    per_round |= {("bare aiobotocore", 0): 200.0, ("bare aiobotocore", 1): 300.0}
    for run in runs:
        us = per_round.get((run.contender, run.round))
        if us is not None:
            run.client_cpu_s = us * run.messages / 1e6
    data = bench_throughput._summarise(runs, "1 2 3", "4 5 6", {"concurrency": 16}).data
    assert data["client_cpu_paired_ratios"] == pytest.approx([1.25, 1.0])
    assert data["client_cpu_ratio"] == pytest.approx(1.125)
    assert data["client_cpu_ratio_of_medians"] == pytest.approx(275 / 250)


def test_each_round_runs_every_contender_once_and_each_pair_back_to_back_alternating() -> None:
    blocks = bench_throughput.BLOCKS
    assert sorted(name for block in blocks for name in block) == sorted(bench_throughput.CONTENDERS)
    pairs = [block for block in blocks if len(block) == 2]
    assert ("qworker", "bare aiobotocore") in pairs
    assert ("qworker I/O-bound", "bare I/O-bound") in pairs
    firsts: dict[str, int] = {}
    for index in range(8):
        order = bench_throughput.round_order(index)
        assert sorted(order) == sorted([*bench_throughput.CONTENDERS, bench_throughput.NAIVE])
        assert order[-1] == bench_throughput.NAIVE
        for one, other in pairs:
            at = order.index(one)
            assert abs(order.index(other) - at) == 1  # back to back
            first = one if order.index(other) > at else other
            firsts[first] = firsts.get(first, 0) + 1
    # Over the rounds, each side of a pair goes first equally often.
    assert firsts == {name: 4 for pair in pairs for name in pair}


def test_results_summary_keeps_one_row_per_workload() -> None:
    section = bench_throughput._summarise(made_up_runs(), "1 2 3", "4 5 6", {"concurrency": 16})
    text = run_all.summary({"bench_throughput": Section("t", "", section.data)})
    labels = [line.split("|")[1].strip() for line in text.splitlines()[2:]]
    assert labels.count("I/O-bound") == 1
    assert len(labels) == len(set(labels))
    io_row = next(line for line in text.splitlines() if line.startswith("| I/O-bound |"))
    # The median of the per-round ratios (1500/1800 and 1600/2000), and min(C/t, bare's median).
    assert (
        "0.82x of min(C/t, bare), median per round; min(C/t, bare's median) = 2,000 msg/s" in io_row
    )
    assert "receives/msg 0.110 (bare 0.100)" in io_row


def test_steady_rate_uses_the_middle_of_the_run() -> None:
    stamps = [i / 1000 for i in range(100)] + [10.0]  # a straggler at the end does not count
    assert bench_throughput.steady_rate(stamps) == pytest.approx(1000.0, rel=0.02)
    assert bench_throughput.steady_rate([0.0, 1.0]) is None


def test_batched_capacity_hands_out_what_is_free() -> None:
    async def scenario() -> list[int]:
        capacity = bench_capacity.BatchedCapacity(20, linger_s=0.001)
        stopping = asyncio.Event()
        taken = [await capacity.take(20, stopping)]
        capacity.give(3)
        taken.append(await capacity.take(10, stopping))  # after the linger: the 3 free ones
        capacity.give(12)
        taken.append(await capacity.take(10, stopping))  # a full batch at once
        stopping.set()
        taken.append(await capacity.take(10, stopping))
        return taken

    assert asyncio.run(scenario()) == [20, 3, 10, 0]


@pytest.mark.parametrize(
    "contender",
    [
        bench_capacity.bare,
        bench_capacity.qworker(gate=False, batched=False),
        bench_capacity.qworker(gate=True, batched=False),
    ],
)
def test_capacity_contenders_handle_every_message_within_the_concurrency(contender: Any) -> None:
    async def scenario() -> tuple[int, Any, int]:
        transport = await bench_capacity.filled(60, receive_s=0, delete_s=0)
        handlers = bench_capacity.Handlers(delay_s=0.001)
        handled = await contender(transport, handlers, 60, 2, 7)
        return handled, handlers, len(transport.inner.messages)

    handled, handlers, left = asyncio.run(scenario())
    assert handled == 60
    assert handlers.done == 60
    assert left == 0
    assert 1 <= handlers.most <= 7
