"""The release pipeline as CodePipeline runs it: stages, actions, stage conditions and rollback.

`load_pipeline` reads deploy/pipeline.yaml itself (rendered for given parameters by the resolver in
test_deploy_templates.py), so the rehearsal follows every change to the stages, their order, their
actions and their conditions. `Pipeline.release` then plays one execution with CodePipeline's
documented semantics; what the actions and the rules do is left to an `ActionRunner` and a
`RuleChecker` (the rehearsal's world, or a fake in the unit tests).

Semantics, from the CodePipeline user guide ("Configure conditions for a stage", "Configuring stage
rollback", the CloudWatchAlarm rule reference):

- Stages run in order; within a stage, actions run by ascending RunOrder; an action that fails
  fails the stage, and the later run orders do not run.
- A condition is met when all of its rules succeed; when it is not met, its result engages.
  BeforeEntry: FAIL (the execution fails before the stage) or SKIP (the stage is skipped).
  OnSuccess: ROLLBACK. OnFailure: ROLLBACK (without rules, on every failure).
- A rollback re-runs the stage as a new execution with the source revisions, variables and
  artifacts of the stage's last successful execution; the target cannot be a rollback execution,
  and it must have started in the current pipeline structure. Without such an execution there is
  nothing to roll back to: the stage stays failed, and whatever its actions deployed stays.
- CloudWatchAlarm rule: it fails while the alarm is in one of `AlarmStates`; `WaitTime` is "the
  wait time in minutes to allow for a state change before running the rule result".

Undocumented, and read conservatively here (the reading that promises the least safety):

- A CloudWatchAlarm rule is checked when the condition is evaluated; if the alarm is in a watched
  state, the rule waits up to WaitTime for it to leave that state. It does NOT keep watching for
  WaitTime after a first clean check: an OnSuccess "watch" only sees an alarm that is already
  firing when the stage's actions end; one that starts firing later is not looked at.
- A rollback execution re-runs every action of the stage (a test action, such as the judge, too);
  the stage's own conditions are not evaluated for it, and a failed rollback is not rolled back.
- A stage that succeeded but whose OnSuccess condition rolled it back is not a successful
  execution of that stage (it is not a rollback target later).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Protocol, final

from test_deploy_templates import Renderer, render

PIPELINE_TYPE: Final = "AWS::CodePipeline::Pipeline"
VARIABLE: Final = re.compile(r"#\{([A-Za-z0-9_@-]+)\.([A-Za-z0-9_@-]+)\}")


class Result(enum.StrEnum):
    """What a stage execution ended as."""

    SUCCEEDED = "succeeded"
    SKIPPED = "skipped"
    FAILED_AT_ENTRY = "failed at entry"
    FAILED = "failed"  # an action failed and there was nothing to roll back to
    ROLLED_BACK = "rolled back"  # OnFailure/OnSuccess rolled the stage back to its last success


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """One rule of a stage condition."""

    name: str
    provider: str
    configuration: Mapping[str, Any]


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Condition:
    """Rules that must all succeed, and what engages when one does not."""

    result: str
    rules: tuple[Rule, ...]


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Stage:
    """One stage of the rendered pipeline."""

    name: str
    actions: tuple[Mapping[str, Any], ...]  # sorted by RunOrder
    before_entry: tuple[Condition, ...]
    on_success: tuple[Condition, ...]
    on_failure: tuple[Condition, ...]  # a rule-less condition engages on every failure

    def run_orders(self) -> list[list[Mapping[str, Any]]]:
        """The actions grouped by RunOrder, in order."""
        groups: dict[int, list[Mapping[str, Any]]] = {}
        for action in self.actions:
            groups.setdefault(int(action.get("RunOrder", 1)), []).append(action)
        return [groups[order] for order in sorted(groups)]


def _conditions(node: Mapping[str, Any] | None) -> tuple[Condition, ...]:
    if not node:
        return ()
    if "Conditions" not in node:  # OnFailure's short form: {Result: ROLLBACK}
        return (Condition(str(node["Result"]), ()),)
    return tuple(
        Condition(
            str(condition.get("Result", node.get("Result", ""))),
            tuple(
                Rule(
                    str(rule["Name"]),
                    str(rule["RuleTypeId"]["Provider"]),
                    dict(rule.get("Configuration", {})),
                )
                for rule in condition.get("Rules", [])
            ),
        )
        for condition in node["Conditions"]
    )


def load_pipeline(params: Mapping[str, Any]) -> tuple[Renderer, tuple[Stage, ...]]:
    """Render deploy/pipeline.yaml for `params` (only those it declares) and read its stages."""
    declared = render_parameters("pipeline.yaml")
    renderer = render("pipeline.yaml", {k: v for k, v in params.items() if k in declared})
    (pipeline,) = renderer.resources(PIPELINE_TYPE).values()
    stages = tuple(
        Stage(
            name=str(stage["Name"]),
            actions=tuple(sorted(stage["Actions"], key=lambda a: int(a.get("RunOrder", 1)))),
            before_entry=_conditions(stage.get("BeforeEntry")),
            on_success=_conditions(stage.get("OnSuccess")),
            on_failure=_conditions(stage.get("OnFailure")),
        )
        for stage in pipeline["Properties"]["Stages"]
    )
    return renderer, stages


def render_parameters(name: str) -> set[str]:
    """The parameters a template in deploy/ declares."""
    return set(render_template(name).get("Parameters", {}))


def render_template(name: str) -> dict[str, Any]:
    """A template from deploy/, as data."""
    from test_deploy_templates import load  # noqa: PLC0415 (one loader for every module)

    return load(name)


def substitute(text: str, variables: Mapping[str, str]) -> str:
    """Replace CodePipeline's `#{Namespace.Name}` variables; an unknown one is an error.

    Raises:
        KeyError: A variable no earlier action produced (CodePipeline fails the action).
    """

    def replace(match: re.Match[str]) -> str:
        key = f"{match.group(1)}.{match.group(2)}"
        if key not in variables:
            raise KeyError(f"pipeline variable #{{{key}}} is not set")
        return variables[key]

    return VARIABLE.sub(replace, text)


def environment_variables(
    configuration: Mapping[str, Any], variables: Mapping[str, str]
) -> dict[str, str]:
    """A CodeBuild action's `EnvironmentVariables` (a JSON string), variables substituted."""
    raw = configuration.get("EnvironmentVariables")
    if not raw:
        return {}
    entries = json.loads(substitute(str(raw), variables))
    return {str(e["name"]): str(e["value"]) for e in entries}


