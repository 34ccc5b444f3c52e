"""The release rehearsal's world: what the pipeline's actions and rules act on, on LocalStack.

- Source: a revision is a code version of `handlers.drill` (`v1`, `v2`, `v2-defect`, ...); its
  commit id is derived from the name.
- Build and the judge: CodeBuild projects run their buildspec's commands in bash, with the
  project's and the action's environment variables, as CodeBuild does. Commands that need what
  is not here (the image registry, docker, the package install, the unit tests) are skipped and
  logged; every other command runs as written, the judge's `qworker canary judge ...` included,
  against LocalStack's CloudWatch. The image tag the buildspec computes is registered as an image
  of the revision's code.
- CloudFormation deploys of deploy/service.yaml: the stack's parameters are the template
  configuration (image-params.json) with the action's ParameterOverrides on top. Stacks are real
  CloudFormation stacks on moto's server (LocalStack's CloudFormation has no UsePreviousTemplate),
  of a stand-in template with service.yaml's exact Parameters, so the release scripts' own
  DescribeStacks/UpdateStack calls see and change them. "ECS" is played here: whenever a stack's
  parameters differ from what its tasks run, the rendered service.yaml gives the role, the task
  count (DesiredCount, or the scalable target's MinCapacity) and the container's QWORKER_*
  environment, and each task becomes a real `qworker run handlers.drill` process on the
  rehearsal's LocalStack queue. The rolling deploy (MinimumHealthyPercent 100) starts the new
  tasks before stopping the old ones; the deployment circuit breaker fails it after three tasks
  that exit before they have settled, and keeps the old tasks: the stack update is rolled back to
  its previous parameters and the action fails.
- Alarms: `AlarmModel` evaluates deploy/alarms.yaml's definitions with tests/metric_math.py on the
  data the workers published to LocalStack. The same alarms exist in LocalStack's CloudWatch, and
  their state is set from the model every second, so a script's DescribeAlarms reads the model.
- Stage condition rules: CloudWatchAlarm (the model's state) and VariableCheck.

Time. The judge runs in real seconds (its bake windows come from the pipeline's parameters). The
alarms cannot: their periods are CloudWatch minutes, and their windows (3 of 5 one-minute
periods, 2 of 3 five-minute periods) would make every scenario last a quarter of an hour. The
alarm model and the stage conditions' WaitTime therefore run on an accelerated clock, one
"alarm minute" = `MINUTE_S` seconds, everywhere the same: metric periods, evaluation windows and
wait times keep their proportions, and traffic per alarm minute is what the thresholds see.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, final

import boto3
import botocore.exceptions
import yaml  # type: ignore[import-untyped]
from metric_math import AlarmState, Series, evaluate, evaluate_alarm
from rehearsal_pipeline import Artifacts, Rule, Stage, environment_variables, substitute
from test_deploy_templates import ACCOUNT, Renderer, load

from qworker.dead_letter import REJECT_ATTRIBUTES
from qworker.drill.audit import drain, queue_depth
from qworker.drill.config import DrillError
from qworker.drill.traffic import Producer
from qworker.drill.workers import WorkerProcess
from qworker.local import create_queue_with_dlq, dead_letter_name
from qworker.settings import DeploymentRole, QWorkerSettings
from qworker.transport import SqsTransport
from qworker.worker import open_sqs_client

ROOT: Final = Path(__file__).resolve().parent.parent
REGION: Final = "us-east-1"
HANDLER_MODULE: Final = "handlers.drill"
MINUTE_S: Final = 3
"""Wall seconds of one alarm minute (module docstring); scripts get it as RELEASE_MINUTE_S."""
MAX_RECEIVE_COUNT: Final = 5
VISIBILITY_TIMEOUT_S: Final = 10
SETTLE_S: Final = 2.0
"""How long a new task must stay up after it is ready before ECS counts it as started."""
CIRCUIT_BREAKER_FAILURES: Final = 3
"""ECS's deployment circuit breaker threshold for a small service (its documented minimum)."""
METRICS_INTERVAL_S: Final = 1
SKIPPED_COMMANDS: Final = re.compile(r"\b(docker|aws ecr|pip install|pytest)\b")
"""Buildspec commands that need the image registry, docker, or the network: not played here."""
REASON_ATTRIBUTE: Final = REJECT_ATTRIBUTES[0]
VARIABLE_FREE: Final = re.compile(r"#\{[^}]+\}")
GET_ATT_ARN: Final = re.compile(r"<([A-Za-z0-9]+)\.Arn>")


class RehearsalError(RuntimeError):
    """The rehearsal met something it cannot play (an unknown action type, a missing name...)."""


def commit_of(revision: str) -> str:
    """The (made-up, stable) commit id of a revision."""
    return hashlib.sha1(revision.encode(), usedforsecurity=False).hexdigest()


def _dimensions(metric: Mapping[str, Any]) -> list[dict[str, str]]:
    return [
        {"Name": str(d["Name"]), "Value": str(d["Value"])} for d in metric.get("Dimensions", [])
    ]


# -- the alarms -----------------------------------------------------------------------------------


