"""The release steps the pipeline's CodeBuild actions run besides the build and the judge.

    python deploy/release.py baseline --primary-stack P --canary-stack C --deploy-role-arn R
    python deploy/release.py restore-canary --primary-stack P --canary-stack C --deploy-role-arn R
    python deploy/release.py watch --alarms A,B --minutes N

`baseline` (Baseline stage) prints `export NAME=value` lines for the buildspec to eval:
BOOTSTRAP is "true" when the primary stack does not exist yet (the first release goes straight to
the primary, see deploy/README.md) and "false" otherwise, PRIMARY_IMAGE_TAG is what the primary
runs. Before that it puts the canary back on the primary's version if a release that was stopped
half-way left it elsewhere, and it fails with the runbook when a stack cannot be updated.

`restore-canary` (the judge action's post_build, when the judge failed) updates the canary stack
to the primary's ImageTag and CpuArchitecture, keeping its template (read back with GetTemplate)
and every other parameter.

`watch` fails when one of the alarms stays in ALARM for --grace-minutes (default 0: as soon as
it is seen), or is in ALARM when the watch ends, and succeeds after the given minutes (0: look
once). RELEASE_MINUTE_S sets the length of a minute (default 60), for rehearsals.

boto3 resolves its endpoint the usual way (AWS_ENDPOINT_URL included). Exit status: 0 done,
1 the step failed (one line on stderr says why and what to do), 2 bad arguments.
"""

# ruff: noqa: INP001, T201 - a script the buildspecs run by path; it prints for them to read

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

import boto3
from botocore.exceptions import ClientError

# The parameters that make up "the version a stack runs": the image is <ImageTag>-<arch>.
VERSION_PARAMETERS: Final = ("ImageTag", "CpuArchitecture")
# Stack states CloudFormation cannot update from; each needs a person (deploy/README.md).
RUNBOOK: Final = {
    "ROLLBACK_COMPLETE": (
        "its first create failed and CloudFormation cannot update it; delete it "
        "(aws cloudformation delete-stack --stack-name {stack}) and release again"
    ),
    "ROLLBACK_FAILED": (
        "its first create failed and so did the cleanup; delete it (aws cloudformation "
        "delete-stack --stack-name {stack}, retaining what it names) and release again"
    ),
    "UPDATE_ROLLBACK_FAILED": (
        "an update failed and so did its rollback; fix the cause, then aws cloudformation "
        "continue-update-rollback --stack-name {stack}, and release again"
    ),
    "DELETE_FAILED": "a delete failed; finish it (aws cloudformation delete-stack) first",
}
POLL_S: Final = 10.0
STACK_WAIT_S: Final = 1500.0  # inside the actions' one-hour limit