@final
@dataclasses.dataclass(slots=True)
class Artifacts:
    """What one execution carries from action to action: variables and output files."""

    revision: str
    variables: dict[str, str] = dataclasses.field(default_factory=dict)
    files: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # artifact -> files


class ActionRunner(Protocol):
    """Plays one action; returns whether it succeeded."""

    async def run(self, stage: Stage, action: Mapping[str, Any], artifacts: Artifacts) -> bool: ...


class RuleChecker(Protocol):
    """Checks one condition rule (with the execution's variables); returns whether it succeeded."""

    async def check(self, stage: Stage, rule: Rule, artifacts: Artifacts) -> bool: ...


@final
@dataclasses.dataclass(slots=True)
class StageRun:
    """What happened to one stage in one execution."""

    stage: str
    result: Result
    detail: str = ""
    rollback_target: str | None = None  # the revision rolled back to
    rollback_succeeded: bool | None = None


@final
@dataclasses.dataclass(slots=True)
class Execution:
    """One pipeline execution and what each stage did."""

    revision: str
    stages: list[StageRun] = dataclasses.field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        """Every stage succeeded or was skipped."""
        return all(s.result in {Result.SUCCEEDED, Result.SKIPPED} for s in self.stages)

    def result(self, stage: str) -> Result | None:
        """The result of `stage` in this execution (None: not reached)."""
        return next((s.result for s in self.stages if s.stage == stage), None)

    def describe(self) -> str:
        """`v2: Source succeeded, Build succeeded, Canary rolled back (to v1) ...`."""
        parts = []
        for run in self.stages:
            text = f"{run.stage} {run.result.value}"
            if run.rollback_target is not None:
                text += f" to {run.rollback_target}"
            if run.detail:
                text += f" ({run.detail})"
            parts.append(text)
        return f"{self.revision}: " + ", ".join(parts)


@final
class Pipeline:
    """Plays executions of the pipeline's stages, one at a time (ExecutionMode QUEUED)."""

    def __init__(self, stages: Sequence[Stage], actions: ActionRunner, rules: RuleChecker) -> None:
        """Play `stages` with `actions` and `rules`."""
        self.stages = tuple(stages)
        self.actions = actions
        self.rules = rules
        self.last_success: dict[str, Artifacts] = {}
        self.history: list[Execution] = []

    async def _conditions_met(
        self, stage: Stage, condition: Condition, artifacts: Artifacts
    ) -> bool:
        for rule in condition.rules:
            if not await self.rules.check(stage, rule, artifacts):
                return False
        return True

    async def _run_actions(self, stage: Stage, artifacts: Artifacts) -> str | None:
        """Run the stage's actions; return the name of the one that failed, or None."""
        for group in stage.run_orders():
            for action in group:
                if not await self.actions.run(stage, action, artifacts):
                    return str(action["Name"])
        return None

    async def _roll_back(self, stage: Stage, run: StageRun) -> None:
        target = self.last_success.get(stage.name)
        if target is None:
            run.result = Result.FAILED
            run.detail += "; no earlier successful execution of the stage to roll back to"
            return
        run.result = Result.ROLLED_BACK
        run.rollback_target = target.revision
        # A new (rollback) execution of the stage with the target's variables and artifacts.
        failed = await self._run_actions(stage, dataclasses.replace(target))
        run.rollback_succeeded = failed is None
        if failed is not None:
            run.detail += f"; the rollback execution failed at {failed}"

    async def release(self, revision: str) -> Execution:
        """Play one execution of `revision` from Source to the last stage, or to its end."""
        execution = Execution(revision)
        self.history.append(execution)
        artifacts = Artifacts(revision)
        for stage in self.stages:
            run = StageRun(stage.name, Result.SUCCEEDED)
            execution.stages.append(run)
            entry = [
                c for c in stage.before_entry if not await self._conditions_met(stage, c, artifacts)
            ]
            if entry:
                result = entry[0].result
                run.result = Result.SKIPPED if result == "SKIP" else Result.FAILED_AT_ENTRY
                run.detail = f"BeforeEntry {result}"
                if run.result is Result.SKIPPED:
                    continue
                return execution
            failed = await self._run_actions(stage, artifacts)
            if failed is not None:
                run.detail = f"{failed} failed"
                rollback = [c for c in stage.on_failure if c.result == "ROLLBACK"]
                if rollback and (
                    not rollback[0].rules
                    or not await self._conditions_met(stage, rollback[0], artifacts)
                ):
                    await self._roll_back(stage, run)
                else:
                    run.result = Result.FAILED
                return execution
            unmet = [
                c for c in stage.on_success if not await self._conditions_met(stage, c, artifacts)
            ]
            if unmet:
                run.detail = "OnSuccess condition not met"
                await self._roll_back(stage, run)
                return execution
            self.last_success[stage.name] = dataclasses.replace(
                artifacts,
                variables=dict(artifacts.variables),
                files={k: dict(v) for k, v in artifacts.files.items()},
            )
        return execution