@final
class AlarmModel:
    """The alarms of deploy/alarms.yaml, evaluated on the metrics in LocalStack's CloudWatch."""

    def __init__(self, renderer: Renderer, cloudwatch: Any, *, epoch: float) -> None:
        """Evaluate `renderer`'s alarms on `cloudwatch`'s data; alarm minutes count from `epoch`."""
        self.cloudwatch = cloudwatch
        self.epoch = float(int(epoch))
        self.metric_alarms: dict[str, Mapping[str, Any]] = {}
        self.composites: dict[str, str] = {}
        for resource in renderer.resources("AWS::CloudWatch::Alarm").values():
            properties = resource["Properties"]
            self.metric_alarms[str(properties["AlarmName"])] = properties
        for resource in renderer.resources("AWS::CloudWatch::CompositeAlarm").values():
            properties = resource["Properties"]
            self.composites[str(properties["AlarmName"])] = str(properties["AlarmRule"])

    @property
    def names(self) -> set[str]:
        """Every alarm name the template defines."""
        return set(self.metric_alarms) | set(self.composites)

    def _window(self, name: str, at: float) -> tuple[float, int]:
        """(start, periods): the evaluation window of metric alarm `name` that ends with the
        alarm period containing `at`."""
        alarm = self.metric_alarms[name]
        period = next(int(q["MetricStat"]["Period"]) for q in alarm["Metrics"] if "MetricStat" in q)
        period_s = period // 60 * MINUTE_S
        periods = int(alarm["EvaluationPeriods"])
        current = int((at - self.epoch) // period_s)
        return self.epoch + (current + 1 - periods) * period_s, periods

    def _fetch(self, wanted: Sequence[tuple[Mapping[str, Any], float, int]]) -> list[Series]:
        """The series of each (MetricStat, window start, periods), one GetMetricData call per
        window (its queries side by side, each answered as if it were alone)."""
        windows: dict[tuple[int, float, int], list[int]] = {}
        for index, (stat, start, periods) in enumerate(wanted):
            period_s = int(stat["Period"]) // 60 * MINUTE_S
            windows.setdefault((period_s, start, periods), []).append(index)
        found: list[Series] = [()] * len(wanted)
        for (period_s, start, periods), indexes in windows.items():
            began = datetime.fromtimestamp(start, UTC)
            queries = [
                {
                    "Id": f"m{index}",
                    "MetricStat": {
                        "Metric": {
                            "Namespace": wanted[index][0]["Metric"]["Namespace"],
                            "MetricName": wanted[index][0]["Metric"]["MetricName"],
                            "Dimensions": _dimensions(wanted[index][0]["Metric"]),
                        },
                        "Period": period_s,
                        "Stat": wanted[index][0]["Stat"],
                    },
                }
                for index in indexes
            ]
            values: dict[int, list[float | None]] = {index: [None] * periods for index in indexes}
            token: str | None = None
            while True:
                response = self.cloudwatch.get_metric_data(
                    MetricDataQueries=queries,
                    StartTime=began,
                    EndTime=began + timedelta(seconds=period_s * periods),
                    **({"NextToken": token} if token else {}),
                )
                for result in response["MetricDataResults"]:
                    series = values[int(str(result["Id"])[1:])]
                    for stamp, value in zip(result["Timestamps"], result["Values"], strict=True):
                        slot = round((stamp.timestamp() - start) / period_s)
                        if 0 <= slot < periods:
                            series[slot] = float(value)
                token = response.get("NextToken")
                if not token:
                    break
            for index in indexes:
                found[index] = tuple(values[index])
        return found

    def _evaluate(self, name: str, fetched: Mapping[str, Series], periods: int) -> AlarmState:
        """Metric alarm `name`'s state from its MetricStat series (by query id)."""
        alarm = self.metric_alarms[name]
        env: dict[str, Series] = {}
        returned: Series | None = None
        for query in alarm["Metrics"]:  # in order: an expression names only earlier ids
            if "MetricStat" in query:
                env[query["Id"]] = fetched[query["Id"]]
            else:
                value = evaluate(str(query["Expression"]), env, periods)
                if not isinstance(value, tuple):
                    raise RehearsalError(f"{name}: {query['Id']} is not a time series")
                env[query["Id"]] = value
            if query.get("ReturnData", True):
                returned = env[query["Id"]]
        if returned is None:
            raise RehearsalError(f"{name} returns no data")
        return evaluate_alarm(
            returned,
            threshold=float(alarm["Threshold"]),
            comparison=str(alarm["ComparisonOperator"]),
            evaluation_periods=periods,
            datapoints_to_alarm=int(alarm.get("DatapointsToAlarm", periods)),
            treat_missing=str(alarm.get("TreatMissingData", "missing")),
        )

    def _metric_states(self, names: Sequence[str], at: float) -> dict[str, AlarmState]:
        """The states of metric alarms `names` after the alarm period that contains `at`."""
        wanted: list[tuple[Mapping[str, Any], float, int]] = []
        owners: list[tuple[str, str]] = []  # (alarm, query id) of each wanted series
        windows: dict[str, int] = {}
        for name in names:
            start, periods = self._window(name, at)
            windows[name] = periods
            for query in self.metric_alarms[name]["Metrics"]:
                if "MetricStat" in query:
                    wanted.append((query["MetricStat"], start, periods))
                    owners.append((name, str(query["Id"])))
        fetched: dict[str, dict[str, Series]] = {name: {} for name in names}
        for (name, query_id), series in zip(owners, self._fetch(wanted), strict=True):
            fetched[name][query_id] = series
        return {name: self._evaluate(name, fetched[name], windows[name]) for name in names}

    def metric_state(self, name: str, at: float) -> AlarmState:
        """The state of a metric alarm after the alarm period that contains `at`."""
        return self._metric_states([name], at)[name]

    def states(self, at: float) -> dict[str, AlarmState]:
        """Every alarm's state at `at`: the metric alarms' data in one GetMetricData call per
        window, and the composites from those states."""
        states = self._metric_states(sorted(self.metric_alarms), at)
        for name in self.composites:
            states[name] = self._composite_state(name, states)
        return states

    def state(self, name: str, at: float) -> AlarmState:
        """The state of any alarm the template defines.

        Raises:
            RehearsalError: No alarm of that name (on AWS, a rule on it would never see it).
        """
        if name in self.metric_alarms:
            return self.metric_state(name, at)
        if name in self.composites:
            return self._composite_state(name, self._metric_states(sorted(self.metric_alarms), at))
        raise RehearsalError(f"no alarm named {name!r} in deploy/alarms.yaml")

    def _composite_state(self, name: str, metric_states: Mapping[str, AlarmState]) -> AlarmState:
        def member(alarm: str) -> AlarmState:
            if alarm in metric_states:
                return metric_states[alarm]
            if alarm in self.composites:
                return self._composite_state(alarm, metric_states)
            raise RehearsalError(f"no alarm named {alarm!r} in deploy/alarms.yaml")

        return self._composite(self.composites[name], member)

    @staticmethod
    def _composite(rule: str, member_state: Callable[[str], AlarmState]) -> AlarmState:
        def member(match: re.Match[str]) -> str:
            return str(member_state(match.group(2)) == match.group(1)).upper()

        text = re.sub(r'\b(ALARM|OK)\("([^"]+)"\)', member, rule)
        tokens = re.findall(r"TRUE|FALSE|AND|OR|NOT|\(|\)", text)
        expression = " ".join({"TRUE": "True", "FALSE": "False"}.get(t, t.lower()) for t in tokens)
        if not re.fullmatch(r"(True|False|and|or|not|\(|\)| )*", expression):
            raise RehearsalError(f"cannot read the composite rule {rule!r}")
        result = eval(expression, {"__builtins__": {}})  # noqa: S307 (booleans and and/or/not only)
        return "ALARM" if result else "OK"


# -- workers and stacks ---------------------------------------------------------------------------


@final
@dataclasses.dataclass(slots=True)
class Stack:
    """A deploy/service.yaml stack: its parameters, status and running tasks."""

    name: str
    role: DeploymentRole
    status: str = "NONE"
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    version: str | None = None  # the code its tasks run
    tasks: list[WorkerProcess] = dataclasses.field(default_factory=list)
    deployments: list[str] = dataclasses.field(default_factory=list)  # versions, in order


@final
@dataclasses.dataclass(frozen=True, slots=True)
class Lost:
    """Where every message went."""

    sent: int
    succeeded: int
    dead_lettered: dict[str, str]  # event id -> reject reason, or the redrive policy's ("": none)
    left_on_queue: int
    missing: tuple[str, ...]  # sent, never succeeded, not in the DLQ

    @property
    def unexplained_dead_letters(self) -> list[str]:
        """Dead-lettered events without a reason (moved by the redrive policy, not rejected)."""
        return [event for event, reason in self.dead_lettered.items() if not reason]


@final
class World:
    """LocalStack, a queue with its DLQ, the service stacks and their tasks, traffic and alarms."""

    def __init__(
        self, endpoint_url: str, stacks_url: str, run_dir: Path, *, service: str, rate: float
    ) -> None:
        """Describe the world (LocalStack at `endpoint_url`, stacks on `stacks_url`)."""
        self.endpoint_url = endpoint_url
        self.stacks_url = stacks_url
        self.run_dir = run_dir
        self.service = service
        self.queue = f"{service}-q"
        self.rate = rate
        self.ledger = run_dir / "ledger.jsonl"
        self.stacks: dict[str, Stack] = {}
        self.images: dict[str, str] = {}  # image tag -> revision
        self.log: list[str] = []
        self.failures: list[str] = []  # background tasks that failed
        self.outputs: list[str] = []  # every CodeBuild action's output, in order
        self.outage_files = {role: run_dir / f"outage-{role.value}" for role in DeploymentRole}
        self.alarms: AlarmModel | None = None
        self.alarm_states: dict[str, str] = {}  # as last set in LocalStack's CloudWatch
        self._alarms_synced = asyncio.Condition()
        self.pipeline_renderer: Renderer | None = None
        self.on_action_done: Callable[[str], None] | None = None
        self._client: Any = None
        self._exit = contextlib.AsyncExitStack()
        self._url = ""
        self._dlq_url = ""
        self._producer: Producer | None = None
        self._stop = asyncio.Event()
        self._background: list[asyncio.Task[None]] = []
        self._cloudwatch: Any = None
        self._cloudformation: Any = None
        self._labels = Counter[str]()
        self._tasks: list[WorkerProcess] = []  # every task started, to stop them all at the end
        self._locks: dict[str, asyncio.Lock] = {}
        self._stand_in = json.dumps(_stand_in_template())

    # -- life cycle -------------------------------------------------------------------------------

    def _boto(self, service: str, endpoint_url: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=endpoint_url,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",  # noqa: S106 (a local server's dummy credentials)
        )

    async def open(self, alarm_params: Mapping[str, Any]) -> None:
        """Create the queue and its DLQ and the alarms; start SQS's metric and the alarm sync."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._client = await self._exit.enter_async_context(
            open_sqs_client(
                QWorkerSettings(region=REGION), endpoint_url=self.endpoint_url, local=True
            )
        )
        self._url = await create_queue_with_dlq(
            self._client,
            self.queue,
            max_receive_count=MAX_RECEIVE_COUNT,
            visibility_timeout_s=VISIBILITY_TIMEOUT_S,
        )
        dlq = await self._client.get_queue_url(QueueName=dead_letter_name(self.queue))
        self._dlq_url = str(dlq["QueueUrl"])
        self._cloudwatch = self._boto("cloudwatch", self.endpoint_url)
        self._cloudformation = self._boto("cloudformation", self.stacks_url)
        declared = set(render_template_parameters("alarms.yaml"))
        given = {k: v for k, v in alarm_params.items() if k in declared}
        renderer = render("alarms.yaml", given)
        self.alarms = AlarmModel(renderer, self._cloudwatch, epoch=time.time())
        await asyncio.to_thread(_create_alarms, self._cloudwatch, renderer)
        self._watch(asyncio.create_task(self._publish_backlog()), "publish_backlog")
        self._watch(asyncio.create_task(self._sync_alarms()), "sync_alarms")
        self._watch(asyncio.create_task(self._reconcile_loop()), "reconcile_loop")

    def _watch(self, task: asyncio.Task[None], what: str) -> None:
        """Keep a background task, and say so when it fails (the scenario then fails too)."""

        def done(finished: asyncio.Task[None]) -> None:
            if not finished.cancelled() and (error := finished.exception()) is not None:
                self.failures.append(f"{what}: {error!r}")
                self.say(f"BACKGROUND FAILURE {what}: {error!r}")

        task.add_done_callback(done)
        self._background.append(task)

    def say(self, text: str) -> None:
        """Log a line of the rehearsal (printed with `pytest -s`)."""
        line = f"{time.strftime('%H:%M:%S')} {text}"
        self.log.append(line)
        print(f"rehearsal {self.service}: {line}", file=sys.stderr, flush=True)  # noqa: T201 (the story)

    async def start_traffic(self, rate: float | None = None) -> None:
        """Send the service's traffic (drill events) until `finish`."""
        self._producer = Producer(rate=rate or self.rate, run_id=self.service, seed=7)
        transport = await SqsTransport.open(self._client, url=self._url)
        self._watch(asyncio.create_task(self._producer.run(transport, self._stop)), "traffic")

    def set_outage(self, roles: Sequence[DeploymentRole], rate: float | None) -> None:
        """Start (rate) or end (None) a downstream outage seen by the tasks of `roles`."""
        for role in roles:
            path = self.outage_files[role]
            if rate is None:
                path.unlink(missing_ok=True)
            else:
                path.write_text(f"{rate}\n")
        self.say(f"outage for {', '.join(r.value for r in roles)}: {rate or 'over'}")

    async def finish(self, drain_timeout_s: float = 90.0) -> Lost:
        """Stop the traffic, drain the queue, stop every task, and account for every message."""
        self._stop.set()
        for role in DeploymentRole:
            self.outage_files[role].unlink(missing_ok=True)
        for task in self._background:
            with contextlib.suppress(Exception):
                await task
        left = await drain(self._client, self._url, drain_timeout_s)
        await self.stop_all()
        if self.failures:
            raise RehearsalError(f"background work failed: {self.failures}")
        return await self._account(left)

    async def stop_all(self) -> None:
        """Stop every task ever started (a rollout cut short may have started some)."""
        await asyncio.gather(*(t.stop() for t in self._tasks))

    async def close(self) -> None:
        """Stop everything this world started."""
        self._stop.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self.stop_all()
        await self._exit.aclose()
        for client in (self._cloudwatch, self._cloudformation):
            if client is not None:
                client.close()

    async def _every(self, seconds: float) -> bool:
        """Wait `seconds` or until the world stops; return whether it goes on."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return not self._stop.is_set()

    async def _publish_backlog(self) -> None:
        """Play SQS's own metric: ApproximateNumberOfMessagesVisible, every second."""
        while True:
            visible = await queue_depth(self._client, self._url)
            await asyncio.to_thread(
                self._cloudwatch.put_metric_data,
                Namespace="AWS/SQS",
                MetricData=[
                    {
                        "MetricName": "ApproximateNumberOfMessagesVisible",
                        "Dimensions": [{"Name": "QueueName", "Value": self.queue}],
                        "Timestamp": datetime.now(UTC),
                        "Value": float(visible),
                    }
                ],
            )
            if not await self._every(1.0):
                return

    async def _sync_alarms(self) -> None:
        """Set every alarm's state in LocalStack to the model's, every second.

        Only a change is written: LocalStack does not evaluate metric-math alarms, so nothing else
        sets their states; it re-evaluates a composite when a member changes, so after any member
        is written the composites are written again (the model's states win).
        """
        alarms = self.alarms
        assert alarms is not None
        order = [*sorted(alarms.metric_alarms), *sorted(alarms.composites)]
        states = self.alarm_states
        while True:
            model = await asyncio.to_thread(alarms.states, time.time())
            member_written = False
            for name in order:
                state = model[name]
                if states.get(name) == state and not (member_written and name in alarms.composites):
                    continue
                member_written = member_written or name in alarms.metric_alarms
                await asyncio.to_thread(
                    self._cloudwatch.set_alarm_state,
                    AlarmName=name,
                    StateValue=state,
                    StateReason="the rehearsal's metric-math model",
                )
                if states.get(name) != state and (name in states or state == "ALARM"):
                    self.say(f"alarm {name}: {state}")
                states[name] = state
            async with self._alarms_synced:
                self._alarms_synced.notify_all()
            if not await self._every(1.0):
                return

    async def wait_for_alarm(self, name: str, state: str, timeout_s: float) -> bool:
        """Wait until alarm `name` is set to `state` in CloudWatch; False: not within
        `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s), self._alarms_synced:
                await self._alarms_synced.wait_for(lambda: self.alarm_states.get(name) == state)
        return self.alarm_states.get(name) == state

    async def _account(self, left: int) -> Lost:
        succeeded: set[str] = set()
        with contextlib.suppress(FileNotFoundError):
            for line in self.ledger.read_text().splitlines():
                record = json.loads(line)
                if record["outcome"] == "succeeded":
                    succeeded.add(str(record["event_id"]))
        dead: dict[str, str] = {}
        while True:
            response = await self._client.receive_message(
                QueueUrl=self._dlq_url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                AttributeNames=["ApproximateReceiveCount"],
                WaitTimeSeconds=1,
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            for message in messages:
                event = str(json.loads(message["Body"]).get("event_id", message["MessageId"]))
                attributes = message.get("MessageAttributes", {})
                reason = str(attributes.get(REASON_ATTRIBUTE, {}).get("StringValue", ""))
                # Moved by the redrive policy: SQS gives no reason, but the receive count it kept
                # says it (this receive is one more).
                receives = int(message.get("Attributes", {}).get("ApproximateReceiveCount", 0)) - 1
                if not reason and receives >= MAX_RECEIVE_COUNT:
                    reason = f"redrive policy: received {receives} times"
                dead[event] = reason
                await self._client.delete_message(
                    QueueUrl=self._dlq_url, ReceiptHandle=message["ReceiptHandle"]
                )
        sent = self._producer.sent if self._producer is not None else []
        missing = tuple(e for e in sent if e not in succeeded and e not in dead)
        return Lost(
            sent=len(sent),
            succeeded=len(succeeded & set(sent)),
            dead_lettered=dead,
            left_on_queue=left,
            missing=missing,
        )

    # -- what runs where --------------------------------------------------------------------------

    def running(self, role: DeploymentRole) -> str | None:
        """The code version the tasks of `role` run (None: no such stack, or no tasks)."""
        for stack in self.stacks.values():
            if stack.role is role and stack.tasks:
                return stack.version
        return None

    def stack_of(self, role: DeploymentRole) -> Stack | None:
        """The stack of `role`, if one was ever created."""
        return next((s for s in self.stacks.values() if s.role is role), None)

    # -- actions (rehearsal_pipeline.ActionRunner) ------------------------------------------------

    async def run(self, stage: Stage, action: Mapping[str, Any], artifacts: Artifacts) -> bool:
        """Play one action of the pipeline.

        Raises:
            RehearsalError: An action type the rehearsal cannot play.
        """
        kind = action["ActionTypeId"]
        category, provider = str(kind["Category"]), str(kind["Provider"])
        name = f"{stage.name}.{action['Name']}"
        self.say(f"{name} for {artifacts.revision}: starts")
        if category == "Source":
            ok = self._source(action, artifacts)
        elif provider == "CodeBuild":
            ok = await self._codebuild(action, artifacts)
        elif provider == "CloudFormation":
            ok = await self._cloudformation_action(action, artifacts)
        elif category == "Approval":
            self.say(f"{name}: approved (the rehearsal plays an approving person)")
            ok = True
        else:
            raise RehearsalError(f"{name}: the rehearsal cannot play {category}/{provider} actions")
        self.say(f"{name} for {artifacts.revision}: {'succeeded' if ok else 'FAILED'}")
        if self.on_action_done is not None:
            self.on_action_done(name)
        return ok

    def _source(self, action: Mapping[str, Any], artifacts: Artifacts) -> bool:
        namespace = action.get("Namespace")
        if namespace:
            configuration = action.get("Configuration", {})
            artifacts.variables[f"{namespace}.CommitId"] = commit_of(artifacts.revision)
            artifacts.variables[f"{namespace}.BranchName"] = str(
                configuration.get("BranchName", "")
            )
        for output in action.get("OutputArtifacts", []):
            artifacts.files.setdefault(str(output["Name"]), {})
        return True

    def _project(self, action: Mapping[str, Any]) -> Mapping[str, Any]:
        assert self.pipeline_renderer is not None
        reference = str(action["Configuration"]["ProjectName"]).strip("<>")
        projects = self.pipeline_renderer.resources("AWS::CodeBuild::Project")
        if reference not in projects:
            raise RehearsalError(f"no CodeBuild project {reference!r} in the pipeline")
        properties: Mapping[str, Any] = projects[reference]["Properties"]
        return properties

    def _codebuild_env(
        self, project: Mapping[str, Any], action: Mapping[str, Any], artifacts: Artifacts
    ) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("QWORKER_", "AWS_", "DRILL_"))
        }
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(ROOT),
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",  # noqa: S106 (a local server's dummy credentials)
            AWS_REGION=REGION,
            AWS_DEFAULT_REGION=REGION,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            # What the build's role and network reach on AWS: here LocalStack, and moto for stacks.
            AWS_ENDPOINT_URL=self.endpoint_url,
            AWS_ENDPOINT_URL_CLOUDFORMATION=self.stacks_url,
            QWORKER_ENDPOINT_URL=self.endpoint_url,
            CODEBUILD_SRC_DIR=str(ROOT),
            RELEASE_MINUTE_S=str(MINUTE_S),
        )
        for variable in project.get("Environment", {}).get("EnvironmentVariables", []):
            # The template renderer leaves Fn::GetAtt as <Resource.Attribute>: an IAM role's ARN.
            env[str(variable["Name"])] = GET_ATT_ARN.sub(
                rf"arn:aws:iam::{ACCOUNT}:role/\1", str(variable["Value"])
            )
        env.update(environment_variables(action.get("Configuration", {}), artifacts.variables))
        return env

    def _build_script(self, spec: Mapping[str, Any], spec_path: str, exports: Path) -> str:
        """Bash for the buildspec's phases, with CodeBuild's flow: a failed build still runs
        post_build (CODEBUILD_BUILD_SUCCEEDING=0); a failed pre_build ends the build."""
        lines = ["export CODEBUILD_BUILD_SUCCEEDING=1", "failed_phase=''"]
        phases = spec.get("phases", {})
        for phase in ("pre_build", "build", "post_build"):
            gate = (
                '[ -z "$failed_phase" ] || [ "$failed_phase" = build ]'
                if phase == "post_build"
                else '[ -z "$failed_phase" ]'
            )
            for command in phases.get(phase, {}).get("commands", []):
                if SKIPPED_COMMANDS.search(command):
                    self.say(f"{spec_path} {phase}: skipped `{command.splitlines()[0][:70]}`")
                    continue
                lines.append(
                    f"if {gate}; then\n{{\n{command.rstrip()}\n}} || "
                    f'{{ [ -n "$failed_phase" ] || failed_phase={phase}; '
                    "export CODEBUILD_BUILD_SUCCEEDING=0; }\nfi"
                )
        exported = [str(v) for v in spec.get("env", {}).get("exported-variables", [])]
        dump = (
            "import json, os, sys; "
            "json.dump({k: os.environ.get(k, '') for k in sys.argv[2:]}, open(sys.argv[1], 'w'))"
        )
        lines.append(
            " ".join(
                shlex.quote(part) for part in [sys.executable, "-c", dump, str(exports), *exported]
            )
        )
        lines.append('[ -z "$failed_phase" ]')
        return "\n".join(lines) + "\n"

    async def _codebuild(self, action: Mapping[str, Any], artifacts: Artifacts) -> bool:
        project = self._project(action)
        spec_path = str(project["Source"]["BuildSpec"])
        spec = yaml.safe_load((ROOT / spec_path).read_text())
        env = self._codebuild_env(project, action, artifacts)
        work = Path(tempfile.mkdtemp(prefix="build-", dir=self.run_dir))
        source = _source_artifact(work)
        exports = work / ".exported.json"
        script = self._build_script(spec, spec_path, exports)
        log = work / "build.log"
        with log.open("wb") as out:
            process = await asyncio.create_subprocess_exec(
                "bash",
                "-c",
                script,
                cwd=source,  # CODEBUILD_SRC_DIR: the source artifact
                env={**env, "CODEBUILD_SRC_DIR": str(source), "REHEARSAL_WORK_DIR": str(work)},
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
            )
            code = await process.wait()
        output = log.read_text(errors="replace")
        self.outputs.append(output)
        tail = "\n    ".join(output.splitlines()[-8:])
        self.say(f"{spec_path} exited {code}:\n    {tail}")
        # A script's UpdateStack completes on AWS once ECS is stable; moto completes at once, so
        # the stacks are settled here before the action counts as done.
        for name in list(self.stacks):
            await self.reconcile(name)
        namespace = action.get("Namespace")
        if namespace and exports.exists():
            for key, value in json.loads(exports.read_text()).items():
                artifacts.variables[f"{namespace}.{key}"] = value
        if code != 0:
            return False
        for output in action.get("OutputArtifacts", []):
            files = artifacts.files.setdefault(str(output["Name"]), {})
            for pattern in spec.get("artifacts", {}).get("files", []):
                for path in source.glob(str(pattern)):
                    files[path.name] = path.read_text()
        for files in artifacts.files.values():
            if "image-params.json" in files:
                tag = json.loads(files["image-params.json"])["Parameters"]["ImageTag"]
                self.images[str(tag)] = artifacts.revision
        return True

    # -- CloudFormation: service stacks, and "ECS" ------------------------------------------------

    def _stack_params(self, action: Mapping[str, Any], artifacts: Artifacts) -> dict[str, Any]:
        configuration = action["Configuration"]
        params: dict[str, Any] = {}
        template_configuration = configuration.get("TemplateConfiguration")
        if template_configuration:
            artifact, file = str(template_configuration).split("::", 1)
            content = artifacts.files.get(artifact, {}).get(Path(file).name)
            if content is None:
                raise RehearsalError(f"{template_configuration} was not produced")
            params.update(json.loads(content).get("Parameters", {}))
        overrides = configuration.get("ParameterOverrides")
        if overrides:
            params.update(json.loads(substitute(str(overrides), artifacts.variables)))
        return params

    def _describe(self, name: str) -> dict[str, Any] | None:
        try:
            (stack,) = self._cloudformation.describe_stacks(StackName=name)["Stacks"]
        except botocore.exceptions.ClientError:
            return None
        described: dict[str, Any] = stack
        return described

    def _put_stack(self, name: str, params: Mapping[str, Any]) -> None:
        parameters = [
            {"ParameterKey": k, "ParameterValue": ",".join(v) if isinstance(v, list) else str(v)}
            for k, v in params.items()
        ]
        if self._describe(name) is None:
            self._cloudformation.create_stack(
                StackName=name, TemplateBody=self._stand_in, Parameters=parameters
            )
        else:
            self._cloudformation.update_stack(
                StackName=name, TemplateBody=self._stand_in, Parameters=parameters
            )

    async def _cloudformation_action(self, action: Mapping[str, Any], artifacts: Artifacts) -> bool:
        configuration = action["Configuration"]
        if configuration.get("ActionMode") != "CREATE_UPDATE":
            raise RehearsalError(f"ActionMode {configuration.get('ActionMode')} is not played")
        template = str(configuration["TemplatePath"]).split("::", 1)[1]
        if Path(template).name != "service.yaml":
            raise RehearsalError(f"the rehearsal deploys service stacks only, not {template}")
        name = str(configuration["StackName"])
        params = self._stack_params(action, artifacts)
        try:
            # Every parameter, defaults included, as CloudFormation records them (moto keeps only
            # the given ones, and a later UsePreviousValue of a defaulted one would fail there).
            params = render("service.yaml", params).params
        except KeyError as error:
            self.say(f"stack {name}: CloudFormation refuses the parameters: {error}")
            return False
        stack = self.stacks.get(name)
        if stack is not None and stack.status == "ROLLBACK_COMPLETE":
            self.say(f"stack {name} is in ROLLBACK_COMPLETE: it must be deleted before an update")
            return False
        previous = self._describe(name)
        await asyncio.to_thread(self._put_stack, name, params)
        if await self.reconcile(name):
            return True
        # CloudFormation rolls the update back: the stack keeps its previous parameters.
        if previous is not None:
            old = {p["ParameterKey"]: p["ParameterValue"] for p in previous.get("Parameters", [])}
            await asyncio.to_thread(self._put_stack, name, old)
        return False

    async def _reconcile_loop(self) -> None:
        """ECS's side: a stack whose parameters changed (a script's UpdateStack) is rolled out."""
        while await self._every(1.0):
            for name in list(self.stacks):
                lock = self._locks.setdefault(name, asyncio.Lock())
                if not lock.locked():
                    await self.reconcile(name)

    async def reconcile(self, name: str) -> bool:
        """Make the tasks of stack `name` run what its parameters say; False: the deploy failed."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            described = await asyncio.to_thread(self._describe, name)
            if described is None:
                return False
            declared = render_template_parameters("service.yaml")
            params = {
                p["ParameterKey"]: p["ParameterValue"]
                for p in described.get("Parameters", [])
                if p["ParameterKey"] in declared
            }
            rendered = render("service.yaml", params)
            role = DeploymentRole(rendered.params["DeploymentRole"])
            stack = self.stacks.setdefault(name, Stack(name, role))
            if stack.tasks and rendered.params == stack.params:
                return True
            if stack.status.startswith("FAILED:") and stack.status == f"FAILED:{rendered.params}":
                return False  # the same deployment already failed; ECS does not retry it
            if stack.tasks:
                changed = sorted(
                    k for k in rendered.params if rendered.params[k] != stack.params.get(k)
                )
                self.say(f"stack {name}: parameters changed ({', '.join(changed)}): rolling out")
            return await self._roll_out(stack, rendered)

    async def _roll_out(self, stack: Stack, rendered: Renderer) -> bool:
        tag = str(rendered.params["ImageTag"])
        revision = self.images.get(tag)
        if revision is None:
            self.say(f"stack {stack.name}: image {tag} was never built: the tasks cannot pull it")
            stack.status = f"FAILED:{rendered.params}"
            return False
        count = self.task_count(rendered)
        new: list[WorkerProcess] = []
        failures = 0
        while len(new) < count and failures < CIRCUIT_BREAKER_FAILURES:
            wanted = min(count - len(new), CIRCUIT_BREAKER_FAILURES - failures)
            started = await asyncio.gather(
                *(self._start_task(stack.role, revision, rendered) for _ in range(wanted))
            )
            new.extend(task for task in started if task is not None)
            failures += sum(task is None for task in started)
        if len(new) < count:
            await asyncio.gather(*(t.stop() for t in new))
            if not stack.tasks:
                stack.status = "ROLLBACK_COMPLETE"
            else:
                stack.status = f"FAILED:{rendered.params}"
            self.say(
                f"stack {stack.name}: the ECS circuit breaker failed the deployment of {revision} "
                f"after {failures} failed tasks; the old tasks keep running"
            )
            return False
        old, stack.tasks = stack.tasks, new
        await asyncio.gather(*(t.stop() for t in old))
        stack.status = "UPDATE_COMPLETE" if old else "CREATE_COMPLETE"
        stack.params = dict(rendered.params)
        stack.version = revision
        stack.deployments.append(revision)
        self.say(f"stack {stack.name}: {stack.role.value} runs {revision} on {count} task(s)")
        return True

    def _environment(
        self, rendered: Renderer, role: DeploymentRole, revision: str, label: str
    ) -> dict[str, str]:
        (definition,) = rendered.resources("AWS::ECS::TaskDefinition").values()
        (container,) = definition["Properties"]["ContainerDefinitions"]
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("QWORKER_", "AWS_", "DRILL_"))
        }
        for variable in container.get("Environment", []):
            env[str(variable["Name"])] = str(variable["Value"])
        # The queue URL the template builds is AWS's; here the same queue is LocalStack's.
        env.pop("QWORKER_QUEUE_URL", None)
        env.update(
            PYTHONPATH=str(ROOT),
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",  # noqa: S106 (a local server's dummy credentials)
            AWS_REGION=REGION,
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            QWORKER_ENDPOINT_URL=self.endpoint_url,
            QWORKER_QUEUE_NAME=self.queue,
            QWORKER_METRICS_PUBLISH_CLOUDWATCH="true",
            QWORKER_METRICS_INTERVAL_S=str(METRICS_INTERVAL_S),
            QWORKER_HEALTH_FILE=str(self.run_dir / f"{label}.health.json"),
            QWORKER_HEALTH_INTERVAL_S="1",
            QWORKER_LOG_FORMAT="json",
            DRILL_LEDGER=str(self.ledger),
            DRILL_BEHAVIOUR=revision,
            DRILL_OUTAGE_FILE=str(self.outage_files[role]),
        )
        return env

    @staticmethod
    def task_count(rendered: Renderer) -> int:
        (service,) = rendered.resources("AWS::ECS::Service").values()
        desired = service["Properties"].get("DesiredCount")
        if desired is not None:
            return int(desired)
        targets = rendered.resources("AWS::ApplicationAutoScaling::ScalableTarget")
        if not targets:
            return 1  # ECS's default for a new service without a DesiredCount
        (target,) = targets.values()
        return int(target["Properties"]["MinCapacity"])

    async def _start_task(
        self, role: DeploymentRole, revision: str, rendered: Renderer
    ) -> WorkerProcess | None:
        """Start one task; return it once settled, or None when it exited first."""
        self._labels[role.value] += 1
        label = f"{role.value}-{revision}-{self._labels[role.value]}"
        task = WorkerProcess(role, revision, label=label, run_dir=self.run_dir)
        self._tasks.append(task)
        await task.start(HANDLER_MODULE, self._environment(rendered, role, revision, label))
        try:
            await task.wait_ready()
        except DrillError as error:
            self.say(f"task {label} did not start: {str(error).splitlines()[0]}")
            await task.stop()
            return None
        with contextlib.suppress(TimeoutError):
            code = await asyncio.wait_for(task.wait_exit(), SETTLE_S)
            self.say(f"task {label} exited with {code} before it settled")
            await task.stop()
            return None
        return task

    # -- rules (rehearsal_pipeline.RuleChecker) ---------------------------------------------------

    async def check(self, stage: Stage, rule: Rule, artifacts: Artifacts) -> bool:
        """Check a CloudWatchAlarm or VariableCheck rule.

        Raises:
            RehearsalError: A rule type the rehearsal cannot play.
        """
        if rule.provider == "VariableCheck":
            return self._variable_check(stage, rule, artifacts)
        if rule.provider != "CloudWatchAlarm":
            raise RehearsalError(f"{stage.name}.{rule.name}: {rule.provider} rules are not played")
        assert self.alarms is not None
        name = str(rule.configuration["AlarmName"])
        states = str(rule.configuration.get("AlarmStates", "ALARM"))
        watched = {s.strip() for s in states.split(",")}
        wait_s = float(rule.configuration.get("WaitTime", 0)) * MINUTE_S
        deadline = time.time() + wait_s
        while True:
            state = await asyncio.to_thread(self.alarms.state, name, time.time())
            if state not in watched:
                self.say(f"{stage.name}.{rule.name}: {name} is {state}: the rule succeeds")
                return True
            if time.time() >= deadline:
                self.say(f"{stage.name}.{rule.name}: {name} still {state}: the rule FAILS")
                return False
            await asyncio.sleep(min(1.0, max(0.0, deadline - time.time())))

    def _variable_check(self, stage: Stage, rule: Rule, artifacts: Artifacts) -> bool:
        configuration = rule.configuration
        try:
            variable = substitute(str(configuration["Variable"]), artifacts.variables)
        except KeyError as error:
            self.say(f"{stage.name}.{rule.name}: {error}: the rule FAILS")
            return False
        value = str(configuration.get("Value", ""))
        operator = str(configuration.get("Operator", "EQ"))
        outcomes = {
            "EQ": variable == value,
            "NE": variable != value,
            "CONTAINS": value in variable,
            "MATCHES": re.search(value, variable) is not None,
        }
        if operator not in outcomes:
            raise RehearsalError(f"{stage.name}.{rule.name}: VariableCheck operator {operator}")
        ok = outcomes[operator]
        self.say(f"{stage.name}.{rule.name}: {variable!r} {operator} {value!r}: {ok}")
        return ok


