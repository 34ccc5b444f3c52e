"""`qworker canary judge`: judge the canary from CloudWatch, print the evidence, exit by verdict.

The pipeline's judge action runs `qworker canary judge --service S --queue Q --wait --max-bake-s N`:
it bakes from now, looking every `--interval-s`, until the judge decides. Without `--wait` it looks
once at the window given by `--since-minutes` or `--start`.

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

import botocore.exceptions

from qworker.canary.judge import (
    DEFAULT_POLICY,
    Decision,
    InconclusivePolicy,
    JudgePolicy,
    Reading,
    Verdict,
    judge,
    resolve,
    run_bake,
)
from qworker.canary.reader import CloudWatchSource, MetricsQuery, make_clients, queue_name_of
from qworker.exceptions import ConfigError
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

# Flags that override one JudgePolicy field each: (flag, field, type, help).
_POLICY_FLAGS: Final = (
    ("--min-bake-s", "min_bake_s", float, "least bake time before a pass"),
    ("--max-bake-s", "max_bake_s", float, "bake time after which no decision is inconclusive"),
    ("--min-canary-messages", "min_canary_messages", int, "canary first attempts to pass"),
    ("--min-primary-messages", "min_primary_messages", int, "primary first attempts to pass"),
    ("--alpha", "alpha", float, "false-alarm rate of the whole bake (all looks)"),
    ("--abs-margin", "abs_margin", float, "allowed absolute failure-rate increase"),
    ("--rel-margin", "rel_margin", float, "allowed failure-rate increase relative to the primary"),
    ("--failure-ceiling", "absolute_failure_ceiling", float, "canary failure-rate ceiling"),
    ("--latency-ratio-limit", "latency_ratio_limit", float, "allowed mean ProcessingTime ratio"),
)


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
    for flag, name, kind, text in _POLICY_FLAGS:
        default = getattr(DEFAULT_POLICY, name)
        metavar = flag.removeprefix("--").upper().replace("-", "_")
        bake.add_argument(
            flag, dest=name, type=kind, metavar=metavar, help=f"{text} (default {default:g})"
        )
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
    given = {name: getattr(args, name) for _, name, _, _ in _POLICY_FLAGS}
    overrides = {name: value for name, value in given.items() if value is not None}
    policy = InconclusivePolicy(args.on_inconclusive)
    return dataclasses.replace(DEFAULT_POLICY, inconclusive_policy=policy, **overrides)


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
    args: argparse.Namespace, start: datetime, clock: Callable[[], float]
) -> CloudWatchSource:
    settings = load_settings(region=args.region, endpoint_url=args.endpoint_url)
    cloudwatch, sqs = make_clients(settings.region, settings.endpoint_url)
    queue = queue_name_of(args.queue) if args.queue else None
    return CloudWatchSource(
        cloudwatch,
        MetricsQuery(service=args.service, queue=queue, namespace=args.namespace),
        start,
        sqs=None if args.no_backlog else sqs,
        backlog_queue=args.queue,
        now=lambda: datetime.fromtimestamp(clock(), UTC),
    )


def judge_command(
    args: argparse.Namespace,
    *,
    source: Callable[[], Reading] | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], object] = time.sleep,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run `qworker canary judge`.

    Args:
        args: The parsed arguments.
        source: Reads the counts since the start (default: CloudWatch and SQS per the arguments).
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
        read = source or _source(args, start, clock)
    except ConfigError as exc:
        err.write(f"qworker canary judge: error: {exc}\n")
        return EXIT_USAGE
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
            reading = read()
            elapsed_s = (now - start).total_seconds()
            verdict = judge(reading.canary, reading.primary, elapsed_s, reading.backlog, policy)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        err.write(f"qworker canary judge: cannot read the metrics: {exc}\n")
        return EXIT_ERROR
    final = resolve(verdict.decision, policy.inconclusive_policy)
    if args.json:
        out.write(json.dumps(_as_json(verdict, final, policy), indent=2) + "\n")
    else:
        out.write(format_verdict(verdict, final, policy))
    out.flush()
    return EXIT_CODES[final]


def _progress(verdict: Verdict, err: TextIO) -> None:
    ev = verdict.evidence
    z = "-" if ev.z is None or ev.critical_z is None else f"{ev.z:.2f} (needs {ev.critical_z:.2f})"
    err.write(
        f"[{ev.elapsed_s:6.0f} s] {verdict.decision.value}: canary "
        f"{ev.canary.first_attempt_failed}/{ev.canary.first_attempt_processed} failed "
        f"({_pct(ev.canary_rate)}), primary {ev.primary.first_attempt_failed}/"
        f"{ev.primary.first_attempt_processed} ({_pct(ev.primary_rate)}), z {z}\n"
    )
    err.flush()


def _as_json(verdict: Verdict, final: Decision, policy: JudgePolicy) -> dict[str, object]:
    return {
        "decision": verdict.decision.value,
        "final_decision": final.value,
        "exit_code": EXIT_CODES[final],
        "reasons": list(verdict.reasons),
        "evidence": dataclasses.asdict(verdict.evidence),
        "policy": dataclasses.asdict(policy),
    }


def _pct(rate: float | None) -> str:
    return "-" if rate is None else f"{rate:.2%}"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_verdict(verdict: Verdict, final: Decision, policy: JudgePolicy) -> str:
    """The verdict and its evidence as a readable table.

    Args:
        verdict: The judge's verdict.
        final: The decision after the inconclusive policy.
        policy: The policy it was judged under (for the thresholds).

    Returns:
        Lines of text, ending with a newline.
    """
    ev = verdict.evidence
    c, p = ev.canary, ev.primary
    rows = [
        ("", "canary", "primary"),
        ("first-attempt processed", str(c.first_attempt_processed), str(p.first_attempt_processed)),
        ("first-attempt failed", str(c.first_attempt_failed), str(p.first_attempt_failed)),
        ("first-attempt failure rate", _pct(ev.canary_rate), _pct(ev.primary_rate)),
        ("processed (all attempts)", str(c.processed), str(p.processed)),
        (
            "mean processing time (ms)",
            _num(c.processing_time_avg_ms, ".1f"),
            _num(p.processing_time_avg_ms, ".1f"),
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    table = [f"{label:<{width}}{a:>12}{b:>12}" for label, a, b in rows]
    title = verdict.decision.value.upper()
    if final is not verdict.decision:
        title += f" -> {final.value.upper()} (inconclusive policy: {policy.inconclusive_policy})"
    facts = [
        ("difference", f"{_num(ev.difference, '+.2%')} (margin {_pct(ev.margin)})"),
        ("z / critical z", f"{_num(ev.z, '.2f')} / {_num(ev.critical_z, '.2f')}"),
        ("p-value / look alpha", f"{_num(ev.p_value, '.3g')} / {_num(ev.look_alpha, '.3g')}"),
        ("information fraction", f"{ev.information_fraction:.2f} of {policy.min_canary_messages}"),
        (
            "canary rate bounds",
            (
                f"{_pct(ev.canary_rate_lower)} .. {_pct(ev.canary_rate_upper)} "
                f"(ceiling {policy.absolute_failure_ceiling:.2%})"
            ),
        ),
        (
            "latency ratio",
            f"{_num(ev.latency_ratio, '.2f')} (limit {policy.latency_ratio_limit:g})",
        ),
        ("backlog", "-" if ev.backlog is None else str(ev.backlog)),
        ("baked", f"{ev.elapsed_s:.0f} s (min {policy.min_bake_s:g}, max {policy.max_bake_s:g})"),
    ]
    lines = [f"canary judgement: {title}", "", *table, ""]
    lines += [f"{label:<{width}}{value}" for label, value in facts]
    lines += ["", "reasons:", *(f"  - {reason}" for reason in verdict.reasons)]
    return "\n".join(lines) + "\n"
