"""The queue, IAM and alarm templates deploy on LocalStack's CloudFormation and build what they say.

LocalStack's free edition has no ECS, Application Auto Scaling or CodePipeline, so the service and
pipeline templates cannot deploy here; the IAM roles of `service.yaml` (and the log group they name)
are cut out of the template as written and deployed on their own, under the permissions boundary
the pipeline template defines. deploy/release.py, which the pipeline's Baseline, judge and watch
actions run, is run as a real process against real LocalStack stacks and alarms.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from cfnlint.decode import decode
from test_deploy_templates import PIPELINE_PARAMS, release_module, render

from qworker.metrics import DEFAULT_NAMESPACE, Dimension

pytestmark = [pytest.mark.integration, pytest.mark.localstack, pytest.mark.slow]

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
TERMINAL = ("CREATE_COMPLETE", "CREATE_FAILED", "ROLLBACK_COMPLETE", "ROLLBACK_FAILED")


@pytest.fixture
def aws(localstack_server: Any) -> Iterator[dict[str, Any]]:
    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=localstack_server.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",  # noqa: S106 (LocalStack takes any key)
        )

    clients = {name: client(name) for name in ("cloudformation", "sqs", "cloudwatch", "iam")}
    yield clients
    for c in clients.values():
        c.close()


def deploy(cfn: Any, body: str, parameters: dict[str, str]) -> dict[str, str]:
    """Create a stack, wait for it, and return its outputs (fail with the events if it failed)."""
    name = f"qworker-test-{uuid.uuid4().hex[:8]}"
    cfn.create_stack(
        StackName=name,
        TemplateBody=body,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
        Capabilities=["CAPABILITY_NAMED_IAM", "CAPABILITY_IAM"],
    )
    deadline = time.monotonic() + 120
    while True:
        stack = cfn.describe_stacks(StackName=name)["Stacks"][0]
        if stack["StackStatus"] in TERMINAL:
            break
        assert time.monotonic() < deadline, f"stack {name} still {stack['StackStatus']}"
        time.sleep(0.2)  # CloudFormation works on its own: polling its status is the only way
    if stack["StackStatus"] != "CREATE_COMPLETE":
        events = cfn.describe_stack_events(StackName=name)["StackEvents"]
        reasons = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}" for e in events]
        pytest.fail(f"{name} ended {stack['StackStatus']}: {reasons}")
    return {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}


def test_queue_template_builds_queue_dlq_redrive_and_encryption(aws: dict[str, Any]) -> None:
    queue = f"orders-{uuid.uuid4().hex[:6]}"
    outputs = deploy(
        aws["cloudformation"],
        (DEPLOY / "queue.yaml").read_text(),
        {"QueueName": queue, "MaxReceiveCount": "4"},
    )
    sqs = aws["sqs"]
    url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
    redrive = json.loads(attrs["RedrivePolicy"])
    assert int(redrive["maxReceiveCount"]) == 4
    assert redrive["deadLetterTargetArn"] == outputs["DeadLetterQueueArn"]
    assert attrs.get("SqsManagedSseEnabled") == "true"
    dlq_attrs = sqs.get_queue_attributes(
        QueueUrl=outputs["DeadLetterQueueUrl"], AttributeNames=["All"]
    )["Attributes"]
    assert dlq_attrs["MessageRetentionPeriod"] == str(14 * 24 * 3600)
    assert outputs["QueueArn"] == attrs["QueueArn"]


def test_alarm_template_builds_canary_alarms_on_the_emitted_metrics(aws: dict[str, Any]) -> None:
    service = f"svc-{uuid.uuid4().hex[:6]}"
    prefix = f"t{uuid.uuid4().hex[:6]}"
    outputs = deploy(
        aws["cloudformation"],
        (DEPLOY / "alarms.yaml").read_text(),
        {
            "ServiceName": service,
            "QueueName": "orders",
            "DeadLetterQueueName": "orders-dlq",
            "AlarmNamePrefix": prefix,
        },
    )
    cloudwatch = aws["cloudwatch"]
    alarms = cloudwatch.describe_alarms(AlarmNamePrefix=prefix, AlarmTypes=["MetricAlarm"])
    metric_alarms = alarms["MetricAlarms"]
    assert len(metric_alarms) >= 5
    canary_dims = 0
    for alarm in metric_alarms:
        for query in alarm.get("Metrics", []):
            metric = query.get("MetricStat", {}).get("Metric")
            if metric and metric["Namespace"] == DEFAULT_NAMESPACE:
                dims = {d["Name"]: d["Value"] for d in metric["Dimensions"]}
                assert dims[Dimension.SERVICE] == service
                canary_dims += dims[Dimension.DEPLOYMENT_ROLE] == "canary"
    assert canary_dims > 0
    assert outputs["CanaryAlarmName"].startswith(prefix)
    assert outputs["FleetAlarmName"] in {a["AlarmName"] for a in metric_alarms}
    (dlq,) = (a for a in metric_alarms if a["AlarmName"] == outputs["DeadLetterArrivalAlarmName"])
    assert [q.get("Expression") for q in dlq["Metrics"] if q.get("ReturnData")] == ["DIFF(visible)"]
    assert not dlq.get("AlarmActions")  # no topic given: nothing to notify, and it gates nothing


def _iam_part_of_service_template() -> str:
    """The service template's IAM roles and log group, as written, with what they reference."""
    template, problems = decode(str(DEPLOY / "service.yaml"))
    assert not problems
    keep = {"LogGroup", "ExecutionRole", "TaskRole"}
    text = json.dumps({k: template["Resources"][k] for k in keep})
    parameters = {k: v for k, v in template["Parameters"].items() if k in text}
    conditions = {k: v for k, v in template.get("Conditions", {}).items() if k in text}
    part = {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": parameters,
        "Conditions": conditions,
        "Resources": {k: template["Resources"][k] for k in keep},
        "Outputs": {
            "TaskRoleName": {"Value": {"Ref": "TaskRole"}},
            "ExecutionRoleName": {"Value": {"Ref": "ExecutionRole"}},
        },
    }
    return json.dumps(part)