@functools.cache
def _template(name: str) -> dict[str, Any]:
    """A template from deploy/, parsed once per session (rendering never changes it)."""
    return load(name)


def render(name: str, params: Mapping[str, Any]) -> Renderer:
    """`deploy/<name>` prepared for `params` (test_deploy_templates.render, on a parsed copy)."""
    return Renderer(_template(name), params)


def render_template_parameters(name: str) -> dict[str, Any]:
    """The Parameters section of a template in deploy/."""
    parameters: dict[str, Any] = _template(name).get("Parameters", {})
    return parameters


def _stand_in_template() -> dict[str, Any]:
    """service.yaml's Parameters over one resource that does nothing (the stacks' stand-in)."""
    parameters = {}
    for name, spec in render_template_parameters("service.yaml").items():
        kind = str(spec["Type"])
        if kind.startswith("List<"):
            kind = "CommaDelimitedList"
        elif kind.startswith("AWS::"):
            kind = "String"
        kept = {
            k: v for k, v in spec.items() if k in {"Default", "AllowedValues", "AllowedPattern"}
        }
        parameters[name] = {**kept, "Type": kind}
    return {
        "AWSTemplateFormatVersion": "2010-09-09",
        "Parameters": parameters,
        "Resources": {"Nothing": {"Type": "AWS::CloudFormation::WaitConditionHandle"}},
    }


