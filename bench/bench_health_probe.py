"""What one `qworker health` probe costs: wall time, CPU and peak RSS of the process.

The ECS health check runs `qworker health` every 30 s in the worker's container. This runs
`python -m qworker health --health-file F` against a health file written by `write_report` (a
healthy report), each probe a fresh process reaped with `os.wait4` by a small launcher, so its own
peak RSS and CPU are read from the kernel. In the same rounds, as baselines: the bare interpreter
(`python -c pass`, the floor) and the import of the modules the probe used to load (boto3,
aiobotocore, botocore, OpenTelemetry's SDK, pydantic-settings). Rounds interleave the three so
machine load hits them alike. Targets: median wall time <= 50 ms and peak RSS <= 25 MB per probe.

`--update-results` also writes the section into bench/RESULTS.md (replacing its previous copy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from benchlib import ROOT, Section, table

from qworker.health_file import HealthReport, write_report

ROUNDS: Final = 20
TARGET_WALL_MS: Final = 50.0
TARGET_RSS_MB: Final = 25.0
TITLE: Final = "Health probe (`qworker health`) cost"
HEAVY: Final = (
    "import boto3, aiobotocore.session, botocore.session, opentelemetry.sdk.trace, "
    "pydantic_settings"
)
RESULTS: Final = ROOT / "bench" / "RESULTS.md"


@dataclass(frozen=True, slots=True)
class Run:
    """One process: wall seconds, CPU seconds (user + system), peak RSS in KiB, exit status."""

    wall_s: float
    cpu_s: float
    max_rss_kb: int
    status: int


# Runs in a small interpreter (-I -S): a child's peak RSS counts its parent's memory at the moment
# of spawning (the kernel keeps the larger of the old and the new image's high-water marks at exec),
# so the processes are started by a launcher of about the bare interpreter's size, not by this
# script, which imports the benchmark helpers.
LAUNCHER: Final = """
import json, os, sys, time
job = json.load(sys.stdin)
out = {name: [] for name in job["contenders"]}
null = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
for _ in range(job["rounds"]):
    for name, argv in job["contenders"].items():
        began = time.perf_counter()
        pid = os.posix_spawn(argv[0], argv, job["env"], file_actions=null)
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - began
        cpu = usage.ru_utime + usage.ru_stime
        out[name].append([wall, cpu, usage.ru_maxrss, os.waitstatus_to_exitcode(status)])
json.dump(out, sys.stdout)
"""


def run_rounds(
    contenders: dict[str, list[str]], env: dict[str, str], rounds: int
) -> dict[str, list[Run]]:
    """Run every contender `rounds` times, interleaved, from the launcher; return the figures."""
    job = json.dumps({"contenders": contenders, "env": env, "rounds": rounds})
    done = subprocess.run(  # noqa: S603 (our own interpreter)
        [sys.executable, "-I", "-S", "-c", LAUNCHER],
        input=job,
        capture_output=True,
        text=True,
        check=True,
    )
    raw = json.loads(done.stdout)
    return {name: [Run(*row) for row in rows] for name, rows in raw.items()}


def summarise(runs: list[Run]) -> dict[str, float]:
    """Median and worst of a contender's runs (ms, MB)."""
    return {
        "median_wall_ms": statistics.median(r.wall_s for r in runs) * 1000,
        "max_wall_ms": max(r.wall_s for r in runs) * 1000,
        "median_cpu_ms": statistics.median(r.cpu_s for r in runs) * 1000,
        "median_rss_mb": statistics.median(r.max_rss_kb for r in runs) / 1024,
        "max_rss_mb": max(r.max_rss_kb for r in runs) / 1024,
    }


