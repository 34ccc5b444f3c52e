"""Release rehearsal: every release path of deploy/pipeline.yaml, played on LocalStack.

The pipeline is read from deploy/pipeline.yaml itself (tests/rehearsal_pipeline.py) and played
with CodePipeline's documented semantics; its actions and rules act on a world of real processes
(tests/rehearsal_world.py): buildspec commands run in bash, the judge runs exactly as the judge
buildspec runs it against LocalStack's CloudWatch, service stacks become `qworker run` worker
processes per role with the counts the template gives, traffic flows through a LocalStack queue
with a dead-letter queue, and alarm states come from deploy/alarms.yaml evaluated with the
metric-math model on the data the workers published.

Each scenario asserts which version each role runs at the end, and that nothing was lost: every
message sent either succeeded or is in the dead-letter queue with a reason.

The first tests play the semantics alone on a scripted world (fast, exact); the scenarios need
LocalStack and moto and take a few tens of seconds each (`pytest -m rehearsal`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any, Final

import pytest
from rehearsal_pipeline import (
    Artifacts,
    Condition,
    Execution,
    Pipeline,
    Result,
    Rule,
    Stage,
    load_pipeline,
)
from rehearsal_world import MINUTE_S, Lost, World, expected_canary_share
from test_deploy_templates import PIPELINE_PARAMS

from qworker.settings import DeploymentRole

PRIMARY: Final = DeploymentRole.PRIMARY
CANARY: Final = DeploymentRole.CANARY

# Judge flags passed through the pipeline's JudgeArgs. Timing: looks every 2 s, a bake of tens of
# seconds. Sample: a few hundred canary first attempts and margins wide enough for that sample.
# The rest of the command line is the buildspec's own.
JUDGE_TIMING: Final = (
    "--interval-s 2 --min-bake-s 10 --reach-after-s 12 --silent-after-s 75"
    " --share-min-messages 60 --latency-min-messages 60 --latency-stats fallback"
    " --latency-fallback-min-minutes 1"
)
JUDGE_SAMPLE: Final = (
    "--min-canary-messages 100 --min-primary-messages 100 --abs-margin 0.04 --rel-margin 2"
)
DEFECT_SAMPLE: Final = (
    "--min-canary-messages 100 --min-primary-messages 100 --abs-margin 0.015 --rel-margin 1"
)
RATE: Final = 80.0  # messages per second: about 27 per alarm minute for a 11% canary


# -- the semantics alone --------------------------------------------------------------------------


def _stage(name: str, *actions: str, **conditions: tuple[Condition, ...]) -> Stage:
    return Stage(
        name=name,
        actions=tuple(
            {"Name": a, "RunOrder": i + 1, "ActionTypeId": {"Category": "Deploy"}}
            for i, a in enumerate(actions)
        ),
        before_entry=conditions.get("before_entry", ()),
        on_success=conditions.get("on_success", ()),
        on_failure=conditions.get("on_failure", ()),
    )


@dataclasses.dataclass
class Script:
    """A world where actions fail for the revisions listed, and rules fail while `alarm`."""

    fails: dict[str, set[str]] = dataclasses.field(default_factory=dict)  # action -> revisions
    alarm: bool = False
    ran: list[str] = dataclasses.field(default_factory=list)

    async def run(self, stage: Stage, action: Mapping[str, Any], artifacts: Artifacts) -> bool:
        assert action in stage.actions
        self.ran.append(f"{action['Name']}:{artifacts.revision}")
        return artifacts.revision not in self.fails.get(str(action["Name"]), set())

    async def check(self, stage: Stage, rule: Rule, artifacts: Artifacts) -> bool:
        assert rule in (r for c in (*stage.before_entry, *stage.on_success) for r in c.rules)
        assert artifacts.revision
        return not self.alarm


ROLLBACK: Final = (Condition("ROLLBACK", ()),)
WATCH: Final = (Condition("ROLLBACK", (Rule("watch", "CloudWatchAlarm", {}),)),)


async def test_a_failed_stage_rolls_back_to_its_last_success_only() -> None:
    script = Script(fails={"Deploy": {"v2"}})
    pipeline = Pipeline([_stage("S", "Deploy", on_failure=ROLLBACK)], script, script)
    first = await pipeline.release("v2")  # never succeeded before: nothing to roll back to
    assert first.result("S") is Result.FAILED
    assert (await pipeline.release("v1")).succeeded
    second = await pipeline.release("v2")
    assert second.result("S") is Result.ROLLED_BACK
    assert second.stages[0].rollback_target == "v1"
    assert script.ran[-1] == "Deploy:v1"  # the rollback execution re-ran the stage on v1


async def test_on_success_rollback_and_entry_results() -> None:
    script = Script()
    gate = (Condition("FAIL", (Rule("quiet", "CloudWatchAlarm", {}),)),)
    skip = (Condition("SKIP", (Rule("quiet", "CloudWatchAlarm", {}),)),)
    pipeline = Pipeline(
        [
            _stage("A", "DeployA", before_entry=skip),
            _stage("B", "DeployB", on_success=WATCH),
            _stage("C", "DeployC", before_entry=gate),
        ],
        script,
        script,
    )
    assert (await pipeline.release("v1")).succeeded
    script.alarm = True
    execution = await pipeline.release("v2")
    assert [s.result for s in execution.stages] == [Result.SKIPPED, Result.ROLLED_BACK]
    assert execution.stages[1].rollback_target == "v1"
    assert "DeployC:v2" not in script.ran
    assert not execution.succeeded
    # A rolled-back stage is no rollback target: the next rollback still goes to v1.
    again = await pipeline.release("v3")
    assert again.stages[1].rollback_target == "v1"


async def test_the_pipeline_is_read_from_its_definition() -> None:
    _, stages = load_pipeline({**PIPELINE_PARAMS, "ServiceName": "svc", "JudgeArgs": "--x"})
    names = [s.name for s in stages]
    assert names[:2] == ["Source", "Build"]
    assert names[-1] == "Primary"
    providers = {a["ActionTypeId"]["Provider"] for s in stages for a in s.actions}
    assert {"CloudFormation", "CodeBuild"} <= providers
    for stage in stages:
        orders = [int(a.get("RunOrder", 1)) for a in stage.actions]
        assert orders == sorted(orders)


# -- the rehearsal on LocalStack ------------------------------------------------------------------


@dataclasses.dataclass
class Rehearsal:
    """One service's pipeline and world."""

    world: World
    pipeline: Pipeline

    async def release(self, revision: str) -> Execution:
        """Play one pipeline execution of `revision`."""
        self.world.say(f"=== release {revision}")
        execution = await self.pipeline.release(revision)
        self.world.say(f"=== {execution.describe()}")
        return execution

    def versions(self) -> tuple[str | None, str | None]:
        """(primary, canary): the code each role runs now."""
        return self.world.running(PRIMARY), self.world.running(CANARY)