def _create_alarms(cloudwatch: Any, renderer: Renderer) -> None:
    """Create the template's alarms in LocalStack (their state comes from the model)."""
    for resource in renderer.resources("AWS::CloudWatch::Alarm").values():
        properties = resource["Properties"]
        keys = (
            "AlarmName",
            "Metrics",
            "ComparisonOperator",
            "Threshold",
            "EvaluationPeriods",
            "DatapointsToAlarm",
            "TreatMissingData",
        )
        arguments = {k: properties[k] for k in keys if k in properties}
        arguments["Threshold"] = float(arguments["Threshold"])
        arguments["EvaluationPeriods"] = int(arguments["EvaluationPeriods"])
        if "DatapointsToAlarm" in arguments:
            arguments["DatapointsToAlarm"] = int(arguments["DatapointsToAlarm"])
        for metric in arguments["Metrics"]:
            if "MetricStat" in metric:
                metric["MetricStat"]["Period"] = int(metric["MetricStat"]["Period"])
        cloudwatch.put_metric_alarm(**arguments)
    for resource in renderer.resources("AWS::CloudWatch::CompositeAlarm").values():
        properties = resource["Properties"]
        cloudwatch.put_composite_alarm(
            AlarmName=properties["AlarmName"], AlarmRule=properties["AlarmRule"]
        )


