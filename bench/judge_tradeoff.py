"""What the "1% -> 3% caught >= 99% within 1000 canary first attempts" target would cost.

`.venv/bin/python bench/judge_tradeoff.py [VARIANT ...]` runs `bench/judge_sim.py`'s real bake
(`run_one`) with the FAIL side's sequential boundary replaced, and prints, per variant, the share of
1% -> 3% bakes failed at a look with at most 1000 canary first attempts (2000 runs) and, with
`--false-alarms`, the false FAIL rate of the cells the false-alarm targets are read from (600 runs
each; slow: about ten minutes a variant on 2 cores).

A variant is `c,k,cc,prior,both`: the boundary is z >= c / sqrt(t) up to the planned sample (t <=
1) and (c + k c (t - 1)) / sqrt(t) after it (k = 1 is the judge's boundary), with or without the
continuity correction (cc 1 or 0), the dispersion factor's prior degrees of freedom, and whether
the pass side's boundary is replaced too (both 1) or left as it is (0). The judge's own boundary is
`2.394,1,1,1,0` (alpha 2.5%); bench/JUDGE.md gives the measured figures.

A variant `obf,c,cc,prior,horizon,after` is a Lan-DeMets O'Brien-Fleming-type boundary z >= c /
sqrt(t), t = canary first attempts / horizon (c = 2.087 spends alpha 2.5% at ten equal looks:
`bench/obf_boundary.py`), and past the horizon the judge's always-valid boundary (after 1) or
c kept flat (after 0); the pass side is left as it is. `--runs N` sets the 1% -> 3% runs (0:
none); `--others` adds 1% -> 2%, 10% rejects, 10% retries and the dead canary (300 runs each).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import inspect
import logging
import math
import multiprocessing
import random
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from types import ModuleType

from qworker.canary import evidence, rules, stats, strata
from qworker.canary.judge import DEFAULT_POLICY, JudgePolicy

FALSE_ALARM_CELLS = (
    "A/A 0.1% 1000/min 10%",
    "A/A 1.0% 1000/min 5%",
    "A/A 1.0% 1000/min 10%",
    "A/A 5.0% 1000/min 10%",
    "shared",
    "clustered",
    "A/A, 0.1% timeout",
)


def _sim() -> ModuleType:
    path = Path(__file__).with_name("judge_sim.py")
    spec = importlib.util.spec_from_file_location("judge_sim", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["judge_sim"] = module
    spec.loader.exec_module(module)
    return module


def _patch(c: float, k: float, prior: float, *, both: bool) -> None:
    judge_boundary = stats.sequential_critical_z

    def boundary(information_fraction: float, alpha: float) -> float:
        if alpha != DEFAULT_POLICY.alpha and not both:  # the pass side
            return judge_boundary(information_fraction, alpha)
        t = information_fraction
        if t <= 0.0:
            return math.inf
        return (c if t <= 1.0 else c + k * c * (t - 1.0)) / math.sqrt(t)

    stats.sequential_critical_z = boundary
    strata.DISPERSION_PRIOR_DF = prior  # type: ignore[misc]


def _patch_obf(c: float, prior: float, horizon: float, *, after_valid: bool) -> None:
    """The fail side's boundary as Lan-DeMets O'Brien-Fleming spending over `horizon` messages.

    t = canary first attempts / horizon; z >= c / sqrt(t) for t <= 1 (c from
    `bench/obf_boundary.py`: the exact recursion for looks at t = 0.1, 0.2, ..., 1); past the
    horizon either the final boundary c (flat) or the judge's always-valid boundary.
    """
    judge_boundary = stats.sequential_critical_z

    def boundary(information_fraction: float, alpha: float) -> float:
        if alpha != DEFAULT_POLICY.alpha:  # the pass side stays as it is
            return judge_boundary(information_fraction, alpha)
        t = information_fraction * DEFAULT_POLICY.min_canary_messages / horizon
        if t <= 0.0:
            return math.inf
        if t <= 1.0:
            return c / math.sqrt(t)
        return judge_boundary(information_fraction, alpha) if after_valid else c

    stats.sequential_critical_z = boundary
    strata.DISPERSION_PRIOR_DF = prior  # type: ignore[misc]


HISTORY_MINUTES = 60
"""The primary's minutes before the bake that a `seq` variant's dispersion prior is read from."""

_PHI_LINE = "phi = max(1.0, (chi2 + DISPERSION_PRIOR_DF) / (df + DISPERSION_PRIOR_DF))"


def _patch_dispersion_source() -> None:
    """`strata.stratified_difference` with its dispersion prior centred on `strata._PRIOR_PHI`.

    The judge shrinks the strata's Pearson chi-square / df towards 1 with `DISPERSION_PRIOR_DF`
    degrees of freedom; a `seq` variant with `hist` 1 shrinks it towards the dispersion of the
    primary's per-minute counts over the hour before the bake, with `prior` degrees of freedom.
    The failure-rate test only: the latency test keeps the judge's prior.
    """
    source = inspect.getsource(strata.stratified_difference)
    assert _PHI_LINE in source
    patched = source.replace(_PHI_LINE, "phi = _PHI(chi2, df)")
    namespace = vars(strata)
    exec(compile(patched, strata.__file__, "exec"), namespace)  # noqa: S102 (a bench patch)
    stats.stratified_difference = namespace["stratified_difference"]
    judge_latency = evidence._latency  # noqa: SLF001

    def latency(*args: object) -> dict[str, object]:
        namespace["_PRIOR_ON"] = False
        try:
            return judge_latency(*args)  # type: ignore[arg-type]
        finally:
            namespace["_PRIOR_ON"] = True

    evidence._latency = latency  # type: ignore[assignment]  # noqa: SLF001
    namespace.update(_PRIOR_ON=True, _PRIOR_DF=1.0, _PRIOR_PHI=1.0, _GUARD=0.0, _PHI=_phi)


def _phi(chi2: float, df: int) -> float:
    """The dispersion factor of a `seq` variant (the judge's when the prior is 1 at 1 df)."""
    space = vars(strata)
    if not space["_PRIOR_ON"]:
        return max(1.0, (chi2 + strata.DISPERSION_PRIOR_DF) / (df + strata.DISPERSION_PRIOR_DF))
    prior_df: float = space["_PRIOR_DF"]
    prior_phi: float = space["_PRIOR_PHI"]
    guard: float = space["_GUARD"]
    phi = max(1.0, (chi2 + prior_df * prior_phi) / (df + prior_df))
    if guard > 0.0 and df > 0 and chi2 > chi2_quantile(df, 1.0 - guard):
        phi = max(phi, chi2 / df)  # the bake's own strata are surely overdispersed: theirs
    return phi


def chi2_quantile(df: int, p: float) -> float:
    """The chi-square quantile (Wilson-Hilferty: within a few percent from 3 df)."""
    z = NormalDist().inv_cdf(p)
    h = 2.0 / (9.0 * df)
    return float(df * (1.0 - h + z * math.sqrt(h)) ** 3)


def history_dispersion(sim: ModuleType, cell: object, seed: int, start: float) -> float:
    """Pearson chi-square / df of the primary's per-minute counts over the hour before `start`.

    Generated by the cell's own process (its tasks, its clustering) from a random stream of its
    own, so the bake's data are the same as without it.
    """
    rng = random.Random(f"history-{seed}")  # noqa: S311 (a seeded simulation)
    world = sim.World(cell, rng, start)
    world.generated_to = start - 60.0 * (HISTORY_MINUTES + 1)
    world.advance(start)
    last = int(start // 60) - 1  # whole minutes before the bake
    minutes = [b for _, b in world.minutes("primary", last - HISTORY_MINUTES + 1, last) if b.first]
    n = sum(b.first for b in minutes)
    rate = sum(b.unsucceeded for b in minutes) / n if n else 0.0
    if len(minutes) < 2 or not 0.0 < rate < 1.0:
        return 1.0
    chi2 = math.fsum(
        (b.unsucceeded - b.first * rate) ** 2 / (b.first * rate * (1 - rate)) for b in minutes
    )
    return chi2 / (len(minutes) - 1)


def _run_seq(args: tuple[object, int, object]) -> dict[str, object]:
    """`judge_sim.run_one` with the dispersion prior centred on the primary's pre-bake hour."""
    sim = sys.modules["judge_sim"]
    cell, seed, _ = args
    if vars(strata).get("_HISTORY"):
        rng = random.Random(seed)  # noqa: S311 (the same first draw as run_one's)
        start = sim.EPOCH + 3600.0 * (seed % 1000) + rng.uniform(0.0, 60.0)
        vars(strata)["_PRIOR_PHI"] = history_dispersion(sim, cell, seed, start)
    return sim.run_one(args)  # type: ignore[no-any-return]


def _patch_seq(c: float, k: float, prior: float, *, history: bool, kappa: float) -> None:
    """A `seq` variant: the fail boundary, the dispersion prior, the fail rule's margin factor."""
    _patch(c, k, 1.0, both=False)
    _patch_dispersion_source()
    vars(strata).update(_PRIOR_DF=prior, _PRIOR_PHI=1.0, _HISTORY=history)
    if kappa != 1.0:
        judge_regressed = rules._regressed  # noqa: SLF001

        def regressed(ev: evidence.Evidence, policy: JudgePolicy) -> str | None:
            if ev.margin is None:
                return None
            return judge_regressed(dataclasses.replace(ev, margin=kappa * ev.margin), policy)

        rules.FAIL_CHECKS = tuple(
            regressed if check is judge_regressed else check for check in rules.FAIL_CHECKS
        )


OTHER_CELLS = (
    "1% -> 2%",
    "10% rejects",
    "10% retries",
    "dead canary",
)


def measure(
    variant: str,
    *,
    false_alarms: bool,
    others: bool = False,
    target_runs: int = 2000,
    false_alarm_runs: int = 600,
) -> list[str]:
    """One variant's lines: the 1% -> 3% figure, and the false FAIL rates when asked."""
    run = "run_one"
    interval = 60.0
    if variant.startswith("obf,"):  # obf,c,cc,prior,horizon,after_valid
        c, cc, prior, horizon, after = (float(x) for x in variant.split(",")[1:])
        _patch_obf(c, prior, horizon, after_valid=bool(after))
    elif variant.startswith("seq,"):  # seq,c,k,cc,prior,interval,hist[,kappa[,guard]]
        values = [float(x) for x in variant.split(",")[1:]]
        c, k, cc, prior, interval, hist = values[:6]
        kappa = values[6] if len(values) > 6 else 1.0
        _patch_seq(c, k, prior, history=bool(hist), kappa=kappa)
        vars(strata)["_GUARD"] = values[7] if len(values) > 7 else 0.0
        run = "seq"
    else:
        c, k, cc, prior, both = (float(x) for x in variant.split(","))
        _patch(c, k, prior, both=bool(both))
    sim = _sim()
    sim.LOOK_INTERVAL_S = interval  # type: ignore[attr-defined]
    logging.getLogger("qworker.canary.reader").setLevel(logging.ERROR)
    policy = dataclasses.replace(DEFAULT_POLICY, continuity_correction=bool(cc))
    lines = []
    groups: list[tuple[tuple[str, ...], int]] = (
        [(("1% -> 3%",), target_runs)] if target_runs else []
    )
    if false_alarms:
        groups.append((FALSE_ALARM_CELLS, false_alarm_runs))
    if others:
        groups.append((OTHER_CELLS, 300))
    for names, runs in groups:
        every = sim._cells()  # noqa: SLF001 (the simulation's own cells)
        cells = [cell for cell in every if cell.name.startswith(names)]
        jobs = [
            (cell, 1_000_003 * i + r, policy) for i, cell in enumerate(cells) for r in range(runs)
        ]
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(_run_seq if run == "seq" else sim.run_one, jobs, chunksize=25)
        for i, cell in enumerate(cells):
            ours = [r["ours"] for r in results[i * runs : (i + 1) * runs]]
            if cell.expect == "fail":
                p = sum(o.decision == "fail" and o.canary_n <= 1000 for o in ours) / runs
                by_look = sum(o.by_1000 for o in ours) / runs
                later = ", ".join(
                    f"<= {n}: {sum(o.decision == 'fail' and o.canary_n <= n for o in ours):d}"
                    f"/{runs}"
                    for n in (1100, 1200)
                )
                what = (
                    f"FAIL with <= 1000 canary (by the look reaching 1000: {by_look:.1%}; {later})"
                )
            else:
                p = sum(o.decision == "fail" for o in ours) / runs
                what = "false FAIL"
            se = math.sqrt(p * (1 - p) / runs)
            shares = "  ".join(
                f"{d} {sum(o.decision == d for o in ours) / runs:.1%}"
                for d in ("fail", "pass", "inconclusive")
            )
            median = statistics.median(o.minutes for o in ours)
            lines.append(
                f"{variant}\t{cell.name}\t{what}\t{p:.2%} ± {se:.2%}\t{runs} runs"
                f"\t({shares}; median {median:.0f} min)"
            )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0] if __doc__ else None)
    parser.add_argument("variants", nargs="*", default=["2.394,1,1,1,0", "1.85,2,0,4,0"])
    parser.add_argument("--false-alarms", action="store_true")
    parser.add_argument("--others", action="store_true", help="1% -> 2%, rejects, dead canary")
    parser.add_argument("--runs", type=int, default=2000, help="1% -> 3% runs (0: none)")
    parser.add_argument("--fa-runs", type=int, default=600, help="runs of each false-alarm cell")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:  # one variant in this process: the patch is process-wide
        lines = measure(
            args.variants[0],
            false_alarms=args.false_alarms,
            others=args.others,
            target_runs=args.runs,
            false_alarm_runs=args.fa_runs,
        )
        print("\n".join(lines), flush=True)
        return 0
    extra = ["--false-alarms"] if args.false_alarms else []
    extra += ["--others"] if args.others else []
    extra += [f"--runs={args.runs}", f"--fa-runs={args.fa_runs}"]
    for variant in args.variants:
        subprocess.run([sys.executable, __file__, "--one", *extra, variant], check=True)  # noqa: S603
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
