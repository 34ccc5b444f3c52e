"""`qworker canary judge`: judge the canary from CloudWatch, print the evidence, exit by verdict.

The pipeline's judge action runs `qworker canary judge --service S --queue Q --wait --max-bake-s N`
followed by any extra flags (the pipeline's JudgeArgs): it bakes from now, looking every
`--interval-s`, until the judge decides. Without `--wait` it looks once at the window given by
`--since-minutes` or `--start`. Every policy field has a flag (`--help` lists them with their
defaults); a flag given twice takes its last value, so extra flags override earlier ones. A
`--max-bake-s` below the default minimum bake clamps the minimum bake to it.

The expected canary share (the dead-canary guard) is `--expected-canary-share`, or is read once at
the start from ECS with `--ecs-cluster`, `--canary-ecs-service` and `--primary-ecs-service`.

Exit codes: 0 pass, 1 fail, 2 bad arguments, 3 undecided (a one-shot look that says keep baking,
or an inconclusive bake under `--on-inconclusive report`), 4 the metrics could not be read.
Inconclusive fails closed (1) unless `--inconclusive-pass` (0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, TextIO

from qworker.canary.judge import (
    DEFAULT_POLICY,
    Decision,
    InconclusivePolicy,
    JudgePolicy,
    Reading,
    Verdict,
    judge_reading,
    resolve,
    run_bake,
)
from qworker.canary.reader import (
    CloudWatchClient,
    CloudWatchSource,
    EcsClient,
    LatencyStats,
    MetricsQuery,
    expected_share_from_ecs,
    make_clients,
    make_ecs_client,
    make_percentile_client,
    queue_name_of,
)
from qworker.canary.verdict_text import format_progress, format_verdict, verdict_json
from qworker.config import DEFAULT_CONCURRENCY
from qworker.exceptions import ConfigError, TransportError
from qworker.metrics import DEFAULT_NAMESPACE
from qworker.settings import load_settings

__all__ = [
    "EXIT_CODES",
    "EXIT_ERROR",
    "EXIT_USAGE",
    "build_parser",
    "format_verdict",
    "judge_command",
    "main",
    "register",
]

EXIT_USAGE: Final = 2
EXIT_ERROR: Final = 4
EXIT_CODES: Final[dict[Decision, int]] = {
    Decision.PASS: 0,
    Decision.FAIL: 1,
    Decision.INCONCLUSIVE: 3,
    Decision.CONTINUE: 3,
}
"""Exit code of each decision, after the inconclusive policy has been applied."""

_ALIASES: Final = {"absolute_failure_ceiling": ("--failure-ceiling",)}
_TYPES: Final[dict[str, Callable[[str], object]]] = {"int": int, "float": float}
_POLICY_HELP: Final = {
    "min_canary_messages": "planned sample of the fail test; least canary first attempts to pass",
    "min_primary_messages": "least primary first attempts to pass",
    "min_bake_s": "least bake time before a pass (clamped to --max-bake-s unless given)",
    "max_bake_s": "bake time after which no decision is inconclusive",
    "alpha": "false-alarm rate of the whole bake (all looks)",
    "pass_alpha": "how often a canary worse by the margin may pass",
    "pass_power": "bake sizing: how often an equal-rate canary passes by the planned sample",
    "abs_margin": "allowed absolute increase of the first-attempt non-success rate",
    "rel_margin": "allowed increase relative to the primary's rate",
    "expected_canary_share": "the canary's expected share of first attempts (dead-canary guard)",
    "latency_percentile": "the primary's percentile that defines a slow message",
    "latency_rel_margin": "allowed increase of the slow share, relative to the primary's",
    "latency_fallback_ratio": "fallback latency limit: median per-minute trimmed-mean ratio",
}


def _policy_fields() -> list[dataclasses.Field[object]]:
    return [f for f in dataclasses.fields(JudgePolicy) if f.name != "inconclusive_policy"]


def _iso_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _add_judge_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("what to judge")
    where.add_argument("--service", required=True, help="the Service metric dimension")
    where.add_argument("--queue", help="queue name (or URL): the Queue dimension and the backlog")
    where.add_argument("--namespace", default=DEFAULT_NAMESPACE, help="metric namespace")
    where.add_argument("--region", help="AWS region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    where.add_argument("--endpoint-url", help="CloudWatch and SQS endpoint, e.g. LocalStack's")
    where.add_argument("--no-backlog", action="store_true", help="do not read the queue backlog")
    window = where.add_mutually_exclusive_group()
    window.add_argument("--since-minutes", type=float, help="judge the last M minutes")
    window.add_argument("--start", type=_iso_time, help="judge from this ISO 8601 time (UTC)")
    bake = parser.add_argument_group("baking")
    bake.add_argument(
        "--wait", action="store_true", help="bake until a decision (default: look once)"
    )
    bake.add_argument("--interval-s", type=float, default=60.0, help="seconds between looks")
    bake.add_argument(
        "--latency-stats",
        choices=[m.value for m in LatencyStats],
        default=LatencyStats.AUTO.value,
        help="latency statistics: percentiles, falling back once the server refuses them (auto)",
    )
    ecs = parser.add_argument_group("expected canary share from ECS (instead of the flag)")
    ecs.add_argument("--ecs-cluster", help="the ECS cluster of both services")
    ecs.add_argument("--canary-ecs-service", help="the canary's ECS service")
    ecs.add_argument("--primary-ecs-service", help="the primary's ECS service")
    policy = parser.add_argument_group("judge policy (defaults: the measured policy)")
    for field in _policy_fields():
        flag = "--" + field.name.replace("_", "-")
        default = field.default
        text = f"{_POLICY_HELP.get(field.name, field.name.replace('_', ' '))} (default {default})"
        flags = (flag, *_ALIASES.get(field.name, ()))
        if field.type == "bool":
            policy.add_argument(
                *flags, dest=field.name, action=argparse.BooleanOptionalAction, help=text
            )
            continue
        kind = _TYPES[str(field.type).split(" ", 1)[0]]
        metavar = field.name.upper()
        policy.add_argument(*flags, dest=field.name, type=kind, metavar=metavar, help=text)
    inconclusive = bake.add_mutually_exclusive_group()
    inconclusive.add_argument(
        "--on-inconclusive",
        choices=[p.value for p in InconclusivePolicy],
        default=DEFAULT_POLICY.inconclusive_policy.value,
        help="inconclusive bake: fail (exit 1, default), pass (exit 0) or report (exit 3)",
    )
    inconclusive.add_argument(
        "--inconclusive-pass",
        dest="on_inconclusive",
        action="store_const",
        const=InconclusivePolicy.PASS.value,
        help="same as --on-inconclusive pass",
    )
    parser.add_argument("--json", action="store_true", help="print the verdict as JSON")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `canary` command (with its `judge` subcommand) to the main CLI.

    Args:
        subparsers: The main parser's subcommands; `args.func(args)` then runs the command.
    """
    canary = subparsers.add_parser(
        "canary", help="judge the canary", description="Canary judgement on the queue's metrics."
    )
    commands = canary.add_subparsers(title="commands", metavar="COMMAND", required=True)
    judge_parser = commands.add_parser(
        "judge",
        help="judge the canary against the primary",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_judge_arguments(judge_parser)
    judge_parser.set_defaults(func=judge_command)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone `qworker` parser with only the canary commands (tests, `python -m`)."""
    parser = argparse.ArgumentParser(prog="qworker")
    register(parser.add_subparsers(title="commands", metavar="COMMAND", required=True))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse `argv` and run the command.

    Args:
        argv: Arguments after the program name (default: `sys.argv[1:]`).

    Returns:
        The exit code.
    """
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def _policy(args: argparse.Namespace) -> JudgePolicy:
    overrides = {
        f.name: value for f in _policy_fields() if (value := getattr(args, f.name)) is not None
    }
    max_bake = overrides.get("max_bake_s", DEFAULT_POLICY.max_bake_s)
    if "min_bake_s" not in overrides and isinstance(max_bake, float):
        overrides["min_bake_s"] = min(DEFAULT_POLICY.min_bake_s, max_bake)
    policy = InconclusivePolicy(args.on_inconclusive)
    return dataclasses.replace(DEFAULT_POLICY, inconclusive_policy=policy, **overrides)


def _with_ecs_share(
    args: argparse.Namespace, policy: JudgePolicy, ecs: EcsClient | None
) -> JudgePolicy:
    names = (args.ecs_cluster, args.canary_ecs_service, args.primary_ecs_service)
    if all(name is None for name in names):
        return policy
    if any(name is None for name in names):
        raise ConfigError("give all of --ecs-cluster, --canary-ecs-service, --primary-ecs-service")
    if policy.expected_canary_share is not None:
        return policy  # the flag wins
    settings = load_settings(region=args.region, endpoint_url=args.endpoint_url)
    if ecs is None:
        ecs = make_ecs_client(settings.region, settings.endpoint_url)
    share = expected_share_from_ecs(
        ecs,
        args.ecs_cluster,
        args.canary_ecs_service,
        args.primary_ecs_service,
        DEFAULT_CONCURRENCY,  # the workers' default, not this process's settings
    )
    return dataclasses.replace(policy, expected_canary_share=share)


def _bake_start(args: argparse.Namespace, now: datetime) -> datetime:
    if args.start is not None:
        start: datetime = args.start
    elif args.since_minutes is not None:
        if args.since_minutes <= 0:
            raise ConfigError("--since-minutes must be positive")
        start = now - timedelta(minutes=args.since_minutes)
    elif args.wait:
        start = now
    else:
        raise ConfigError("give --since-minutes or --start, or --wait to bake from now")
    if start > now:
        raise ConfigError(f"--start {start.isoformat()} is in the future")
    if args.interval_s <= 0:
        raise ConfigError("--interval-s must be positive")
    return start


def _source(
    args: argparse.Namespace, start: datetime, clock: Callable[[], float], policy: JudgePolicy
) -> CloudWatchSource:
    settings = load_settings(region=args.region, endpoint_url=args.endpoint_url)
    cloudwatch, sqs = make_clients(settings.region, settings.endpoint_url)
    # Few retries for the percentile calls: a server that refuses them says so at once.
    percentiles: CloudWatchClient = make_percentile_client(settings.region, settings.endpoint_url)
    queue = queue_name_of(args.queue) if args.queue else None
    return CloudWatchSource(
        cloudwatch,
        MetricsQuery(service=args.service, queue=queue, namespace=args.namespace),
        start,
        sqs=None if args.no_backlog else sqs,
        backlog_queue=args.queue,
        now=lambda: datetime.fromtimestamp(clock(), UTC),
        latency=LatencyStats(args.latency_stats),
        latency_percentile=policy.latency_percentile,
        percentile_cloudwatch=percentiles,
    )


def judge_command(
    args: argparse.Namespace,
    *,
    source: Callable[[], Reading] | None = None,
    ecs: EcsClient | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] = time.sleep,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run `qworker canary judge`.

    Args:
        args: The parsed arguments.
        source: Reads the counts since the start (default: CloudWatch and SQS per the arguments).
        ecs: The ECS client for the expected share (default: one per the arguments).
        clock: Wall-clock seconds since the epoch.
        sleep: Sleeps between looks.
        stdout: Where the verdict goes (default: `sys.stdout`).
        stderr: Where errors and progress go (default: `sys.stderr`).

    Returns:
        The exit code (see the module docstring).
    """
    out, err = stdout or sys.stdout, stderr or sys.stderr
    try:
        policy = _policy(args)
        now = datetime.fromtimestamp(clock(), UTC)
        start = _bake_start(args, now)
        read = source or _source(args, start, clock, policy)
    except ConfigError as exc:
        err.write(f"qworker canary judge: error: {exc}\n")
        return EXIT_USAGE
    try:
        policy = _with_ecs_share(args, policy, ecs)
    except ConfigError as exc:
        err.write(f"qworker canary judge: error: {exc}\n")
        return EXIT_USAGE
    except (LookupError, TransportError) as exc:
        err.write(f"qworker canary judge: cannot read the expected share from ECS: {exc}\n")
        return EXIT_ERROR
    try:
        if args.wait:
            verdict = run_bake(
                read,
                clock,
                sleep,
                policy,
                interval_s=args.interval_s,
                started_s=start.timestamp(),
                on_look=lambda v: _progress(v, err),
            )
        else:
            verdict = judge_reading(read(), (now - start).total_seconds(), policy)
    except TransportError as exc:
        err.write(f"qworker canary judge: cannot read the metrics: {exc}\n")
        return EXIT_ERROR
    final = resolve(verdict.decision, policy.inconclusive_policy)
    if args.json:
        document = verdict_json(verdict, final, policy, EXIT_CODES[final])
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        out.write(format_verdict(verdict, final, policy))
    out.flush()
    return EXIT_CODES[final]


def _progress(verdict: Verdict, err: TextIO) -> None:
    err.write(format_progress(verdict))
    err.flush()