class ReleaseError(Exception):
    """A release step that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Stack:
    """What a release needs to know of a service stack."""

    name: str
    status: str
    parameters: Mapping[str, str]

    @property
    def version(self) -> tuple[str, ...]:
        """The parameters that say what runs."""
        return tuple(self.parameters.get(p, "") for p in VERSION_PARAMETERS)


# boto3 clients carry no type information.
Client: TypeAlias = Any
Sleep = Callable[[float], None]
Clock = Callable[[], float]


def describe(cloudformation: Client, name: str) -> Stack | None:
    """The stack, or None when there is none by that name."""
    try:
        response = cloudformation.describe_stacks(StackName=name)
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise
    (stack,) = response["Stacks"]
    parameters = {
        p["ParameterKey"]: p.get("ParameterValue", "") for p in stack.get("Parameters", [])
    }
    return Stack(name=name, status=stack["StackStatus"], parameters=parameters)


def settled(
    cloudformation: Client, name: str, *, sleep: Sleep = time.sleep, clock: Clock = time.monotonic
) -> Stack | None:
    """The stack once no operation is in progress on it (a restore may still be running)."""
    deadline = clock() + STACK_WAIT_S
    while True:
        stack = describe(cloudformation, name)
        if stack is None or not stack.status.endswith("_IN_PROGRESS"):
            return stack
        if clock() > deadline:
            raise ReleaseError(f"stack {name} stayed {stack.status} for {STACK_WAIT_S:.0f} s")
        sleep(POLL_S)


def updatable(stack: Stack) -> Stack:
    """The stack, if CloudFormation can update it; otherwise the runbook as an error."""
    if stack.status in RUNBOOK:
        advice = RUNBOOK[stack.status].format(stack=stack.name)
        raise ReleaseError(f"stack {stack.name} is {stack.status}: {advice}")
    return stack


def restore_canary(
    cloudformation: Client,
    *,
    primary_stack: str,
    canary_stack: str,
    deploy_role_arn: str,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
) -> str:
    """Put the canary stack on the primary's version; say what was done."""
    primary = settled(cloudformation, primary_stack, sleep=sleep, clock=clock)
    canary = settled(cloudformation, canary_stack, sleep=sleep, clock=clock)
    if primary is None or canary is None:
        missing = primary_stack if primary is None else canary_stack
        return f"no stack {missing}: nothing to restore"
    updatable(canary)
    if canary.version == primary.version:
        return f"canary already runs the primary's version {primary.parameters['ImageTag']}"
    parameters = [
        {"ParameterKey": key, "ParameterValue": primary.parameters[key]}
        if key in VERSION_PARAMETERS
        else {"ParameterKey": key, "UsePreviousValue": True}
        for key in canary.parameters
    ]
    # The template the canary stack runs now, sent back as it is (what UsePreviousTemplate does;
    # LocalStack, where the rehearsal runs, only takes a template body).
    body = cloudformation.get_template(StackName=canary_stack, TemplateStage="Original")
    template = body["TemplateBody"]
    try:
        cloudformation.update_stack(
            StackName=canary_stack,
            TemplateBody=template if isinstance(template, str) else json.dumps(template),
            Parameters=parameters,
            Capabilities=["CAPABILITY_IAM"],
            RoleARN=deploy_role_arn,
        )
    except ClientError as error:
        if "No updates are to be performed" not in str(error):
            raise
    after = settled(cloudformation, canary_stack, sleep=sleep, clock=clock)
    if after is None or after.status != "UPDATE_COMPLETE" or after.version != primary.version:
        status = "gone" if after is None else after.status
        raise ReleaseError(
            f"restoring {canary_stack} to {primary.parameters['ImageTag']} ended {status}; "
            "see its stack events, then release again"
        )
    return (
        f"canary restored from {canary.parameters.get('ImageTag')} to the primary's "
        f"{primary.parameters['ImageTag']}"
    )


def baseline(
    cloudformation: Client,
    *,
    primary_stack: str,
    canary_stack: str,
    deploy_role_arn: str,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
) -> tuple[dict[str, str], list[str]]:
    """The variables the rest of the release reads, and what was done on the way."""
    primary = settled(cloudformation, primary_stack, sleep=sleep, clock=clock)
    canary = settled(cloudformation, canary_stack, sleep=sleep, clock=clock)
    if canary is not None:
        updatable(canary)
    if primary is None:
        note = (
            f"no stack {primary_stack}: first release, it goes to the primary without a canary "
            "comparison and the canary starts as a copy of it"
        )
        return {"BOOTSTRAP": "true", "PRIMARY_IMAGE_TAG": ""}, [note]
    updatable(primary)
    note = restore_canary(
        cloudformation,
        primary_stack=primary_stack,
        canary_stack=canary_stack,
        deploy_role_arn=deploy_role_arn,
        sleep=sleep,
        clock=clock,
    )
    return {"BOOTSTRAP": "false", "PRIMARY_IMAGE_TAG": primary.parameters["ImageTag"]}, [note]