def measure(rounds: int = ROUNDS) -> Section:
    """Run every contender `rounds` times, interleaved; return the section."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWORKER_")}
    env["PYTHONPATH"] = str(ROOT)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="qworker-probe-") as tmp:
        health_file = Path(tmp) / "worker.json"
        contenders = {
            "qworker health": [sys.executable, "-m", "qworker", "health"],
            "bare interpreter (python -c pass)": [sys.executable, "-c", "pass"],
            "heavy imports (the probe before)": [sys.executable, "-c", HEAVY],
        }
        contenders["qworker health"] += ["--health-file", str(health_file)]
        # A healthy report, as a worker writes it; fresh for longer than the run lasts.
        write_report(
            health_file, HealthReport(time.time(), live=True, ready=True, stale_after_s=3600.0)
        )
        runs = run_rounds(contenders, env, rounds)
    for name, found in runs.items():
        if any(r.status != 0 for r in found):
            raise SystemExit(f"{name} exited with {[r.status for r in found]}")
    data = {name: summarise(found) for name, found in runs.items()}
    probe = data["qworker health"]
    rows = [
        [
            name,
            f"{d['median_wall_ms']:.0f}",
            f"{d['max_wall_ms']:.0f}",
            f"{d['median_cpu_ms']:.0f}",
            f"{d['median_rss_mb']:.1f}",
            f"{d['max_rss_mb']:.1f}",
        ]
        for name, d in data.items()
    ]
    meets = probe["median_wall_ms"] <= TARGET_WALL_MS and probe["max_rss_mb"] <= TARGET_RSS_MB
    markdown = (
        f"{rounds} rounds, each a fresh process per contender, interleaved; figures of each "
        "process alone (`os.wait4`). `qworker health` reads a healthy report written by "
        f"`write_report`. Load average before: {load}; the machine was shared.\n\n"
        + table(
            [
                "process",
                "median wall ms",
                "worst wall ms",
                "median CPU ms",
                "median peak RSS MB",
                "worst peak RSS MB",
            ],
            rows,
        )
        + f"\n\nThe probe costs {probe['median_wall_ms'] - data['bare interpreter (python -c pass)']['median_wall_ms']:.0f} ms "  # noqa: E501
        "over the bare interpreter; it "
        + ("meets" if meets else "misses")
        + f" the targets (median wall <= {TARGET_WALL_MS:g} ms, peak RSS <= {TARGET_RSS_MB:g} MB)."
    )
    return Section(TITLE, markdown, {name: dict(d) for name, d in data.items()})


SUMMARY_ROW: Final = "| Health probe (`qworker health`): median wall / worst peak RSS |"


def update_results(section: Section) -> None:
    """Put `section` and its summary row into RESULTS.md, replacing their previous copies.

    The row is the one `run_all.py` writes into the summary table; the section goes after the
    last one (or where it was).
    """
    text = RESULTS.read_text(encoding="utf-8")
    probe = section.data["qworker health"]
    row = (
        f"{SUMMARY_ROW} {probe['median_wall_ms']:.0f} ms | {probe['max_rss_mb']:.1f} MB | "
        "≤ 50 ms, ≤ 25 MB |"
    )
    lines = text.split("\n")
    old = [i for i, line in enumerate(lines) if line.startswith(SUMMARY_ROW)]
    if old:
        lines[old[0]] = row
    else:
        start = lines.index("## Summary")
        end = next(i for i in range(start + 3, len(lines)) if not lines[i].startswith("|"))
        lines.insert(end, row)
    text = "\n".join(lines)
    block = f"## {section.title}\n\n{section.markdown}\n"
    head = f"## {section.title}\n"
    if head in text:
        before, _, rest = text.partition(head)
        _, sep, after = rest.partition("\n## ")
        text = before + block + ("\n## " + after if sep else "")
    else:
        text = text.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(text, encoding="utf-8")


def main() -> int:
    """Measure; print the section, write it as JSON (`--json`) or into RESULTS.md."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the section as JSON here (run_all.py)")
    parser.add_argument("--no-localstack", action="store_true", help="(needs none; accepted)")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="processes per contender")
    parser.add_argument("--update-results", action="store_true", help="write into RESULTS.md")
    args = parser.parse_args()
    section = measure(args.rounds)
    if args.json is not None:
        args.json.write_text(section.to_json())
    else:
        print(f"## {section.title}\n\n{section.markdown}")
    if args.update_results:
        update_results(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