def test_service_iam_roles_deploy_scoped_to_the_queue(aws: dict[str, Any]) -> None:
    service = f"svc-{uuid.uuid4().hex[:6]}"
    body = _iam_part_of_service_template()
    wanted = json.loads(body)["Parameters"]
    values = {
        "ServiceName": service,
        "DeploymentRole": "canary",
        "ImageRepositoryName": "qworker",
        "QueueName": "orders",
        "DeadLetterQueueName": "orders-dlq",
        "QueueKmsKeyArn": "",
        "MetricsNamespace": DEFAULT_NAMESPACE,
        "LogRetentionDays": "30",
    }
    iam = aws["iam"]
    # The boundary the pipeline stack creates, under the name and path service.yaml names.
    boundary = render("pipeline.yaml", {**PIPELINE_PARAMS, "ServiceName": service}).resources(
        "AWS::IAM::ManagedPolicy"
    )["TaskRoleBoundary"]["Properties"]
    document = json.dumps(boundary["PolicyDocument"]).replace(
        "<ImageRepository.Arn>", "arn:aws:ecr:us-east-1:000000000000:repository/qworker"
    )
    created = iam.create_policy(
        PolicyName=boundary["ManagedPolicyName"], Path=boundary["Path"], PolicyDocument=document
    )["Policy"]
    outputs = deploy(aws["cloudformation"], body, {k: v for k, v in values.items() if k in wanted})
    role = iam.get_role(RoleName=outputs["TaskRoleName"])["Role"]
    assert role["Path"] == f"/qworker/{service}/"
    assert role["PermissionsBoundary"]["PermissionsBoundaryArn"] == created["Arn"]
    names = iam.list_role_policies(RoleName=outputs["TaskRoleName"])["PolicyNames"]
    assert names == ["consume-queue"]  # no KMS key given: no KMS policy
    document = iam.get_role_policy(RoleName=outputs["TaskRoleName"], PolicyName="consume-queue")
    policy = document["PolicyDocument"]
    if isinstance(policy, str):
        policy = json.loads(policy)
    resources = {json.dumps(s["Resource"]) for s in policy["Statement"]}
    assert any(r.endswith(':orders"') for r in resources)
    assert any(r.endswith(':orders-dlq"') for r in resources)
    assert all("*" not in a for s in policy["Statement"] for a in _actions(s))
    assert iam.get_role(RoleName=outputs["ExecutionRoleName"])["Role"]["RoleName"]


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement["Action"]
    return [action] if isinstance(action, str) else list(action)


