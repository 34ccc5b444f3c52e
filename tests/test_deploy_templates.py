"""The CloudFormation templates in deploy/: lint-clean, and the invariants the design relies on.

The templates are loaded with cfn-lint's YAML decoder (it understands the short tags such as !Sub
and !If) and rendered for given parameters by a small resolver below (Ref, Fn::Sub, Fn::Join,
Fn::If, Fn::GetAtt, conditions), so the checks read concrete values: the alarm names the pipeline
watches, the parameters each deploy action passes, every IAM statement. test_deploy_alarms.py
imports the same helpers.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from cfnlint.decode import cfn_yaml

from qworker.metrics import DEFAULT_NAMESPACE, DIMENSION_SETS, MetricName

DEPLOY: Final = Path(__file__).resolve().parent.parent / "deploy"
TEMPLATES: Final = sorted(DEPLOY.glob("*.yaml"))
BUILDSPECS: Final = sorted(DEPLOY.glob("*.yml"))

ACCOUNT: Final = "123456789012"
REGION: Final = "eu-central-1"
PSEUDO: Final = {
    "AWS::AccountId": ACCOUNT,
    "AWS::Region": REGION,
    "AWS::Partition": "aws",
    "AWS::URLSuffix": "amazonaws.com",
    "AWS::StackName": "stack",
}

# The parameters of a realistic deployment, for the templates that have no default for them.
SERVICE_PARAMS: Final[dict[str, Any]] = {
    "ServiceName": "orders",
    "HandlerModule": "handlers.orders",
    "ImageRepositoryName": "qworker/orders",
    "ImageTag": "0123456789abcdef0123456789abcdef01234567",
    "ClusterName": "qworker",
    "Subnets": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
    "SecurityGroups": ["sg-0123456789abcdef0"],
    "QueueName": "orders",
    "DeadLetterQueueName": "orders-dlq",
}
PIPELINE_PARAMS: Final[dict[str, Any]] = {
    "ConnectionArn": (
        f"arn:aws:codeconnections:{REGION}:{ACCOUNT}:connection/0123abcd-0123-4567-89ab-0123456789ab"
    ),
    "FullRepositoryId": "example/orders",
    "ServiceName": "orders",
    "HandlerModule": "handlers.orders",
    "ClusterName": "qworker",
    "Subnets": ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"],
    "SecurityGroups": ["sg-0123456789abcdef0"],
    "QueueName": "orders",
    "DeadLetterQueueName": "orders-dlq",
}
ALARM_PARAMS: Final[dict[str, Any]] = {
    "ServiceName": "orders",
    "QueueName": "orders",
    "DeadLetterQueueName": "orders-dlq",
}

# AWS metrics the templates may use besides the framework's own: the backlog and the task count.
AWS_METRICS: Final[dict[tuple[str, str], frozenset[str]]] = {
    ("AWS/SQS", "ApproximateNumberOfMessagesVisible"): frozenset({"QueueName"}),
    ("ECS/ContainerInsights", "RunningTaskCount"): frozenset({"ClusterName", "ServiceName"}),
}

# Actions without resource-level permissions: Resource "*" is the only way to grant them.
RESOURCE_STAR_ONLY: Final = frozenset(
    {
        "ecr:GetAuthorizationToken",
        "cloudwatch:PutMetricData",  # scoped by a cloudwatch:namespace condition instead
        "cloudwatch:GetMetricData",
        "cloudwatch:DescribeAlarms",  # read-only; composite alarms are only returned for "*"
        "cloudformation:ValidateTemplate",
        "ecs:RegisterTaskDefinition",
        "ecs:DeregisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
        "logs:DescribeLogGroups",
        "logs:DescribeResourcePolicies",
        "application-autoscaling:DescribeScalableTargets",
        "application-autoscaling:DescribeScalingPolicies",
        "application-autoscaling:DescribeScheduledActions",
    }
)

NO_VALUE: Final = object()


# -- loading and rendering ---------------------------------------------------------------------


def load(name: str) -> dict[str, Any]:
    """Load a file from deploy/ as plain JSON-like data (short tags become Fn:: keys)."""
    decoded = cfn_yaml.load(str(DEPLOY / name))
    data: dict[str, Any] = json.loads(json.dumps(decoded))
    return data


def _parameter_values(template: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in template.get("Parameters", {}).items():
        if name in given:
            value = given[name]
        elif "Default" in spec:
            value = spec["Default"]
        else:
            raise KeyError(f"parameter {name} has no default and was not given")
        is_list = spec["Type"].startswith("List<") or spec["Type"] == "CommaDelimitedList"
        if is_list and isinstance(value, str):
            value = value.split(",")
        values[name] = [str(v) for v in value] if is_list else _text(value)
    unknown = set(given) - set(values)
    if unknown:
        raise KeyError(f"not parameters of the template: {sorted(unknown)}")
    return values


def _text(value: object) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


class Renderer:
    """Resolves a template's intrinsic functions for one set of parameter values."""

    NAME_PROPERTIES: Final = {
        "AWS::CloudWatch::Alarm": "AlarmName",
        "AWS::CloudWatch::CompositeAlarm": "AlarmName",
        "AWS::Logs::LogGroup": "LogGroupName",
        "AWS::ECR::Repository": "RepositoryName",
        "AWS::CodePipeline::Pipeline": "Name",
    }

    def __init__(self, template: Mapping[str, Any], params: Mapping[str, Any]) -> None:
        self.template = template
        self.params = _parameter_values(template, params)
        self.conditions: dict[str, bool] = {}
        for name in template.get("Conditions", {}):
            self.condition(name)

    def condition(self, name: str) -> bool:
        """The value of a named condition."""
        if name not in self.conditions:
            self.conditions[name] = self._truth(self.template["Conditions"][name])
        return self.conditions[name]

    def _truth(self, node: Any) -> bool:
        (function, argument), *_ = node.items()
        if function == "Condition":
            return self.condition(argument)
        if function == "Fn::Equals":
            left, right = (self.resolve(a) for a in argument)
            return _text(left) == _text(right)
        if function == "Fn::Not":
            return not self._truth(argument[0])
        if function == "Fn::And":
            return all(self._truth(a) for a in argument)
        if function == "Fn::Or":
            return any(self._truth(a) for a in argument)
        if function == "Fn::Contains":
            haystack, needle = (self.resolve(a) for a in argument)
            return _text(needle) in [_text(v) for v in haystack]
        raise NotImplementedError(function)

    def ref(self, name: str) -> Any:
        """What `Ref: name` resolves to (a parameter, pseudo parameter or resource)."""
        if name in self.params:
            return self.params[name]
        if name in PSEUDO:
            return PSEUDO[name]
        if name == "AWS::NoValue":
            return NO_VALUE
        resource = self.template["Resources"][name]
        name_property = self.NAME_PROPERTIES.get(resource["Type"])
        if name_property and name_property in resource.get("Properties", {}):
            return self.resolve(resource["Properties"][name_property])
        return f"<{name}>"

    def _sub(self, text: str, variables: Mapping[str, Any]) -> str:
        def replace(match: re.Match[str]) -> str:
            key = match.group(1)
            if key.startswith("!"):
                return "${" + key[1:] + "}"
            if key in variables:
                return _text(self.resolve(variables[key]))
            if "." in key and key.split(".")[0] in self.template.get("Resources", {}):
                return f"<{key}>"
            return _text(self.ref(key))

        return re.sub(r"\$\{([^}]+)\}", replace, text)

    def resolve(self, node: Any) -> Any:  # noqa: PLR0911 - one branch per intrinsic function
        """Resolve every intrinsic function in `node`; AWS::NoValue removes the item."""
        if isinstance(node, list):
            items = [self.resolve(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            (key, argument), *_ = node.items()
            if key == "Ref":
                return self.ref(argument)
            if key == "Fn::Sub":
                text, variables = (argument, {}) if isinstance(argument, str) else argument
                return self._sub(text, variables)
            if key == "Fn::Join":
                delimiter, items = argument
                return delimiter.join(_text(item) for item in self.resolve(items))
            if key == "Fn::If":
                name, when_true, when_false = argument
                return self.resolve(when_true if self.condition(name) else when_false)
            if key == "Fn::GetAtt":
                resource, attribute = argument.split(".") if isinstance(argument, str) else argument
                return f"<{resource}.{attribute}>"
        resolved = {key: self.resolve(value) for key, value in node.items()}
        return {key: value for key, value in resolved.items() if value is not NO_VALUE}

    def resources(self, type_: str | None = None) -> dict[str, dict[str, Any]]:
        """The resources that exist for these parameters, with resolved properties."""
        rendered = {}
        for name, resource in self.template["Resources"].items():
            if "Condition" in resource and not self.condition(resource["Condition"]):
                continue
            if type_ is None or resource["Type"] == type_:
                rendered[name] = {**resource, "Properties": self.resolve(resource["Properties"])}
        return rendered


def render(name: str, params: Mapping[str, Any]) -> Renderer:
    """Load `deploy/<name>` and prepare it for the given parameters."""
    return Renderer(load(name), params)


def pipeline_stage(renderer: Renderer, stage: str) -> dict[str, Any]:
    """One stage of the rendered pipeline."""
    (pipeline,) = renderer.resources("AWS::CodePipeline::Pipeline").values()
    (found,) = (s for s in pipeline["Properties"]["Stages"] if s["Name"] == stage)
    return dict(found)


def deploy_actions(renderer: Renderer) -> list[dict[str, Any]]:
    """Every CloudFormation deploy action of the rendered pipeline."""
    (pipeline,) = renderer.resources("AWS::CodePipeline::Pipeline").values()
    return [
        action
        for stage in pipeline["Properties"]["Stages"]
        for action in stage["Actions"]
        if action["ActionTypeId"]["Provider"] == "CloudFormation"
    ]


# -- lint and general hygiene ------------------------------------------------------------------


def test_every_template_is_cfn_lint_clean() -> None:
    cfn_lint = Path(sys.executable).with_name("cfn-lint")
    result = subprocess.run(
        # Every rule, the informational ones included (what `make cfn-lint` runs).
        [str(cfn_lint), "--include-checks", "I", "--", *(str(t) for t in TEMPLATES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _checkov_skips() -> Iterator[tuple[str, str, str]]:
    for path in TEMPLATES:
        for name, resource in load(path.name).get("Resources", {}).items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                yield f"{path.name}:{name}", skip["id"], skip.get("comment", "")


def test_every_checkov_skip_is_justified_in_the_template_and_the_readme() -> None:
    readme = (DEPLOY / "README.md").read_text()
    skips = list(_checkov_skips())
    assert skips
    for where, check, comment in skips:
        assert len(comment) > 40, f"{where}: {check} skipped without a reason"
        assert check in readme, f"{where}: {check} is not justified in deploy/README.md"


INLINE_TEMPLATE_LIMIT: Final = 51_200  # bytes CloudFormation accepts as TemplateBody


def test_templates_over_the_inline_limit_are_deployed_through_s3() -> None:
    # release.py restore-canary sends service.yaml back as a TemplateBody.
    assert len((DEPLOY / "service.yaml").read_bytes()) < INLINE_TEMPLATE_LIMIT
    docs = (DEPLOY / "README.md").read_text() + (DEPLOY.parent / "README.md").read_text()
    for path in TEMPLATES:
        if len(path.read_bytes()) < INLINE_TEMPLATE_LIMIT:
            continue
        commands = [
            block
            for block in re.split(r"\n(?=aws )", docs)
            if block.startswith("aws cloudformation deploy --stack-name") and path.name in block
        ]
        assert commands, path.name
        for command in commands:
            assert "--s3-bucket" in command.split("\n\n")[0], f"{path.name}: {command[:80]}"


def test_templates_are_the_expected_set() -> None:
    assert {t.name for t in TEMPLATES} >= {
        "queue.yaml",
        "service.yaml",
        "alarms.yaml",
        "pipeline.yaml",
    }


@pytest.mark.parametrize("path", TEMPLATES, ids=lambda p: p.name)
def test_every_parameter_is_described_and_constrained(path: Path) -> None:
    for name, spec in load(path.name).get("Parameters", {}).items():
        assert spec.get("Description"), f"{path.name}: {name} has no Description"
        constrained = {"AllowedValues", "AllowedPattern", "MinValue", "MaxValue"} & set(spec)
        # AWS-specific types are validated by CloudFormation itself; a list of alarm names is
        # checked by ECS when it looks the alarms up.
        typed = spec["Type"].startswith(("AWS::", "List<AWS::")) or spec["Type"] == (
            "CommaDelimitedList"
        )
        assert constrained or typed, f"{path.name}: {name} accepts anything"


@pytest.mark.parametrize("path", [*TEMPLATES, *DEPLOY.glob("*.yml")], ids=lambda p: p.name)
def test_no_hard_coded_accounts_regions_or_arns(path: Path) -> None:
    text = path.read_text()
    assert not re.search(r"(?<![\w{])\d{12}(?![\w}])", text), "an account id"
    assert not re.search(
        r"\b(us|eu|ap|sa|ca|me|af|il|mx|cn)-(north|south|east|west|central)"
        r"(east|west)?-\d\b",
        text,
    ), "a region"
    assert "arn:aws:" not in text, "a literal ARN (use ${AWS::Partition})"


# -- metrics: every name an alarm or scaling policy uses is one the framework emits --------------


def _metric_stats(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "Metric" in node and "Stat" in node:
            yield node
        for value in node.values():
            yield from _metric_stats(value)
    elif isinstance(node, list):
        for item in node:
            yield from _metric_stats(item)


def _all_metric_stats() -> Iterator[tuple[str, dict[str, Any]]]:
    primary = {**SERVICE_PARAMS, "DeploymentRole": "primary"}  # the one with a scaling policy
    for name, params in (("alarms.yaml", ALARM_PARAMS), ("service.yaml", primary)):
        renderer = render(name, params)
        for resource_name, resource in renderer.resources().items():
            for stat in _metric_stats(resource["Properties"]):
                yield f"{name}:{resource_name}", stat


def test_metrics_namespace_defaults_to_the_framework_namespace() -> None:
    for name in ("alarms.yaml", "service.yaml"):
        assert load(name)["Parameters"]["MetricsNamespace"]["Default"] == DEFAULT_NAMESPACE


def test_alarm_and_scaling_metrics_come_from_the_schema() -> None:
    emitted = {m.value for m in MetricName}
    dimension_sets = {frozenset(d.value for d in dims) for dims in DIMENSION_SETS}
    seen = 0
    for where, stat in _all_metric_stats():
        seen += 1
        metric = stat["Metric"]
        dimensions = {d["Name"]: d["Value"] for d in metric.get("Dimensions", [])}
        if metric["Namespace"] == DEFAULT_NAMESPACE:
            assert metric["MetricName"] in emitted, where
            # CloudWatch matches the exact dimension set: a subset or superset finds nothing.
            assert frozenset(dimensions) in dimension_sets, where
            assert dimensions["DeploymentRole"] in {"canary", "primary"}, where
        else:
            key = (metric["Namespace"], metric["MetricName"])
            assert key in AWS_METRICS, (
                f"{where}: {key} is neither qworker's nor an allowed AWS metric"
            )
            assert frozenset(dimensions) == AWS_METRICS[key], where
    assert seen > 10


def test_one_metrics_namespace_reaches_every_alarm() -> None:
    # A non-default namespace must not leave an alarm watching the default one (and so nothing).
    renderer = render("alarms.yaml", {**ALARM_PARAMS, "MetricsNamespace": "Payments/Workers"})
    namespaces = {
        stat["Metric"]["Namespace"]
        for resource in renderer.resources().values()
        for stat in _metric_stats(resource["Properties"])
    }
    assert namespaces == {"Payments/Workers", "AWS/SQS"}
    service = _service("canary", MetricsNamespace="Payments/Workers")
    environment = {e["Name"]: e["Value"] for e in _container(service)["Environment"]}
    assert environment["QWORKER_METRICS_NAMESPACE"] == "Payments/Workers"


def test_canary_alarms_watch_the_canary_series() -> None:
    alarms = render("alarms.yaml", ALARM_PARAMS).resources("AWS::CloudWatch::Alarm")
    canary = {n: a for n, a in alarms.items() if "-canary-" in a["Properties"]["AlarmName"]}
    assert len(canary) == 4
    for name, alarm in canary.items():
        roles = [
            {d["Name"]: d["Value"] for d in stat["Metric"]["Dimensions"]}.get("DeploymentRole")
            for stat in _metric_stats(alarm["Properties"])
            if stat["Metric"]["Namespace"] == DEFAULT_NAMESPACE
        ]
        assert "canary" in roles, name
        # Never a QWorker series summed over both roles.
        assert None not in roles, name


def test_composite_canary_alarm_is_any_canary_alarm() -> None:
    renderer = render("alarms.yaml", ALARM_PARAMS)
    alarms = renderer.resources("AWS::CloudWatch::Alarm")
    (composite,) = renderer.resources("AWS::CloudWatch::CompositeAlarm").values()
    rule = " ".join(composite["Properties"]["AlarmRule"].split())
    members = sorted(
        a["Properties"]["AlarmName"]
        for a in alarms.values()
        if "-canary-" in a["Properties"]["AlarmName"]
    )
    assert rule == " OR ".join(f'ALARM("{m}")' for m in sorted(members, key=rule.index))


def test_missing_data_policy() -> None:
    alarms = render("alarms.yaml", ALARM_PARAMS).resources("AWS::CloudWatch::Alarm")
    policies = {
        a["Properties"]["AlarmName"]: a["Properties"]["TreatMissingData"] for a in alarms.values()
    }
    assert policies.pop("qworker-orders-canary-silent") == "breaching"
    assert set(policies.values()) == {"notBreaching"}


# -- pipeline -------------------------------------------------------------------------------------


@pytest.fixture
def pipeline() -> Renderer:
    return render("pipeline.yaml", PIPELINE_PARAMS)


def test_pipeline_is_v2_queued_without_manual_approval(pipeline: Renderer) -> None:
    (resource,) = pipeline.resources("AWS::CodePipeline::Pipeline").values()
    properties = resource["Properties"]
    assert properties["PipelineType"] == "V2"
    assert properties["ExecutionMode"] == "QUEUED"
    assert [s["Name"] for s in properties["Stages"]] == [
        "Source",
        "Build",
        "Baseline",
        "Canary",
        "Primary",
    ]
    categories = {a["ActionTypeId"]["Category"] for s in properties["Stages"] for a in s["Actions"]}
    assert "Approval" not in categories


def test_manual_approval_is_its_own_stage_before_primary() -> None:
    renderer = render("pipeline.yaml", {**PIPELINE_PARAMS, "RequireManualApproval": "true"})
    (resource,) = renderer.resources("AWS::CodePipeline::Pipeline").values()
    names = [s["Name"] for s in resource["Properties"]["Stages"]]
    assert names[names.index("Canary") + 1 :] == ["Approve", "Primary"]
    (approval,) = pipeline_stage(renderer, "Approve")["Actions"]
    assert approval["ActionTypeId"]["Category"] == "Approval"
    categories = {
        a["ActionTypeId"]["Category"] for a in pipeline_stage(renderer, "Primary")["Actions"]
    }
    assert "Approval" not in categories


def test_source_is_a_connection_or_codecommit(pipeline: Renderer) -> None:
    (source,) = pipeline_stage(pipeline, "Source")["Actions"]
    assert source["ActionTypeId"]["Provider"] == "CodeStarSourceConnection"
    assert source["Configuration"]["ConnectionArn"] == PIPELINE_PARAMS["ConnectionArn"]
    codecommit = render(
        "pipeline.yaml",
        {
            **PIPELINE_PARAMS,
            "SourceProvider": "CodeCommit",
            "CodeCommitRepositoryName": "orders",
            "ConnectionArn": "",
            "FullRepositoryId": "",
        },
    )
    (source,) = pipeline_stage(codecommit, "Source")["Actions"]
    assert source["ActionTypeId"]["Provider"] == "CodeCommit"
    assert "SourceEventRule" in codecommit.resources()
    assert "SourceEventRule" not in pipeline.resources()


ALARM_RULE: Final = {
    "Category": "Rule",
    "Owner": "AWS",
    "Provider": "CloudWatchAlarm",
    "Version": "1",
}
VARIABLE_RULE: Final = {
    "Category": "Rule",
    "Owner": "AWS",
    "Provider": "VariableCheck",
    "Version": "1",
}


def _condition(conditions: Mapping[str, Any], result: str) -> list[dict[str, Any]]:
    """The rules of the one condition with this result."""
    (condition,) = (c for c in conditions["Conditions"] if c["Result"] == result)
    rules: list[dict[str, Any]] = condition["Rules"]
    return rules


def _alarm_rule_names(conditions: Mapping[str, Any], result: str) -> list[str]:
    rules = _condition(conditions, result)
    assert all(rule["RuleTypeId"] == ALARM_RULE for rule in rules)
    assert all(rule["Configuration"]["AlarmStates"] == "ALARM" for rule in rules)
    return [rule["Configuration"]["AlarmName"] for rule in rules]


def _alarm_outputs() -> dict[str, str]:
    alarms = render("alarms.yaml", ALARM_PARAMS)
    return {
        name: alarms.resolve(output["Value"])
        for name, output in alarms.template["Outputs"].items()
        if "Condition" not in output or alarms.condition(output["Condition"])
    }


def _stages(renderer: Renderer) -> list[dict[str, Any]]:
    (resource,) = renderer.resources("AWS::CodePipeline::Pipeline").values()
    stages: list[dict[str, Any]] = resource["Properties"]["Stages"]
    return stages


def test_every_condition_is_one_to_five_rules_on_metric_alarms_or_variables() -> None:
    renderer = render("pipeline.yaml", {**PIPELINE_PARAMS, "RequireManualApproval": "true"})
    alarms = render("alarms.yaml", ALARM_PARAMS)
    metric_alarms = {
        a["Properties"]["AlarmName"] for a in alarms.resources("AWS::CloudWatch::Alarm").values()
    }
    seen = 0
    for stage in _stages(renderer):
        # CodePipeline's BeforeEntry takes exactly one condition (API: "Fixed number of 1 item").
        if "BeforeEntry" in stage:
            assert len(stage["BeforeEntry"]["Conditions"]) == 1, stage["Name"]
            assert stage["BeforeEntry"]["Conditions"][0]["Result"] in {"FAIL", "SKIP"}
        if "OnSuccess" in stage:
            assert {c["Result"] for c in stage["OnSuccess"]["Conditions"]} == {"ROLLBACK"}
        for key in ("BeforeEntry", "OnSuccess", "OnFailure"):
            for condition in stage.get(key, {}).get("Conditions", []):
                assert 1 <= len(condition["Rules"]) <= 5, stage["Name"]
                names = [rule["Name"] for rule in condition["Rules"]]
                assert len(set(names)) == len(names)
                for rule in condition["Rules"]:
                    seen += 1
                    assert rule["RuleTypeId"] in (ALARM_RULE, VARIABLE_RULE)
                    if rule["RuleTypeId"] == ALARM_RULE:
                        # Members only: the rule is documented for metric alarms; the composite
                        # alarm is for notification.
                        assert rule["Configuration"]["AlarmName"] in metric_alarms
    assert seen == 9


def test_entry_gates_do_not_block_the_fix_for_a_crashed_canary(pipeline: Renderer) -> None:
    outputs = _alarm_outputs()
    gate = _alarm_rule_names(pipeline_stage(pipeline, "Baseline")["BeforeEntry"], "FAIL")
    assert gate == outputs["CanaryComparisonAlarmNames"].split(",")
    # The silent and absolute-rate alarms fire exactly when a crashed canary must be replaced.
    assert not [name for name in gate if name.endswith(("-silent", "-failure-rate"))]
    assert pipeline_stage(pipeline, "Baseline")["BeforeEntry"]["Conditions"][0]["Result"] == "FAIL"


def test_the_first_release_skips_the_canary_and_creates_it_from_the_primary(
    pipeline: Renderer,
) -> None:
    baseline = pipeline_stage(pipeline, "Baseline")
    (check,) = baseline["Actions"]
    assert check["Namespace"] == "BaselineVariables"
    spec = load("baseline-buildspec.yml")
    assert spec["env"]["exported-variables"] == ["BOOTSTRAP", "PRIMARY_IMAGE_TAG"]
    canary = pipeline_stage(pipeline, "Canary")
    (rule,) = _condition(canary["BeforeEntry"], "SKIP")
    assert rule["RuleTypeId"] == VARIABLE_RULE
    # The rule passes (stage entered) only when a primary exists; on bootstrap it fails: SKIP.
    assert rule["Configuration"] == {
        "Variable": "#{BaselineVariables.BOOTSTRAP}",
        "Operator": "EQ",
        "Value": "false",
    }
    primary = sorted(pipeline_stage(pipeline, "Primary")["Actions"], key=lambda a: a["RunOrder"])
    stacks = [a["Configuration"].get("StackName") for a in primary]
    assert stacks[:2] == ["qworker-orders-primary", "qworker-orders-canary"]


def test_the_canary_never_rolls_back_to_its_own_stage_history(pipeline: Renderer) -> None:
    canary = pipeline_stage(pipeline, "Canary")
    # A stage rollback would return the canary to the Canary stage's last success, which can be a
    # version the Primary stage rejected; the judge's post_build restores the primary's version.
    assert "OnFailure" not in canary
    assert "OnSuccess" not in canary
    spec = load("judge-buildspec.yml")
    (restore,) = spec["phases"]["post_build"]["commands"]
    assert '"$CODEBUILD_BUILD_SUCCEEDING" = "0"' in restore
    assert 'release.py" restore-canary' in restore or 'release.py" restore-canary' in restore


def test_primary_rolls_back_both_stacks_and_is_gated_on_every_canary_alarm(
    pipeline: Renderer,
) -> None:
    outputs = _alarm_outputs()
    primary = pipeline_stage(pipeline, "Primary")
    assert primary["OnFailure"]["Result"] == "ROLLBACK"
    assert _alarm_rule_names(primary["OnSuccess"], "ROLLBACK") == [outputs["FleetAlarmName"]]
    gate = _alarm_rule_names(primary["BeforeEntry"], "FAIL")
    assert gate == [*outputs["CanaryDeploymentAlarmNames"].split(","), outputs["FleetAlarmName"]]
    actions = sorted(primary["Actions"], key=lambda a: a["RunOrder"])
    assert [a["Name"] for a in actions] == ["DeployPrimary", "AlignCanary", "WatchFleet"]
    watch = pipeline.resources("AWS::CodeBuild::Project")["WatchProject"]["Properties"]
    variables = {v["Name"]: v["Value"] for v in watch["Environment"]["EnvironmentVariables"]}
    assert variables == {
        "WATCH_ALARMS": outputs["FleetAlarmName"],
        "WATCH_MINUTES": "10",
        "WATCH_GRACE_MINUTES": "5",
    }
    (command,) = load("watch-buildspec.yml")["phases"]["build"]["commands"]
    assert set(re.findall(r"\$([A-Z_]+)", command)) == {"CODEBUILD_SRC_DIR", *variables}


def _judge_command() -> str:
    spec = load("judge-buildspec.yml")
    (command,) = (c for c in spec["phases"]["build"]["commands"] if c.startswith("qworker"))
    return str(command)


def test_canary_is_judged_after_it_is_deployed(pipeline: Renderer) -> None:
    actions = sorted(pipeline_stage(pipeline, "Canary")["Actions"], key=lambda a: a["RunOrder"])
    assert [a["ActionTypeId"]["Provider"] for a in actions] == ["CloudFormation", "CodeBuild"]
    judge = pipeline.resources("AWS::CodeBuild::Project")["JudgeProject"]["Properties"]
    assert actions[1]["Configuration"]["ProjectName"] == "<JudgeProject>"
    assert judge["Source"]["BuildSpec"] == "deploy/judge-buildspec.yml"
    variables = {v["Name"]: v["Value"] for v in judge["Environment"]["EnvironmentVariables"]}
    outputs = _alarm_outputs()
    assert variables["CANARY_ALARMS"] == outputs["CanaryDeploymentAlarmNames"]
    # After the verdict, every canary alarm is looked at once; not the fleet alarm, which a shared
    # outage fires (it gates the Primary stage instead).
    assert "FLEET_ALARM" not in variables
    spec = load("judge-buildspec.yml")
    (check,) = (c for c in spec["phases"]["build"]["commands"] if "release.py" in c)
    assert 'watch --alarms "$CANARY_ALARMS" --minutes 0' in check
    assert variables["CANARY_ECS_SERVICE"] == "orders-canary"
    assert variables["PRIMARY_ECS_SERVICE"] == "orders-primary"
    command = _judge_command()
    # Every variable the command reads is set by the project.
    assert set(re.findall(r"\$([A-Z_]+)", command)) <= set(variables)
    assert command.endswith(" $JUDGE_ARGS")  # last, so that its flags win


def test_pipeline_parameters_reach_the_judge() -> None:
    given = {
        **PIPELINE_PARAMS,
        "MaxBakeSeconds": "420",
        "JudgeArgs": "--min-canary-messages 400 --on-inconclusive pass",
        "MetricsNamespace": "Payments/Workers",
    }
    renderer = render("pipeline.yaml", given)
    judge = renderer.resources("AWS::CodeBuild::Project")["JudgeProject"]["Properties"]
    env = {v["Name"]: v["Value"] for v in judge["Environment"]["EnvironmentVariables"]}
    command = _judge_command()
    for name, value in env.items():
        command = command.replace(f'"${name}"', shlex.quote(value)).replace(f"${name}", value)
    argv = shlex.split(command)
    assert argv[:3] == ["qworker", "canary", "judge"]
    assert argv[argv.index("--max-bake-s") + 1] == "420"
    assert argv[argv.index("--namespace") + 1] == "Payments/Workers"
    assert argv[argv.index("--ecs-cluster") + 1] == "qworker"
    assert argv[-4:] == ["--min-canary-messages", "400", "--on-inconclusive", "pass"]
    # One namespace everywhere: both services publish where the judge reads.
    for action in deploy_actions(renderer):
        overrides = json.loads(action["Configuration"]["ParameterOverrides"])
        assert overrides["MetricsNamespace"] == "Payments/Workers"
    # The bake fits the action: CodePipeline's one-hour default limit and CodeBuild's timeout, with
    # 20 minutes for installation, queries and a restore of the canary.
    parameters = load("pipeline.yaml")["Parameters"]
    maximum = int(parameters["MaxBakeSeconds"]["MaxValue"])
    assert maximum + 20 * 60 <= int(judge["TimeoutInMinutes"]) * 60 <= 60 * 60
    projects = renderer.resources("AWS::CodeBuild::Project").values()
    assert all(int(p["Properties"]["TimeoutInMinutes"]) <= 60 for p in projects)
    assert int(parameters["PostDeployWatchMinutes"]["MaxValue"]) + 15 <= 60


def test_judge_args_cannot_reach_the_shell() -> None:
    pattern = load("pipeline.yaml")["Parameters"]["JudgeArgs"]["AllowedPattern"]
    assert re.fullmatch(pattern, "--min-canary-messages 400 --alpha 0.01")
    for hostile in ("; rm -rf /", "$(id)", "`id`", "a | b", "a > b", "*", "a\nb", "'x'"):
        assert not re.fullmatch(pattern, hostile), hostile


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (("canary", "judge"), tuple(re.findall(r"(--[a-z][a-z-]*)", _judge_command()))),
        (("health",), ()),
    ],
    ids=["judge", "health"],
)
def test_the_commands_the_deployment_runs_exist(
    command: tuple[str, ...], flags: tuple[str, ...]
) -> None:
    # The judge action and the container health check run these; a rename must fail here.
    result = subprocess.run(
        [sys.executable, "-m", "qworker", *command, "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if result.returncode != 0 and "invalid choice" in result.stderr:
        pytest.skip(f"`qworker {' '.join(command)}` is not part of the CLI yet")
    assert result.returncode == 0, result.stderr
    for flag in flags:
        assert flag in result.stdout


def _release_commands() -> Iterator[tuple[str, list[str]]]:
    for path in BUILDSPECS:
        spec = load(path.name)
        for phase in spec["phases"].values():
            for command in phase.get("commands", []):
                for line in str(command).splitlines():
                    if "deploy/release.py" in line:
                        inner = line.split("$(", 1)[-1].strip()
                        if "$(" in line:  # x="$(python .../release.py ...)"
                            inner = inner.removesuffix(')"')
                        words = shlex.split(inner)
                        start = next(i for i, w in enumerate(words) if w.endswith("release.py"))
                        yield path.name, words[start + 1 :]


def test_the_release_steps_the_buildspecs_run_exist() -> None:
    steps = list(_release_commands())
    assert {args[0] for _, args in steps} == {"baseline", "restore-canary", "watch"}
    for where, args in steps:
        flags = [a for a in args if a.startswith("--")]
        result = subprocess.run(
            [sys.executable, str(DEPLOY / "release.py"), args[0], "--help"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        for flag in flags:
            assert flag in result.stdout, f"{where}: {flag}"


def release_module() -> Any:
    """deploy/release.py, imported from its path (it is a script, not a package module)."""
    spec = importlib.util.spec_from_file_location("release", DEPLOY / "release.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("status", "advice"),
    [
        ("ROLLBACK_COMPLETE", "delete-stack --stack-name qworker-orders-primary"),
        ("ROLLBACK_FAILED", "delete-stack --stack-name qworker-orders-primary"),
        ("UPDATE_ROLLBACK_FAILED", "continue-update-rollback --stack-name qworker-orders-primary"),
    ],
)
def test_a_stuck_stack_stops_the_release_with_its_runbook(status: str, advice: str) -> None:
    release = release_module()
    stack = release.Stack("qworker-orders-primary", status, {"ImageTag": "a"})
    with pytest.raises(release.ReleaseError, match=status) as raised:
        release.updatable(stack)
    assert advice in str(raised.value)
    readme = (DEPLOY / "README.md").read_text()
    assert status.split("_", 1)[0] in readme
    for fine in ("CREATE_COMPLETE", "UPDATE_COMPLETE", "UPDATE_ROLLBACK_COMPLETE"):
        assert release.updatable(release.Stack("s", fine, {})).status == fine


def test_service_template_is_deployed_for_both_roles(pipeline: Renderer) -> None:
    service_parameters = set(load("service.yaml")["Parameters"])
    stacks: dict[str, set[str]] = {}
    for action in deploy_actions(pipeline):
        configuration = action["Configuration"]
        assert configuration["ActionMode"] == "CREATE_UPDATE"
        assert configuration["TemplatePath"] == "SourceOutput::deploy/service.yaml"
        overrides = json.loads(configuration["ParameterOverrides"])
        assert set(overrides) <= service_parameters
        stacks.setdefault(configuration["StackName"], set()).add(overrides["DeploymentRole"])
        # One render of the service template per deploy action must succeed with these values.
        rendered = render("service.yaml", {**overrides, "ImageTag": "abc"})
        assert rendered.params["ServiceName"] == "orders"
    assert stacks == {"qworker-orders-canary": {"canary"}, "qworker-orders-primary": {"primary"}}


def test_image_tag_is_a_stack_parameter_set_by_the_build(pipeline: Renderer) -> None:
    image_tag = load("service.yaml")["Parameters"]["ImageTag"]
    assert "Default" not in image_tag  # every deploy says which version
    for action in deploy_actions(pipeline):
        configuration = action["Configuration"]
        assert "ImageTag" not in json.loads(configuration["ParameterOverrides"])
        assert configuration["TemplateConfiguration"] == "BuildOutput::image-params.json"
        assert {"Name": "BuildOutput"} in action["InputArtifacts"]
    (build,) = pipeline_stage(pipeline, "Build")["Actions"]
    assert build["OutputArtifacts"] == [{"Name": "BuildOutput"}]
    assert "#{SourceVariables.CommitId}" in build["Configuration"]["EnvironmentVariables"]


def test_buildspec_writes_the_image_tag_as_a_template_configuration(tmp_path: Path) -> None:
    spec = load("buildspec.yml")
    assert "image-params.json" in spec["artifacts"]["files"]
    (writer,) = (c for c in spec["phases"]["build"]["commands"] if "> image-params.json" in c)
    tag = "0123456789abcdef0123456789abcdef01234567"
    subprocess.run(
        ["bash", "-c", writer],
        cwd=tmp_path,
        env={"IMAGE_TAG": tag, "PATH": os.environ["PATH"]},
        check=True,
        timeout=30,
    )
    configuration = json.loads((tmp_path / "image-params.json").read_text())
    assert configuration == {"Parameters": {"ImageTag": tag}}
    pattern = load("service.yaml")["Parameters"]["ImageTag"]["AllowedPattern"]
    assert re.fullmatch(pattern, tag)
    pre_build = spec["phases"]["pre_build"]["commands"]
    assert any('IMAGE_TAG="$COMMIT_ID"' in c for c in pre_build)
    # The pushed tag names the architecture, and the service pulls its own architecture's tag.
    assert any('IMAGE_REFERENCE="$IMAGE_TAG-$IMAGE_ARCH"' in c for c in pre_build)
    assert any(
        '"$IMAGE_REPOSITORY_URI:$IMAGE_REFERENCE"' in c for c in spec["phases"]["build"]["commands"]
    )
    for architecture, suffix in (("ARM64", "arm64"), ("X86_64", "x86_64")):
        container = _container(_service("canary", ImageTag=tag, CpuArchitecture=architecture))
        assert container["Image"].endswith(f"/qworker/orders:{tag}-{suffix}")
    for architecture, suffix in (("ARM64", "arm64"), ("X86_64", "x86_64")):
        build = render("pipeline.yaml", {**PIPELINE_PARAMS, "CpuArchitecture": architecture})
        project = build.resources("AWS::CodeBuild::Project")["BuildProject"]["Properties"]
        env = {v["Name"]: v["Value"] for v in project["Environment"]["EnvironmentVariables"]}
        assert env["IMAGE_ARCH"] == suffix


def test_parameter_overrides_stay_under_the_1_kb_limit() -> None:
    long_names = {
        **PIPELINE_PARAMS,
        "ServiceName": "a-rather-long-service-name-xyz",
        "HandlerModule": "company_handlers.orders.fulfilment.v2",
        "ClusterName": "production-workers-cluster-01",
        "Subnets": [f"subnet-0123456789abcdef{i}" for i in range(3)],
        "SecurityGroups": [f"sg-0123456789abcdef{i}" for i in range(2)],
        "QueueName": "production-orders-fulfilment-v2",
        "DeadLetterQueueName": "production-orders-fulfilment-v2-dlq",
        "QueueKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0123abcd-0123-4567-89ab-0123456789",
    }
    for action in deploy_actions(render("pipeline.yaml", long_names)):
        # CodePipeline stores at most 1 KB of ParameterOverrides.
        assert len(action["Configuration"]["ParameterOverrides"].encode()) < 1024


def test_pipeline_and_services_name_the_alarms_the_alarms_template_creates(
    pipeline: Renderer,
) -> None:
    outputs = _alarm_outputs()
    by_role = {}
    for action in deploy_actions(pipeline):
        overrides = json.loads(action["Configuration"]["ParameterOverrides"])
        assert overrides["AlarmNamePrefix"] == "qworker"
        service = render("service.yaml", {**overrides, "ImageTag": "abc"})
        (ecs_service,) = service.resources("AWS::ECS::Service").values()
        alarms = ecs_service["Properties"]["DeploymentConfiguration"]["Alarms"]["AlarmNames"]
        by_role[overrides["DeploymentRole"]] = ",".join(alarms)
    assert by_role == {
        "canary": outputs["CanaryDeploymentAlarmNames"],
        "primary": outputs["FleetAlarmName"],
    }
    existing = {
        a["Properties"]["AlarmName"]
        for a in render("alarms.yaml", ALARM_PARAMS).resources().values()
    }
    assert set(by_role["canary"].split(",")) <= existing


# -- IAM ------------------------------------------------------------------------------------------


def _renderings() -> Iterator[Renderer]:
    """Every template, rendered so that every optional IAM statement exists at least once."""
    yield render("queue.yaml", {"QueueName": "orders"})
    yield render("cluster.yaml", {})
    yield render("alarms.yaml", ALARM_PARAMS)
    for role in ("canary", "primary"):
        yield render(
            "service.yaml",
            {
                **SERVICE_PARAMS,
                "DeploymentRole": role,
                "QueueKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0123abcd",
                "AlarmNamePrefix": "qworker",
            },
        )
    yield render(
        "pipeline.yaml",
        {**PIPELINE_PARAMS, "QueueKmsKeyArn": f"arn:aws:kms:{REGION}:{ACCOUNT}:key/0123abcd"},
    )
    yield render(
        "pipeline.yaml",
        {**PIPELINE_PARAMS, "SourceProvider": "CodeCommit", "CodeCommitRepositoryName": "orders"},
    )


def _allow_statements() -> Iterator[tuple[str, dict[str, Any]]]:
    for renderer in _renderings():
        for name, role in renderer.resources("AWS::IAM::Role").items():
            for policy in role["Properties"].get("Policies", []):
                for statement in policy["PolicyDocument"]["Statement"]:
                    if statement["Effect"] == "Allow":
                        yield f"{name}/{policy['PolicyName']}", statement


def _as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else value


def test_iam_grants_named_actions_on_named_resources() -> None:
    statements = list(_allow_statements())
    assert len(statements) > 20
    for where, statement in statements:
        actions = _as_list(statement["Action"])
        assert not any("*" in action for action in actions), f"{where}: wildcard action"
        if "*" in _as_list(statement["Resource"]):
            unscoped = set(actions) - RESOURCE_STAR_ONLY
            assert not unscoped, f"{where}: {sorted(unscoped)} on Resource '*' could be scoped"


def test_task_role_is_scoped_to_its_queue_and_namespace() -> None:
    renderer = render("service.yaml", {**SERVICE_PARAMS, "DeploymentRole": "canary"})
    role = renderer.resources("AWS::IAM::Role")["TaskRole"]["Properties"]
    (policy,) = role["Policies"]
    by_resource = {json.dumps(s["Resource"]): s for s in policy["PolicyDocument"]["Statement"]}
    queue = f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders"
    dlq = f"arn:aws:sqs:{REGION}:{ACCOUNT}:orders-dlq"
    assert set(by_resource) == {json.dumps(queue), json.dumps(dlq), json.dumps("*")}
    assert sorted(by_resource[json.dumps(queue)]["Action"]) == [
        "sqs:ChangeMessageVisibility",
        "sqs:DeleteMessage",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:ReceiveMessage",
    ]
    assert "sqs:SendMessage" in by_resource[json.dumps(dlq)]["Action"]
    metrics = by_resource[json.dumps("*")]
    assert metrics["Action"] == "cloudwatch:PutMetricData"
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": DEFAULT_NAMESPACE}}


def _granted(statements: list[dict[str, Any]], action: str, arn: str) -> bool:
    return any(
        action in _as_list(s["Action"])
        and any(fnmatch.fnmatchcase(arn, pattern) for pattern in _as_list(s["Resource"]))
        for s in statements
    )


def test_pipeline_roles_reach_exactly_what_the_service_stacks_create(pipeline: Renderer) -> None:
    roles = pipeline.resources("AWS::IAM::Role")
    deploy = roles["DeployRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    run = roles["PipelineRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    for role in ("canary", "primary"):
        service = _service(role)
        (ecs_service,) = service.resources("AWS::ECS::Service").values()
        name = ecs_service["Properties"]["ServiceName"]
        (log_group,) = service.resources("AWS::Logs::LogGroup").values()
        (task,) = service.resources("AWS::ECS::TaskDefinition").values()
        family = task["Properties"]["Family"]
        for iam_role in service.resources("AWS::IAM::Role").values():
            arn = f"arn:aws:iam::{ACCOUNT}:role{iam_role['Properties']['Path']}stack-Role-ABC"
            assert _granted(deploy, "iam:CreateRole", arn)
            assert _granted(deploy, "iam:PassRole", arn)
        prefix = f"arn:aws:ecs:{REGION}:{ACCOUNT}"
        assert _granted(deploy, "ecs:CreateService", f"{prefix}:service/qworker/{name}")
        assert _granted(deploy, "ecs:TagResource", f"{prefix}:task-definition/{family}:7")
        group = log_group["Properties"]["LogGroupName"]
        assert _granted(
            deploy, "logs:CreateLogGroup", f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group}"
        )
        stack = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/qworker-orders-{role}/0123-abcd"
        assert _granted(run, "cloudformation:UpdateStack", stack)
    # ... and nothing of another service.
    assert not _granted(
        deploy,
        "ecs:UpdateService",
        f"arn:aws:ecs:{REGION}:{ACCOUNT}:service/qworker/payments-canary",
    )
    assert not _granted(deploy, "iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/qworker/payments/x")


def _trust_statements() -> Iterator[tuple[str, dict[str, Any]]]:
    for renderer in _renderings():
        for name, role in renderer.resources("AWS::IAM::Role").items():
            for statement in role["Properties"]["AssumeRolePolicyDocument"]["Statement"]:
                yield name, statement


def test_every_service_trust_names_one_service_and_its_account() -> None:
    seen = set()
    for name, statement in _trust_statements():
        principal = statement["Principal"]
        assert set(principal) == {"Service"}, name
        assert isinstance(principal["Service"], str), name
        condition = statement["Condition"]
        keys = {key: test for test, block in condition.items() for key in block}
        # Confused-deputy guard on every trust policy: this account, and this account's ARNs.
        assert set(keys) == {"aws:SourceAccount", "aws:SourceArn"}, name
        account = next(
            b["aws:SourceAccount"] for b in condition.values() if "aws:SourceAccount" in b
        )
        source_arn = next(b["aws:SourceArn"] for b in condition.values() if "aws:SourceArn" in b)
        assert account == ACCOUNT, name
        assert f":{ACCOUNT}:" in source_arn, name
        seen.add((name, principal["Service"]))
        if keys["aws:SourceAccount"].endswith("IfExists"):
            # Only where the service does not document the keys (deploy/README.md, "verify on
            # first deploy").
            assert principal["Service"] in {
                "cloudformation.amazonaws.com",
                "ecs-tasks.amazonaws.com",
            }, name
            assert name in {"DeployRole", "ExecutionRole"}, name
    assert {service for _, service in seen} == {
        "codebuild.amazonaws.com",
        "codepipeline.amazonaws.com",
        "cloudformation.amazonaws.com",
        "events.amazonaws.com",
        "ecs-tasks.amazonaws.com",
    }


def _deploy_statements(renderer: Renderer) -> list[dict[str, Any]]:
    role = renderer.resources("AWS::IAM::Role")["DeployRole"]["Properties"]
    return [s for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]]


def test_roles_the_deploy_role_creates_carry_the_boundary(pipeline: Renderer) -> None:
    statements = _deploy_statements(pipeline)
    boundary = pipeline.resources("AWS::IAM::ManagedPolicy")["TaskRoleBoundary"]["Properties"]
    boundary_arn = f"arn:aws:iam::{ACCOUNT}:policy{boundary['Path']}{boundary['ManagedPolicyName']}"
    writes = {"iam:CreateRole", "iam:PutRolePolicy", "iam:PutRolePermissionsBoundary"}
    for statement in statements:
        if statement["Effect"] != "Allow":
            continue
        actions = set(_as_list(statement["Action"]))
        assert "iam:AttachRolePolicy" not in actions  # no managed policies on task roles
        assert "iam:DeleteRolePermissionsBoundary" not in actions
        if actions & writes:
            assert statement["Condition"] == {
                "StringEquals": {"iam:PermissionsBoundary": "<TaskRoleBoundary>"}
            }
    (deny,) = (s for s in statements if s["Effect"] == "Deny")
    assert deny["Action"] == "iam:DeleteRolePermissionsBoundary"
    # The service template's roles name exactly that policy (Ref of a managed policy is its ARN).
    for role in ("canary", "primary"):
        for iam_role in _service(role).resources("AWS::IAM::Role").values():
            assert iam_role["Properties"]["PermissionsBoundary"] == boundary_arn
    # What the boundary allows is what a worker needs, nothing more.
    actions = {
        action
        for statement in boundary["PolicyDocument"]["Statement"]
        for action in _as_list(statement["Action"])
    }
    assert actions == {
        "sqs:ReceiveMessage",
        "sqs:DeleteMessage",
        "sqs:ChangeMessageVisibility",
        "sqs:GetQueueAttributes",
        "sqs:GetQueueUrl",
        "sqs:SendMessage",
        "cloudwatch:PutMetricData",
        "ecr:GetAuthorizationToken",
        "ecr:BatchCheckLayerAvailability",
        "ecr:BatchGetImage",
        "ecr:GetDownloadUrlForLayer",
        "logs:CreateLogStream",
        "logs:PutLogEvents",
    }


def test_scalable_target_writes_are_scoped_by_the_service_tag(pipeline: Renderer) -> None:
    writes = {
        "application-autoscaling:RegisterScalableTarget",
        "application-autoscaling:DeregisterScalableTarget",
        "application-autoscaling:PutScalingPolicy",
        "application-autoscaling:DeleteScalingPolicy",
        "application-autoscaling:PutScheduledAction",
        "application-autoscaling:DeleteScheduledAction",
        "application-autoscaling:TagResource",
        "application-autoscaling:UntagResource",
    }
    covered = set()
    for statement in _deploy_statements(pipeline):
        actions = set(_as_list(statement["Action"])) & writes
        if not actions:
            continue
        covered |= actions
        (test,) = statement["Condition"].values()
        assert test in (
            {"aws:RequestTag/qworker:service": "orders"},
            {"aws:ResourceTag/qworker:service": "orders"},
        )
    assert covered == writes
    for role in ("canary", "primary"):
        (target,) = _service(role).resources("AWS::ApplicationAutoScaling::ScalableTarget").values()
        assert {"Key": "qworker:service", "Value": "orders"} in target["Properties"]["Tags"]


# Handler permissions of the registry schemas that the service stacks never exercise: they belong
# to properties service.yaml does not set (log delivery to S3/Firehose, resource policies, bearer
# tokens, managed policy attachments, Lambda provisioned concurrency, scaling roles given by ARN).
UNUSED_HANDLER_PERMISSIONS: Final = frozenset(
    {
        "logs:CreateLogDelivery",
        "logs:PutResourcePolicy",
        "logs:DeleteResourcePolicy",
        "logs:PutBearerTokenAuthentication",
        "s3:REST.PUT.OBJECT",
        "firehose:TagDeliveryStream",
        "iam:AttachRolePolicy",
        "iam:DetachRolePolicy",
        "iam:DeleteRolePermissionsBoundary",
        "lambda:GetProvisionedConcurrencyConfig",
        "lambda:PutProvisionedConcurrencyConfig",
        "lambda:DeleteProvisionedConcurrencyConfig",
        "ecs:ListClusters",
        "ecs:ListServices",
        "ecs:ListTaskDefinitions",
        "iam:ListRoles",
    }
)


def _handler_permissions(type_name: str) -> set[str]:
    schemas = Path(cfn_yaml.__file__).resolve().parent.parent / "data" / "schemas" / "resources"
    for path in schemas.glob("*.json"):
        text = path.read_text()
        if f'"typeName": "{type_name}"' in text:
            handlers = json.loads(text).get("handlers", {})
            return {p for handler in handlers.values() for p in handler.get("permissions", [])}
    raise AssertionError(f"no registry schema for {type_name}")


def test_the_deploy_role_grants_every_handler_permission_the_service_stacks_need(
    pipeline: Renderer,
) -> None:
    statements = [s for s in _deploy_statements(pipeline) if s["Effect"] == "Allow"]
    granted = {action for s in statements for action in _as_list(s["Action"])}
    types = {
        resource["Type"]
        for role in ("canary", "primary")
        for resource in _service(role, AlarmNamePrefix="qworker").resources().values()
    }
    assert "AWS::Logs::LogGroup" in types
    assert "AWS::IAM::Role" in types
    for type_name in sorted(types):
        needed = _handler_permissions(type_name) - UNUSED_HANDLER_PERMISSIONS
        assert needed <= granted, f"{type_name}: {sorted(needed - granted)}"


def test_the_pipeline_role_can_run_a_cloudformation_deploy_action(pipeline: Renderer) -> None:
    # The set the AWS CDK grants a pipeline for CloudFormationCreateUpdateStackAction.
    role = pipeline.resources("AWS::IAM::Role")["PipelineRole"]["Properties"]
    run = role["Policies"][0]["PolicyDocument"]["Statement"]
    stack = f"arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/qworker-orders-canary/0123-abcd"
    for action in (
        "cloudformation:CreateStack",
        "cloudformation:UpdateStack",
        "cloudformation:DescribeStacks",
        "cloudformation:DescribeStackEvents",
        "cloudformation:GetTemplate",
        "cloudformation:GetTemplateSummary",
        "cloudformation:GetStackPolicy",
        "cloudformation:SetStackPolicy",
    ):
        assert _granted(run, action, stack), action
    assert _granted(run, "cloudformation:ValidateTemplate", "*")
    assert not _granted(run, "cloudformation:DeleteStack", stack)


# -- service --------------------------------------------------------------------------------------


def _service(role: str, **params: Any) -> Renderer:
    return render("service.yaml", {**SERVICE_PARAMS, "DeploymentRole": role, **params})


def _container(renderer: Renderer) -> dict[str, Any]:
    (task,) = renderer.resources("AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    return dict(container)


def test_container_runs_the_worker_with_its_identity() -> None:
    container = _container(_service("canary"))
    assert [*container["EntryPoint"], *container["Command"]] == [
        "qworker",
        "run",
        "handlers.orders",
    ]
    assert container["HealthCheck"]["Command"] == ["CMD", "qworker", "health"]
    environment = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert environment["QWORKER_DEPLOYMENT_ROLE"] == "canary"
    assert environment["QWORKER_VERSION"] == SERVICE_PARAMS["ImageTag"]
    assert container["Image"].endswith(f"/qworker/orders:{SERVICE_PARAMS['ImageTag']}-arm64")
    assert environment["QWORKER_POLLERS"] == "2"
    assert (
        environment["QWORKER_QUEUE_URL"] == f"https://sqs.{REGION}.amazonaws.com/{ACCOUNT}/orders"
    )
    assert environment["QWORKER_SERVICE"] == "orders"
    assert environment["AWS_REGION"] == REGION
    assert float(environment["QWORKER_SHUTDOWN_GRACE_S"]) < float(container["StopTimeout"])
    assert container["LogConfiguration"]["LogDriver"] == "awslogs"


def _rules_allow(template: Mapping[str, Any], params: Mapping[str, Any]) -> bool:
    renderer = Renderer(template, params)
    for rule in template.get("Rules", {}).values():
        if "RuleCondition" in rule and not renderer._truth(rule["RuleCondition"]):
            continue
        if not all(renderer._truth(a["Assert"]) for a in rule["Assertions"]):
            return False
    return True


def test_shutdown_grace_always_ends_before_the_stop_timeout() -> None:
    template = load("service.yaml")
    stops = template["Parameters"]["StopTimeout"]["AllowedValues"]
    graces = template["Parameters"]["ShutdownGraceSeconds"]["AllowedValues"]
    assert max(stops) <= 120  # Fargate's ceiling
    accepted = {
        (stop, grace)
        for stop in stops
        for grace in graces
        if _rules_allow(
            template,
            {
                **SERVICE_PARAMS,
                "DeploymentRole": "primary",
                "StopTimeout": stop,
                "ShutdownGraceSeconds": grace,
            },
        )
    }
    # Every stop timeout has some grace, and every accepted pair leaves 5 s to flush.
    assert {stop for stop, _ in accepted} == set(stops)
    assert all(grace + 5 <= stop for stop, grace in accepted)
    defaults = template["Parameters"]
    assert (
        defaults["StopTimeout"]["Default"],
        defaults["ShutdownGraceSeconds"]["Default"],
    ) in accepted


def test_circuit_breaker_and_deployment_alarms_roll_back() -> None:
    outputs = _alarm_outputs()
    expected = {
        "canary": outputs["CanaryDeploymentAlarmNames"].split(","),
        "primary": [outputs["FleetAlarmName"]],
    }
    for role, alarms in expected.items():
        (service,) = (
            _service(role, AlarmNamePrefix="qworker").resources("AWS::ECS::Service").values()
        )
        configuration = service["Properties"]["DeploymentConfiguration"]
        assert configuration["DeploymentCircuitBreaker"] == {"Enable": True, "Rollback": True}
        assert configuration["Alarms"] == {"AlarmNames": alarms, "Enable": True, "Rollback": True}
        assert "LoadBalancers" not in service["Properties"]
        (service,) = _service(role).resources("AWS::ECS::Service").values()
        assert "Alarms" not in service["Properties"]["DeploymentConfiguration"]


def test_only_the_primary_scales_on_backlog_per_task() -> None:
    canary = _service("canary")
    (service,) = canary.resources("AWS::ECS::Service").values()
    assert "DesiredCount" not in service["Properties"]  # auto scaling owns it
    assert list(canary.resources("AWS::ApplicationAutoScaling::ScalingPolicy")) == [
        "CanaryShareScaling"
    ]

    primary = _service("primary")
    (service,) = primary.resources("AWS::ECS::Service").values()
    assert "DesiredCount" not in service["Properties"]  # auto scaling owns it
    (policy,) = primary.resources("AWS::ApplicationAutoScaling::ScalingPolicy").values()
    configuration = policy["Properties"]["TargetTrackingScalingPolicyConfiguration"]
    queries = configuration["CustomizedMetricSpecification"]["Metrics"]
    (returned,) = (q for q in queries if q["ReturnData"])
    assert returned["Expression"] == "backlog / tasks"
    names = {q["Id"]: q["MetricStat"]["Metric"]["MetricName"] for q in queries if "MetricStat" in q}
    assert names == {"backlog": "ApproximateNumberOfMessagesVisible", "tasks": "RunningTaskCount"}


def test_spot_and_architecture_are_parameters() -> None:
    spot = _service("primary", UseFargateSpot="true", CpuArchitecture="X86_64")
    (service,) = spot.resources("AWS::ECS::Service").values()
    providers = {p["CapacityProvider"] for p in service["Properties"]["CapacityProviderStrategy"]}
    assert providers == {"FARGATE", "FARGATE_SPOT"}
    (task,) = spot.resources("AWS::ECS::TaskDefinition").values()
    assert task["Properties"]["RuntimePlatform"]["CpuArchitecture"] == "X86_64"


# -- network --------------------------------------------------------------------------------------


def test_network_has_every_endpoint_a_private_task_needs() -> None:
    renderer = render(
        "network.yaml",
        {
            "VpcId": "vpc-0123456789abcdef0",
            "SubnetIds": ["subnet-0123456789abcdef0"],
            "RouteTableIds": ["rtb-0123456789abcdef0"],
            "TaskSecurityGroupId": "sg-0123456789abcdef0",
        },
    )
    endpoints = {
        e["Properties"]["ServiceName"].removeprefix(f"com.amazonaws.{REGION}."): e["Properties"]
        for e in renderer.resources("AWS::EC2::VPCEndpoint").values()
    }
    assert set(endpoints) == {"sqs", "logs", "ecr.api", "ecr.dkr", "s3", "monitoring", "sts"}
    assert endpoints.pop("s3")["VpcEndpointType"] == "Gateway"
    for endpoint in endpoints.values():
        assert endpoint["VpcEndpointType"] == "Interface"
        assert endpoint["PrivateDnsEnabled"] is True
    (group,) = renderer.resources("AWS::EC2::SecurityGroup").values()
    (ingress,) = group["Properties"]["SecurityGroupIngress"]
    assert (ingress["FromPort"], ingress["ToPort"]) == (443, 443)
    assert ingress["SourceSecurityGroupId"] == "sg-0123456789abcdef0"


# -- queue ----------------------------------------------------------------------------------------


def test_queue_has_a_redriving_encrypted_dlq() -> None:
    template = load("queue.yaml")
    assert template["Parameters"]["MaxReceiveCount"]["MinValue"] == 3
    assert template["Parameters"]["MaxReceiveCount"]["MaxValue"] == 5
    resources = render("queue.yaml", {"QueueName": "orders"}).resources("AWS::SQS::Queue")
    queue, dlq = resources["Queue"]["Properties"], resources["DeadLetterQueue"]["Properties"]
    assert queue["RedrivePolicy"] == {
        "deadLetterTargetArn": "<DeadLetterQueue.Arn>",
        "maxReceiveCount": "4",
    }
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    # A dead-lettered message keeps its enqueue time: the DLQ must outlive the source's retention.
    source_max = template["Parameters"]["MessageRetentionSeconds"]["MaxValue"]
    assert source_max + 24 * 3600 <= dlq["MessageRetentionPeriod"]
    assert queue["SqsManagedSseEnabled"] is True
    assert dlq["SqsManagedSseEnabled"] is True
    fifo = render("queue.yaml", {"QueueName": "orders", "FifoQueue": "true"})
    names = {r["Properties"]["QueueName"] for r in fifo.resources("AWS::SQS::Queue").values()}
    assert names == {"orders.fifo", "orders-dlq.fifo"}
    kms = render("queue.yaml", {"QueueName": "orders", "KmsMasterKeyId": "alias/orders"})
    assert kms.resources()["Queue"]["Properties"]["KmsMasterKeyId"] == "alias/orders"
    assert "SqsManagedSseEnabled" not in kms.resources()["Queue"]["Properties"]
