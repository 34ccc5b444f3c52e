"""Run every benchmark and rewrite bench/RESULTS.md: `make bench` (or `python bench/run_all.py`).

LocalStack is installed if needed (its own virtualenv, see scripts/localstack.py), started once on
127.0.0.1 with `SQS_DISABLE_CLOUDWATCH_METRICS=1`, shared by every benchmark through
`QWORKER_BENCH_ENDPOINT`, and stopped by its PID at the end. Each benchmark runs in its own
process, so one's heap cannot skew another's memory figures. `--no-localstack` runs only what
needs no server. About two minutes on two cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from benchlib import ENDPOINT_ENV, PID_ENV, ROOT, Section, machine, start_localstack, table

BENCH: Final = Path(__file__).resolve().parent
RESULTS: Final = BENCH / "RESULTS.md"
BENCHMARKS: Final = (
    "bench_throughput",
    "bench_overhead",
    "bench_memory",
    "bench_calls",
    "bench_health_probe",
)
REVISION_ENV: Final = "QWORKER_BENCH_REVISION"
"""Names the qworker measured when it is not this checkout's (e.g. a snapshot on PYTHONPATH)."""
OBSERVABILITY: Final = "bench_observability"
"""Another benchmark (metrics and tracing cost); it prints text, which goes in as it is."""
TIMEOUT_S: Final = 240.0
TIMEOUTS_S: Final = {"bench_throughput": 1200.0}
"""Benchmarks that need longer (seven contenders, interleaved rounds, on a shared machine)."""