# -- deploy/release.py against real LocalStack stacks and alarms -----------------------------------

# A service stack as release.py sees it: the version parameters and one more, and a resource whose
# value shows which parameters the last stack operation applied.
STAND_IN = json.dumps(
    {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": {
            "ImageTag": {"Type": "String"},
            "CpuArchitecture": {"Type": "String"},
            "DeploymentRole": {"Type": "String"},
        },
        "Resources": {"Service": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
        "Outputs": {
            "Applied": {"Value": {"Fn::Sub": "${ImageTag}-${CpuArchitecture}-${DeploymentRole}"}}
        },
    }
)


def _release(
    localstack_server: Any, *args: str, minute_s: str = "60"
) -> subprocess.CompletedProcess[str]:
    """Run deploy/release.py as the buildspecs do (baseline through eval, like CodeBuild's bash)."""
    env = {
        "PATH": os.environ["PATH"],
        "AWS_ENDPOINT_URL": localstack_server.endpoint_url,
        "AWS_REGION": "us-east-1",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "RELEASE_MINUTE_S": minute_s,
    }
    command = shlex.join([sys.executable, str(DEPLOY / "release.py"), *args])
    if args[0] == "baseline":
        command = f'out="$({command})"; eval "$out"; echo "$BOOTSTRAP|$PRIMARY_IMAGE_TAG"'
    return subprocess.run(
        ["bash", "-c", f"set -e; {command}"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


def _stack_parameters(cfn: Any, name: str) -> dict[str, str]:
    (stack,) = cfn.describe_stacks(StackName=name)["Stacks"]
    return {p["ParameterKey"]: p["ParameterValue"] for p in stack["Parameters"]}


def _create_service_stack(cfn: Any, name: str, parameters: dict[str, str]) -> None:
    cfn.create_stack(
        StackName=name,
        TemplateBody=STAND_IN,
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    deadline = time.monotonic() + 120
    while (status := cfn.describe_stacks(StackName=name)["Stacks"][0]["StackStatus"]) not in (
        TERMINAL
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.2)  # CloudFormation works on its own: polling its status is the only way
    events = cfn.describe_stack_events(StackName=name)["StackEvents"]
    reasons = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}" for e in events]
    assert status == "CREATE_COMPLETE", reasons


def test_release_baseline_bootstraps_then_puts_the_canary_on_the_primary_version(
    aws: dict[str, Any], localstack_server: Any
) -> None:
    cfn = aws["cloudformation"]
    service = f"svc-{uuid.uuid4().hex[:6]}"
    primary, canary = f"qworker-{service}-primary", f"qworker-{service}-canary"
    stacks = ["--primary-stack", primary, "--canary-stack", canary]
    role = ["--deploy-role-arn", "arn:aws:iam::000000000000:role/deploy"]

    first = _release(localstack_server, "baseline", *stacks, *role)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "true|"  # no primary: the first release bootstraps
    assert "first release" in first.stderr

    _create_service_stack(
        cfn, primary, {"ImageTag": "aaa", "CpuArchitecture": "ARM64", "DeploymentRole": "primary"}
    )
    # A release stopped half-way left the canary on another version and architecture.
    _create_service_stack(
        cfn, canary, {"ImageTag": "bbb", "CpuArchitecture": "X86_64", "DeploymentRole": "canary"}
    )
    second = _release(localstack_server, "baseline", *stacks, *role)
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == "false|aaa"
    assert _stack_parameters(cfn, canary) == {
        "ImageTag": "aaa",
        "CpuArchitecture": "ARM64",
        "DeploymentRole": "canary",  # everything else kept
    }
    (stack,) = cfn.describe_stacks(StackName=canary)["Stacks"]
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
    assert outputs["Applied"] == "aaa-ARM64-canary"  # the update really ran

    again = _release(localstack_server, "restore-canary", *stacks, *role)
    assert again.returncode == 0, again.stderr
    assert "already runs the primary's version aaa" in again.stderr


def test_release_watch_fails_on_an_alarm_in_alarm(
    aws: dict[str, Any], localstack_server: Any
) -> None:
    cloudwatch = aws["cloudwatch"]
    names = [f"t{uuid.uuid4().hex[:6]}-fleet", f"t{uuid.uuid4().hex[:6]}-other"]
    for name in names:
        cloudwatch.put_metric_alarm(
            AlarmName=name,
            Namespace=DEFAULT_NAMESPACE,
            MetricName="Processed",
            Statistic="Sum",
            Period=60,
            EvaluationPeriods=1,
            Threshold=1,
            ComparisonOperator="GreaterThanThreshold",
            TreatMissingData="notBreaching",
        )
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="test")
    alarms = ",".join(names)
    quiet = _release(
        localstack_server, "watch", "--alarms", alarms, "--minutes", "1", minute_s="0.2"
    )
    assert quiet.returncode == 0, quiet.stderr
    assert "quiet for 1 min" in quiet.stderr

    cloudwatch.set_alarm_state(AlarmName=names[1], StateValue="ALARM", StateReason="test")
    firing = _release(localstack_server, "watch", "--alarms", alarms, "--minutes", "0")
    assert firing.returncode == 1
    assert f"in ALARM: {names[1]}" in firing.stderr

    bad_minute = _release(localstack_server, "watch", "--alarms", alarms, minute_s="0")
    assert bad_minute.returncode == 1
    assert "RELEASE_MINUTE_S" in bad_minute.stderr


def test_release_watch_gives_an_alarm_from_before_its_grace(aws: dict[str, Any]) -> None:
    release = release_module()
    cloudwatch = aws["cloudwatch"]
    name = f"t{uuid.uuid4().hex[:6]}-fleet"
    cloudwatch.put_metric_alarm(
        AlarmName=name,
        Namespace=DEFAULT_NAMESPACE,
        MetricName="Processed",
        Statistic="Sum",
        Period=60,
        EvaluationPeriods=1,
        Threshold=1,
        ComparisonOperator="GreaterThanThreshold",
        TreatMissingData="notBreaching",
    )

    def run(clears_after_s: float | None) -> str:
        """Watch 10 minutes with 5 minutes' grace; the alarm fires before and clears (or not)."""
        cloudwatch.set_alarm_state(AlarmName=name, StateValue="ALARM", StateReason="before")
        now = [0.0]

        def sleep(seconds: float) -> None:  # the watch's clock: simulated minutes, real alarms
            now[0] += seconds
            if clears_after_s is not None and now[0] >= clears_after_s:
                cloudwatch.set_alarm_state(AlarmName=name, StateValue="OK", StateReason="cleared")

        note: str = release.watch(
            cloudwatch, [name], minutes=10, grace_minutes=5, sleep=sleep, clock=lambda: now[0]
        )
        return note

    # A rollback put the previous version back: the bad version's alarm clears within the grace.
    assert run(clears_after_s=180) == f"quiet for 10 min: {name}"
    # A bad version keeps it in ALARM: the watch fails once the grace is over, not at the end.
    with pytest.raises(release.ReleaseError, match=f"in ALARM for 5 min: {name}"):
        run(clears_after_s=None)
    # Cleared too late: still failed when the grace ran out.
    with pytest.raises(release.ReleaseError, match="for 5 min"):
        run(clears_after_s=420)
