"""`qworker drill`: the command line of the drill."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from pathlib import Path
from typing import IO

from qworker import drill  # the package: its docstring is the help; tests replace run_drill
from qworker.drill.config import (
    DEFECT_VERSION,
    DRILL_POLICY,
    HANDLER_MODULE,
    NEW_VERSION,
    RATE_EMBEDDED,
    RATE_LOCALSTACK,
    REJECTS_VERSION,
    SLOW_VERSION,
    Capacity,
    Defect,
    DrillConfig,
    DrillError,
)
from qworker.drill.report import format_report
from qworker.exceptions import TransportError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `drill` command to the main CLI.

    Args:
        subparsers: The main parser's subcommands; `args.func(args)` then runs the command.
    """
    parser = subparsers.add_parser(
        "drill",
        help="run a local canary drill: two workers, traffic, the judge, rollback or promotion",
        description=drill.__doc__.split("\n\n", 1)[1] if drill.__doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--defect",
        nargs="?",
        const=Defect.BUG.value,
        choices=[d.value for d in Defect],
        help=(
            f"the canary runs a defective version instead of {NEW_VERSION}: bug ({DEFECT_VERSION}, "
            f"the default kind: fails yen payments), rejects ({REJECTS_VERSION}: rejects GBP "
            f"payments, which must be handed back, not dead-lettered) or slow ({SLOW_VERSION}: "
            "six times slower)"
        ),
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--endpoint-url", help="a running LocalStack (default: start one)")
    where.add_argument("--embedded", action="store_true", help="moto in this process (slower)")
    parser.add_argument(
        "--rate",
        type=float,
        help=f"messages per second (default {RATE_LOCALSTACK:g}; --embedded {RATE_EMBEDDED:g})",
    )
    defaults = DrillConfig()
    for role in ("primary", "canary"):
        capacity: Capacity = getattr(defaults, role)
        parser.add_argument(
            f"--{role}-pollers", type=int, default=capacity.pollers, help=f"the {role}'s pollers"
        )
        parser.add_argument(
            f"--{role}-concurrency",
            type=int,
            default=capacity.concurrency,
            help=f"the {role}'s handler slots",
        )
    for flag, kind, default, text in (
        ("--look-interval-s", float, defaults.look_interval_s, "seconds between the judge's looks"),
        ("--metrics-interval-s", float, defaults.metrics_interval_s, "workers' metrics interval"),
        ("--after-s", float, defaults.after_s, "traffic after the action, before the drain"),
        ("--drain-timeout-s", float, defaults.drain_timeout_s, "longest wait for an empty queue"),
        (
            "--min-canary-messages",
            int,
            DRILL_POLICY.min_canary_messages,
            "canary first attempts to pass",
        ),
        ("--min-bake-s", float, DRILL_POLICY.min_bake_s, "least bake time before a pass"),
        (
            "--max-bake-s",
            float,
            DRILL_POLICY.max_bake_s,
            "bake time after which it is inconclusive",
        ),
        ("--alpha", float, DRILL_POLICY.alpha, "false-alarm rate of the whole bake"),
    ):
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")
    parser.add_argument("--out", type=Path, help="run directory (default .qworker/drill-<id>)")
    parser.add_argument("--handler-module", default=HANDLER_MODULE, help="the workers' module")
    parser.add_argument("--seed", type=int, help="seed of the traffic's random mix")
    parser.add_argument("--json", action="store_true", help="print report.json instead of text")
    parser.set_defaults(func=drill_command)


def _config(args: argparse.Namespace) -> DrillConfig:
    policy = dataclasses.replace(
        DRILL_POLICY,
        min_canary_messages=args.min_canary_messages,
        min_bake_s=args.min_bake_s,
        max_bake_s=args.max_bake_s,
        alpha=args.alpha,
    )
    return DrillConfig(
        defect=Defect(args.defect) if args.defect else None,
        endpoint_url=args.endpoint_url,
        embedded=args.embedded,
        rate=args.rate,
        primary=Capacity(args.primary_pollers, args.primary_concurrency),
        canary=Capacity(args.canary_pollers, args.canary_concurrency),
        policy=policy,
        look_interval_s=args.look_interval_s,
        metrics_interval_s=args.metrics_interval_s,
        after_s=args.after_s,
        drain_timeout_s=args.drain_timeout_s,
        handler_module=args.handler_module,
        out_dir=args.out,
        seed=args.seed,
    )


def drill_command(args: argparse.Namespace, stdout: IO[str] | None = None) -> int:
    """Run `qworker drill`: exit 0 when the drill went as expected and lost nothing, else 1.

    Raises:
        ConfigError: A bad argument (the CLI prints it and exits 2).
    """
    out = stdout or sys.stdout
    config = _config(args)
    try:
        report = asyncio.run(drill.run_drill(config))
    except (DrillError, TransportError) as exc:
        print(f"qworker drill: error: {exc}", file=sys.stderr)  # noqa: T201 (the command's answer)
        return 1
    if args.json:
        out.write(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    else:
        out.write(format_report(report))
    out.flush()
    return 0 if report.ok else 1