@contextlib.asynccontextmanager
async def rehearse(
    localstack_server: Any,
    moto_server: Any,
    tmp_path: Path,
    *,
    rate: float = RATE,
    judge_args: str = f"{JUDGE_TIMING} {JUDGE_SAMPLE}",
    **params: str,
) -> AsyncIterator[Rehearsal]:
    """A fresh service (its own names, queue and metrics) with the pipeline's parameters."""
    service = f"rh-{uuid.uuid4().hex[:8]}"
    given: dict[str, Any] = {
        **PIPELINE_PARAMS,
        "ServiceName": service,
        "HandlerModule": "handlers.drill",
        "QueueName": f"{service}-q",
        "DeadLetterQueueName": f"{service}-q-dlq",
        # Its own namespace: LocalStack scans every datapoint of a metric name in a namespace
        # for each query, and the session's earlier services would pile up in a shared one.
        "MetricsNamespace": f"QWorker/{service}",
        "MaxBakeSeconds": "300",
        "JudgeArgs": judge_args,
        "PostDeployWatchMinutes": "2",
        "AlarmClearWaitMinutes": "10",
        **params,
    }
    renderer, stages = load_pipeline(given)
    # ECS is played by the rehearsal, and LocalStack has no ECS API for the judge's
    # DescribeServices: the share those running counts and pollers give is passed through
    # JudgeArgs (the CLI documents that the flag wins over the ECS flags).
    share = expected_canary_share(stages)
    renderer, stages = load_pipeline(
        {**given, "JudgeArgs": f"{given['JudgeArgs']} --expected-canary-share {share:.4f}"}
    )
    world = World(
        localstack_server.endpoint_url,
        moto_server.endpoint_url,
        tmp_path,
        service=service,
        rate=rate,
    )
    world.pipeline_renderer = renderer
    try:
        await world.open(
            {k: renderer.params[k] for k in ("ServiceName", "QueueName") if k in renderer.params}
            | {
                k: renderer.params[k]
                for k in ("AlarmNamePrefix", "MetricsNamespace")
                if k in renderer.params
            }
        )
        await world.start_traffic()
        yield Rehearsal(world, Pipeline(stages, world, world))
    finally:
        await world.close()