def service_capacity(params: Mapping[str, Any]) -> tuple[DeploymentRole, int]:
    """(role, tasks x pollers) a service stack with these parameters runs when it starts."""
    rendered = render("service.yaml", params)
    (definition,) = rendered.resources("AWS::ECS::TaskDefinition").values()
    (container,) = definition["Properties"]["ContainerDefinitions"]
    env = {str(v["Name"]): str(v["Value"]) for v in container.get("Environment", [])}
    pollers = int(env.get("QWORKER_POLLERS", QWorkerSettings().pollers))
    role = DeploymentRole(rendered.params["DeploymentRole"])
    return role, World.task_count(rendered) * pollers


def expected_canary_share(stages: Sequence[Stage]) -> float:
    """The canary's share of the pollers when both services run their starting task counts."""
    capacity: dict[DeploymentRole, int] = {}
    for stage in stages:
        for action in stage.actions:
            if action["ActionTypeId"]["Provider"] != "CloudFormation":
                continue
            overrides = json.loads(
                VARIABLE_FREE.sub("x", str(action["Configuration"]["ParameterOverrides"]))
            )
            role, pollers = service_capacity({**overrides, "ImageTag": "x"})
            capacity[role] = pollers
    return capacity[DeploymentRole.CANARY] / sum(capacity.values())


def _source_artifact(work: Path) -> Path:
    """A build's own source directory: the checkout's entries linked, so what a buildspec writes
    at the top (image-params.json) stays with that build (rehearsals may run side by side)."""
    source = work / "src"
    source.mkdir()
    for entry in ROOT.iterdir():
        (source / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    return source