def run_benchmark(name: str, env: dict[str, str], *, localstack: bool) -> Section:
    """Run `bench/<name>.py --json ...` in its own process; return its section."""
    with tempfile.TemporaryDirectory(prefix="qworker-bench-") as tmp:
        out = Path(tmp) / "section.json"
        command = [sys.executable, str(BENCH / f"{name}.py"), "--json", str(out)]
        if not localstack:
            command.append("--no-localstack")
        began = time.monotonic()
        print(f"== {name}", file=sys.stderr, flush=True)
        result = subprocess.run(  # noqa: S603 (our own script, with our own interpreter)
            command, env=env, cwd=ROOT, timeout=TIMEOUTS_S.get(name, TIMEOUT_S), check=False
        )
        print(f"== {name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        if result.returncode != 0 or not out.exists():
            return Section(name, f"**Failed** (exit status {result.returncode}); see its output.")
        return Section.from_json(out.read_text())


def run_observability(env: dict[str, str]) -> Section | None:
    """Run the observability benchmark if it is there; its printout is the section."""
    script = BENCH / f"{OBSERVABILITY}.py"
    if not script.exists():
        return None
    print(f"== {OBSERVABILITY}", file=sys.stderr, flush=True)
    result = subprocess.run(  # noqa: S603 (our own script, with our own interpreter)
        [sys.executable, str(script)],
        env=env,
        cwd=ROOT,
        timeout=TIMEOUT_S,
        check=False,
        capture_output=True,
        text=True,
    )
    text = result.stdout.strip() or result.stderr.strip()
    status = "" if result.returncode == 0 else f"**Failed** (exit status {result.returncode}).\n\n"
    is_markdown = any(line.startswith("|") for line in text.splitlines())
    markdown = (
        f"{status}Output of `python bench/{OBSERVABILITY}.py` (metrics and tracing on vs off, "
        "in-memory transport; its own docstring says how), as printed:\n\n"
        + (text if is_markdown else f"```text\n{text}\n```")
    )
    return Section("Observability cost (metrics + tracing)", markdown, {"output": text})


def _get(section: Section | None, *keys: str) -> Any:  # noqa: ANN401 (JSON values)
    value: Any = section.data if section is not None else None
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _num(value: Any, form: Callable[[float], str]) -> str:  # noqa: ANN401 (JSON values)
    return form(float(value)) if isinstance(value, int | float) else "-"


def summary(sections: dict[str, Section]) -> str:
    """The table at the top of RESULTS.md."""
    throughput = sections.get("bench_throughput")
    overhead = sections.get("bench_overhead")
    memory = sections.get("bench_memory")
    calls = sections.get("bench_calls")
    per_s = lambda v: f"{v:,.0f} msg/s"  # noqa: E731
    ratio = lambda v: f"{v:.2f}x"  # noqa: E731
    kib = lambda v: f"{v:.2f} KiB"  # noqa: E731
    calls_fmt = lambda v: f"{v:.3f}"  # noqa: E731
    cpu_us = lambda v: f"{v:.0f} µs"  # noqa: E731
    own_cpu = lambda v: f"{v:.1f} CPU µs/msg own"  # noqa: E731
    obs = "qworker + metrics + tracing"
    io = _get(throughput, "qworker I/O-bound") or {}
    bare_io = _get(throughput, "bare I/O-bound") or {}
    defaults = _get(throughput, "defaults") or {}
    traced = _get(throughput, "qworker + tracing 1.0") or {}
    rows = [
        [
            "Throughput, LocalStack, drain (tuned): qworker",
            _num(_get(throughput, "qworker", "median_msg_per_s"), per_s),
            _num(_get(throughput, "qworker", "median_paired_ratio"), ratio)
            + " of bare, median per round (CPU-bound "
            + _num(_get(throughput, "qworker", "cpu_bound_ratio"), ratio)
            + ")",
            "≥ 0.90x bare",
        ],
        [
            "Throughput, LocalStack, drain: bare aiobotocore loop",
            _num(_get(throughput, "bare aiobotocore", "median_msg_per_s"), per_s),
            "1.00x",
            "",
        ],
        [
            (
                "Throughput, LocalStack, drain (defaults: concurrency "
                f"{defaults.get('concurrency', '?')}, pollers "
                f"{defaults.get('pollers', 'derived')}): qworker"
            ),
            _num(_get(throughput, "qworker defaults", "median_msg_per_s"), per_s),
            _num(_get(throughput, "qworker defaults", "median_paired_ratio"), ratio)
            + " of bare, median per round (CPU-bound "
            + _num(_get(throughput, "qworker defaults", "cpu_bound_ratio"), ratio)
            + ")",
            "≥ 0.90x bare",
        ],
        [
            "I/O-bound",
            _num(io.get("median_msg_per_s"), per_s),
            _num(io.get("median_paired_ratio_to_ideal"), ratio)
            + " of min(C/t, bare), median per round; min(C/t, bare's median) = "
            + _num(io.get("ideal_msg_per_s"), per_s)
            + "; receives/msg "
            + _num(io.get("receives_per_msg"), calls_fmt)
            + " (bare "
            + _num(bare_io.get("receives_per_msg"), calls_fmt)
            + ")",
            "≥ 0.95x",
        ],
        [
            "Tracing at sample ratio 1.0 (drain, tuned): qworker",
            _num(traced.get("median_msg_per_s"), per_s),
            _num(traced.get("median_paired_ratio"), ratio)
            + " of bare; cost vs untraced, median per round, "
            + _num(traced.get("cost"), lambda v: f"{v * 100:.0f} %")
            + " (CPU-bound "
            + _num(traced.get("cpu_bound_cost"), lambda v: f"{v * 100:.0f} %")
            + ")",
            "≤ 15 % cost",
        ],
        [
            "Throughput, LocalStack: naive boto3 (1 msg)",
            _num(_get(throughput, "naive boto3 (1 msg)", "median_msg_per_s"), per_s),
            _num(_get(throughput, "naive boto3 (1 msg)", "ratio_to_bare"), ratio) + " of bare",
            "",
        ],
        [
            "Client CPU per message, LocalStack drain, equal pollers: qworker / bare loop",
            _num(_get(throughput, "qworker", "client_cpu_us_per_msg"), cpu_us),
            _num(_get(throughput, "bare aiobotocore", "client_cpu_us_per_msg"), cpu_us)
            + " ("
            + _num(_get(throughput, "client_cpu_ratio"), ratio)
            + ", median per round)",
            "≤ 1.15x",
        ],
        [
            "In-memory, one core: qworker",
            _num(_get(overhead, "qworker", "median_msg_per_s"), per_s),
            _num(_get(overhead, "qworker", "ratio_to_fake_alone"), ratio)
            + " of fake alone; "
            + _num(_get(overhead, "qworker", "own_cpu_us_per_msg"), own_cpu),
            "",
        ],
        [
            "In-memory, one core: fake transport alone",
            _num(_get(overhead, "fake transport alone", "median_msg_per_s"), per_s),
            "",
            "",
        ],
        [
            "In-memory, one core: qworker + metrics + tracing",
            _num(_get(overhead, obs, "median_msg_per_s"), per_s),
            _num(_get(overhead, obs, "ratio_to_fake_alone"), ratio)
            + " of fake alone; "
            + _num(_get(overhead, obs, "own_cpu_us_per_msg"), own_cpu),
            "",
        ],
        [
            "Memory per in-flight message (fake): Δ VmRSS / Python heap",
            _num(_get(memory, "in-memory fake", "rss_delta_kb_per_msg"), kib),
            _num(_get(memory, "in-memory fake", "python_heap_kb_per_msg"), kib),
            "",
        ],
        [
            "Memory per in-flight message (LocalStack): Δ VmRSS / Python heap",
            _num(_get(memory, "LocalStack (aiobotocore)", "rss_delta_kb_per_msg"), kib),
            _num(_get(memory, "LocalStack (aiobotocore)", "python_heap_kb_per_msg"), kib),
            "",
        ],
        [
            "SQS calls per message (fake / LocalStack)",
            _num(_get(calls, "in-memory fake", "per_message"), calls_fmt),
            _num(_get(calls, "LocalStack (aiobotocore)", "per_message"), calls_fmt),
            "≤ 0.25",
        ],
    ]
    probe = sections.get("bench_health_probe")
    rows.append(
        [
            "Health probe (`qworker health`): median wall / worst peak RSS",
            _num(_get(probe, "qworker health", "median_wall_ms"), lambda v: f"{v:.0f} ms"),
            _num(_get(probe, "qworker health", "max_rss_mb"), lambda v: f"{v:.1f} MB"),
            "≤ 50 ms, ≤ 25 MB",
        ]
    )
    return table(["measure", "value", "relative / second value", "target"], rows)


def revision() -> str:
    """Which qworker is measured: `QWORKER_BENCH_REVISION`, else this checkout's commit."""
    given = os.environ.get(REVISION_ENV)
    if given:
        return given
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 (git from PATH)
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "qworker"],  # noqa: S607
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{commit}{' with uncommitted changes in qworker/' if dirty else ''}"