def assert_nothing_lost(lost: Lost) -> None:
    """Every message sent succeeded or is in the DLQ with a reason; nothing is left behind."""
    assert lost.sent > 0
    assert lost.missing == ()
    assert lost.unexplained_dead_letters == []
    assert lost.left_on_queue == 0
    assert lost.succeeded + len(lost.dead_lettered) >= lost.sent


async def _bootstrap(rehearsal: Rehearsal, revision: str = "v1") -> None:
    execution = await rehearsal.release(revision)
    assert execution.succeeded, execution.describe()
    assert rehearsal.versions() == (revision, revision)


pytestmark_scenario = [
    pytest.mark.rehearsal,
    pytest.mark.integration,
    pytest.mark.localstack,
    pytest.mark.moto,
    pytest.mark.slow,
    pytest.mark.timeout(480),
]


def scenario(function: Any) -> Any:
    """Mark a rehearsal scenario."""
    for mark in pytestmark_scenario:
        function = mark(function)
    return function


@scenario
async def test_first_release_ever_goes_to_the_primary_and_the_canary_follows(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    async with rehearse(localstack_server, moto_server, tmp_path) as rehearsal:
        execution = await rehearsal.release("v1")
        assert execution.succeeded, execution.describe()
        assert execution.result("Canary") is Result.SKIPPED  # nothing to compare with yet
        assert rehearsal.versions() == ("v1", "v1")
        lost = await rehearsal.world.finish()
    assert_nothing_lost(lost)


@scenario
async def test_a_healthy_release_is_promoted(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    async with rehearse(localstack_server, moto_server, tmp_path) as rehearsal:
        await _bootstrap(rehearsal)
        execution = await rehearsal.release("v2")
        assert execution.succeeded, execution.describe()
        assert execution.result("Canary") is Result.SUCCEEDED
        assert rehearsal.versions() == ("v2", "v2")
        lost = await rehearsal.world.finish()
    assert_nothing_lost(lost)


@scenario
async def test_a_defective_release_is_rolled_back(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    # The defect fails JPY and KRW payments: about 4 points of all first attempts, so the margin
    # is the drill's (1.5 points), not the sample-sized 4 points the healthy scenarios use, and the
    # judge must FAIL it for its failure rate, not end inconclusive.
    async with rehearse(
        localstack_server, moto_server, tmp_path, judge_args=f"{JUDGE_TIMING} {DEFECT_SAMPLE}"
    ) as rehearsal:
        await _bootstrap(rehearsal)
        execution = await rehearsal.release("v2-defect")
        assert not execution.succeeded
        assert execution.result("Canary") in {Result.FAILED, Result.ROLLED_BACK}
        assert execution.result("Primary") is None  # never reached
        assert rehearsal.versions() == ("v1", "v1")
        story = "\n".join(rehearsal.world.outputs)
        lost = await rehearsal.world.finish()
    assert "canary judgement: FAIL" in story, story[-3000:]
    verdict = story.split("canary judgement: FAIL", 1)[1]
    assert "  - canary first-attempt non-success rate" in verdict.split("reasons:", 1)[1]
    assert_nothing_lost(lost)
    assert lost.dead_lettered == {}  # a failing canary hands its failures back


@scenario
async def test_a_crash_looping_canary_then_its_fix(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    async with rehearse(localstack_server, moto_server, tmp_path) as rehearsal:
        await _bootstrap(rehearsal)
        crash = await rehearsal.release("v2-crash")
        assert not crash.succeeded
        assert crash.result("Primary") is None
        assert rehearsal.versions() == ("v1", "v1")
        fix = await rehearsal.release("v3")
        assert fix.succeeded, fix.describe()  # the entry gates do not block the fix
        assert rehearsal.versions() == ("v3", "v3")
        lost = await rehearsal.world.finish()
    assert_nothing_lost(lost)


@scenario
async def test_passes_canary_fails_primary_then_a_bad_release_returns_to_the_primary_version(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    # A watch long enough for the fleet alarm (3 of 5 one-minute periods) to fire in it.
    async with rehearse(
        localstack_server, moto_server, tmp_path, PostDeployWatchMinutes="5"
    ) as rehearsal:
        await _bootstrap(rehearsal)
        scale = await rehearsal.release("v2-scale")  # fine as a canary, bad at the primary's load
        assert scale.result("Canary") is Result.SUCCEEDED
        assert scale.result("Primary") is Result.ROLLED_BACK
        assert rehearsal.versions() == ("v1", "v1")
        bad = await rehearsal.release("v2-defect")
        assert not bad.succeeded
        # The canary goes back to what the primary runs, not to v2-scale (the last version that
        # passed the Canary stage).
        assert rehearsal.versions() == ("v1", "v1")
        lost = await rehearsal.world.finish()
    assert_nothing_lost(lost)


@scenario
async def test_a_low_traffic_service_is_told_at_once(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    # Five messages a second, and the judge's own margins: the bake they need cannot fit.
    async with rehearse(
        localstack_server, moto_server, tmp_path, rate=5.0, judge_args=JUDGE_TIMING
    ) as rehearsal:
        await _bootstrap(rehearsal)
        execution = await rehearsal.release("v2")
        assert execution.result("Canary") is not Result.SUCCEEDED
        assert rehearsal.versions() == ("v1", "v1")
        story = "\n".join(rehearsal.world.outputs)
        lost = await rehearsal.world.finish()
    assert "cannot reach N" in story
    assert_nothing_lost(lost)


@scenario
async def test_an_alarm_already_firing_stops_the_release_before_anything_changes(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    async with rehearse(
        localstack_server, moto_server, tmp_path, AlarmClearWaitMinutes="2"
    ) as rehearsal:
        await _bootstrap(rehearsal)
        world = rehearsal.world
        world.set_outage([CANARY], 0.6)  # a bad canary host: the canary alone fails (A/A)
        assert world.alarms is not None
        name = next(n for n in world.alarms.names if n.endswith("-canary-vs-primary"))
        assert await world.wait_for_alarm(name, "ALARM", 20 * MINUTE_S)  # 20 alarm minutes
        assert world.alarms.state(name, time.time()) == "ALARM"
        execution = await rehearsal.release("v2")
        assert not execution.succeeded
        assert execution.stages[-1].result is Result.FAILED_AT_ENTRY
        assert rehearsal.versions() == ("v1", "v1")
        world.set_outage([CANARY], None)
        lost = await world.finish()
    assert_nothing_lost(lost)


@scenario
async def test_a_release_during_a_shared_downstream_outage(
    localstack_server: Any, moto_server: Any, tmp_path: Path
) -> None:
    async with rehearse(localstack_server, moto_server, tmp_path) as rehearsal:
        await _bootstrap(rehearsal)
        world = rehearsal.world
        world.set_outage([PRIMARY, CANARY], 0.3)

        def end_outage(action: str) -> None:
            if action.endswith("JudgeCanary"):
                world.set_outage([PRIMARY, CANARY], None)

        world.on_action_done = end_outage
        execution = await rehearsal.release("v2")
        # A good canary is not failed by what both roles suffer alike.
        assert execution.result("Canary") is Result.SUCCEEDED, execution.describe()
        assert execution.succeeded, execution.describe()
        assert rehearsal.versions() == ("v2", "v2")
        lost = await world.finish()
    assert_nothing_lost(lost)