def alarms_in_alarm(cloudwatch: Client, names: Sequence[str]) -> list[str]:
    """Those of the named alarms (metric or composite) that are in ALARM."""
    response = cloudwatch.describe_alarms(
        AlarmNames=list(names), AlarmTypes=["MetricAlarm", "CompositeAlarm"]
    )
    alarms = [*response.get("MetricAlarms", []), *response.get("CompositeAlarms", [])]
    return sorted(a["AlarmName"] for a in alarms if a["StateValue"] == "ALARM")


def watch(
    cloudwatch: Client,
    names: Sequence[str],
    *,
    minutes: float,
    grace_minutes: float = 0.0,
    minute_s: float = 60.0,
    interval_s: float = 30.0,
    sleep: Sleep = time.sleep,
    clock: Clock = time.monotonic,
) -> str:
    """Watch the alarms for `minutes`; raise when one stays in ALARM for `grace_minutes`.

    The grace is the CloudWatchAlarm rule's WaitTime: an alarm still in ALARM from before (e.g.
    when a rollback re-runs the watch after putting the previous version back) may clear within
    it. An alarm in ALARM when the window ends fails the watch whatever the grace.
    """
    start = clock()
    end = start + minutes * minute_s
    grace_s = grace_minutes * minute_s
    since: dict[str, float] = {}
    while True:
        now = clock()
        firing = alarms_in_alarm(cloudwatch, names)
        since = {name: since.get(name, now) for name in firing}
        expired = sorted(name for name, first in since.items() if now - first >= grace_s)
        if expired or (firing and now >= end):
            held = f" for {grace_minutes:g} min" if grace_s and expired else ""
            raise ReleaseError(f"in ALARM{held}: {', '.join(expired or firing)}")
        if now >= end and not firing:
            return f"quiet for {minutes:g} min: {', '.join(names)}"
        sleep(min(interval_s * minute_s / 60.0, max(end - now, minute_s / 60.0)))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="release.py", description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    for step in ("baseline", "restore-canary"):
        sub = steps.add_parser(step)
        sub.add_argument("--primary-stack", required=True)
        sub.add_argument("--canary-stack", required=True)
        sub.add_argument("--deploy-role-arn", required=True)
    sub = steps.add_parser("watch")
    sub.add_argument("--alarms", required=True, help="comma-separated alarm names")
    sub.add_argument("--minutes", type=float, default=0.0, help="0: look once")
    sub.add_argument(
        "--grace-minutes", type=float, default=0.0, help="how long an alarm may stay in ALARM"
    )
    return parser


def _minute_s(environ: Mapping[str, str]) -> float:
    text = environ.get("RELEASE_MINUTE_S", "60")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ReleaseError(f"RELEASE_MINUTE_S must be a positive number of seconds, not {text!r}")
    return value


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    """Run one step; see the module docstring."""
    args = _parser().parse_args(argv)
    environ = os.environ if environ is None else environ
    try:
        if args.step == "watch":
            names = [n for n in args.alarms.split(",") if n]
            minute_s = _minute_s(environ)
            note = watch(
                boto3.client("cloudwatch"),
                names,
                minutes=args.minutes,
                grace_minutes=args.grace_minutes,
                minute_s=minute_s,
            )
            print(f"release.py watch: {note}", file=sys.stderr)
            return 0
        stacks = {
            "primary_stack": args.primary_stack,
            "canary_stack": args.canary_stack,
            "deploy_role_arn": args.deploy_role_arn,
        }
        cloudformation = boto3.client("cloudformation")
        if args.step == "restore-canary":
            print(
                f"release.py restore-canary: {restore_canary(cloudformation, **stacks)}",
                file=sys.stderr,
            )
            return 0
        variables, notes = baseline(cloudformation, **stacks)
        for note in notes:
            print(f"release.py baseline: {note}", file=sys.stderr)
        for name, value in variables.items():
            print(f"export {name}={shlex.quote(value)}")
    except ReleaseError as error:
        print(f"release.py {args.step}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