HOW_TO: Final = (
    "Written by `bench/run_all.py`; do not edit by hand. Run them all with `make bench` (or "
    "`.venv/bin/python bench/run_all.py`), one alone with e.g. "
    "`.venv/bin/python bench/bench_throughput.py` (it starts its own LocalStack on 127.0.0.1 "
    "and stops it by PID). Profile the consumer with "
    "`.venv/bin/python bench/profile_consumer.py`. Numbers on a shared machine are noisy: the "
    "load average and the CPU other processes used during each throughput run are recorded. "
    "Where qworker's time goes, and what to change: `bench/PROFILE.md` (hand-written)."
)


def write_results(
    sections: dict[str, Section], facts: dict[str, str], facts_after: dict[str, str]
) -> None:
    """Rewrite RESULTS.md."""
    facts_rows = [
        ["date", facts["date"]],
        ["CPUs (nproc)", facts["nproc"]],
        ["CPU model", facts["cpu"]],
        ["memory", facts["memory"]],
        ["Python", facts["python"]],
        ["OS", facts["os"]],
        ["load average (1, 5, 15 min) before / after", f"{facts['load']} / {facts_after['load']}"],
        ["qworker measured", facts["revision"]],
    ]
    parts = [
        "# Benchmarks",
        "",
        HOW_TO,
        "",
        "## Machine",
        "",
        table(["", ""], facts_rows),
        "",
        "## Summary",
        "",
        summary(sections),
    ]
    for name in (*BENCHMARKS, OBSERVABILITY):
        section = sections.get(name)
        if section is not None:
            parts += ["", f"## {section.title}", "", section.markdown]
    RESULTS.write_text("\n".join(parts) + "\n")


def main() -> int:
    """Run everything and write the results."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--no-localstack", action="store_true", help="skip LocalStack parts")
    args = parser.parse_args()
    began = time.monotonic()
    facts = machine()
    facts["revision"] = revision()
    env = dict(os.environ)
    stop: Callable[[], None] | None = None
    sections: dict[str, Section] = {}
    try:
        localstack = not args.no_localstack
        if localstack and env.get(ENDPOINT_ENV):
            print(f"using the LocalStack at {env[ENDPOINT_ENV]}", file=sys.stderr)
        elif localstack:
            try:
                server, stop = start_localstack()
            except Exception as exc:  # noqa: BLE001 (report it in RESULTS.md and go on without)
                print(f"LocalStack unavailable, skipping its parts: {exc}", file=sys.stderr)
                localstack = False
            else:
                env[ENDPOINT_ENV] = server.endpoint_url
                env[PID_ENV] = str(server.pid)
        for name in BENCHMARKS:
            sections[name] = run_benchmark(name, env, localstack=localstack)
        observed = run_observability(env)
        if observed is not None:
            sections[OBSERVABILITY] = observed
    finally:
        if stop is not None:
            stop()
    write_results(sections, facts, machine())
    print(f"wrote {RESULTS} in {time.monotonic() - began:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
