"""EMF metrics: documents checked against the EMF specification and against the outcomes that
happened, the stdout writer, the periodic emitter, and PutMetricData to a real (moto) server."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import get_session

from qworker import emf, emf_document
from qworker.cloudwatch import CloudWatchPublisher, metric_data, open_cloudwatch_client
from qworker.emf import (
    MAX_DIMENSIONS_PER_SET,
    MAX_METRICS_PER_DOCUMENT,
    MAX_VALUES_PER_METRIC,
    EmfStdoutSink,
    MetricsAggregator,
    build_document,
)
from qworker.exceptions import ConfigError
from qworker.metrics import COUNT_METRICS, DIMENSION_SETS, METRICS, Dimension, MetricName
from qworker.observability import MetricsEmitter, build, publish_cloudwatch
from qworker.outcome import Outcome, OutcomeRecord
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.testing import FakeQueueTransport, FakeSqs, consumer_for

# Units CloudWatch accepts (PutMetricData / EMF MetricDefinition.Unit).
CLOUDWATCH_UNITS = {
    *("Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes"),
    *("Terabytes", "Bits", "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count"),
    *("Bytes/Second", "Kilobytes/Second", "Megabytes/Second", "Gigabytes/Second"),
    *("Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second"),
    *("Gigabits/Second", "Terabits/Second", "Count/Second", "None"),
}
PROPERTIES = ("Version", "TaskId", "MessageIds", "FailedMessageIds")
CANARY = Identity(service="orders-svc", role="canary", version="v2", task_id="task-123")


def check_emf(document: Mapping[str, Any]) -> None:
    """Assert `document` is valid EMF (CloudWatch_Embedded_Metric_Format_Specification.html)."""
    aws = document["_aws"]
    assert set(aws) == {"Timestamp", "CloudWatchMetrics"}
    assert isinstance(aws["Timestamp"], int)
    assert abs(aws["Timestamp"] - time.time() * 1000) < 14 * 86_400_000  # CloudWatch's window
    for directive in aws["CloudWatchMetrics"]:
        assert set(directive) == {"Namespace", "Dimensions", "Metrics"}
        assert isinstance(directive["Namespace"], str)
        assert directive["Namespace"]
        for dimension_set in directive["Dimensions"]:
            assert 0 < len(dimension_set) <= MAX_DIMENSIONS_PER_SET
            for name in dimension_set:
                assert isinstance(document[name], str)  # a dimension is a top-level string
                assert name not in PROPERTIES
        assert len(directive["Metrics"]) <= MAX_METRICS_PER_DOCUMENT
        for metric in directive["Metrics"]:
            assert set(metric) <= {"Name", "Unit", "StorageResolution"}
            assert metric["Unit"] in CLOUDWATCH_UNITS
            check_value(document[metric["Name"]])


def check_value(value: object) -> None:
    if isinstance(value, dict):
        assert set(value) == {"Values", "Counts"}
        assert len(value["Values"]) == len(value["Counts"]) <= MAX_VALUES_PER_METRIC
        assert all(c > 0 for c in value["Counts"])
        return
    values = value if isinstance(value, list) else [value]
    assert 0 < len(values) <= MAX_VALUES_PER_METRIC
    assert all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def samples(value: object) -> tuple[float, float]:
    """(count, sum) of a metric member: a number, an array, or a histogram."""
    if isinstance(value, dict):
        pairs = zip(value["Values"], value["Counts"], strict=True)
        return sum(value["Counts"]), sum(v * c for v, c in pairs)
    values = value if isinstance(value, list) else [value]
    return len(values), sum(values)


def parse(out: str) -> list[dict[str, Any]]:
    lines = [line for line in out.splitlines() if line.strip()]
    documents = [json.loads(line) for line in lines]
    for document in documents:
        check_emf(document)
    return documents


def record(
    outcome: Outcome,
    *,
    queue: str = "q",
    receive_count: int = 1,
    ms: float = 5.0,
    role: str = "canary",
) -> OutcomeRecord:
    return OutcomeRecord(
        outcome=outcome,
        queue=queue,
        handler="h",
        role=role,
        version="v2",
        message_id=f"m-{outcome}-{receive_count}-{ms}",
        receive_count=receive_count,
        duration_s=ms / 1000,
        message_age_s=1.0,
    )


def document_of(aggregator: MetricsAggregator, namespace: str = "QWorker") -> list[dict[str, Any]]:
    snapshot = aggregator.snapshot()
    return [
        build_document(
            a,
            namespace=namespace,
            service="orders-svc",
            timestamp_ms=snapshot.timestamp_ms,
            properties={"Version": "v2"},
        )
        for a in snapshot.aggregates
    ]


class Ticks:
    """An injectable sleep that returns when the test says so."""

    def __init__(self) -> None:
        self._tokens: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, _: float) -> None:
        await self._tokens.get()

    def tick(self) -> None:
        self._tokens.put_nowait(None)


# -- documents ----------------------------------------------------------------------------------


def test_document_follows_the_spec_and_the_schema() -> None:
    aggregator = MetricsAggregator(role="canary")
    for outcome in Outcome:
        aggregator.record(record(outcome))
    (document,) = document_of(aggregator)
    check_emf(document)
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    assert directive["Namespace"] == "QWorker"
    assert directive["Dimensions"] == [[d.value for d in s] for s in DIMENSION_SETS]
    assert {m["Name"]: m["Unit"] for m in directive["Metrics"]} == {
        name.value: spec.unit.value for name, spec in METRICS.items()
    }
    assert document["Service"] == "orders-svc"
    assert document["DeploymentRole"] == "canary"
    assert document["Queue"] == "q"
    assert document["Version"] == "v2"  # a property, never a dimension
    assert document["Processed"] == 4  # every outcome but released
    assert document["Released"] == 1
    assert document["FirstAttemptProcessed"] == 4
    assert document["FirstAttemptFailed"] == 1
    assert document["Quarantined"] == 0
    assert samples(document["ProcessingTime"]) == (4, 20.0)
    assert document["FailedMessageIds"] == ["m-failed-1-5.0", "m-rejected-1-5.0"]


def test_retries_count_as_processed_but_not_as_first_attempts() -> None:
    aggregator = MetricsAggregator(role="canary")
    aggregator.record(record(Outcome.FAILED, receive_count=2))
    aggregator.record(record(Outcome.SUCCEEDED, receive_count=3))
    (document,) = document_of(aggregator)
    assert document["Processed"] == 2
    assert document["FirstAttemptProcessed"] == 0
    assert document["FirstAttemptFailed"] == 0


def test_idle_keys_get_explicit_zeros_and_no_value_metrics() -> None:
    aggregator = MetricsAggregator(role="primary", queues=["orders"])
    (first,) = document_of(aggregator)
    aggregator.record(record(Outcome.SUCCEEDED, queue="orders", role="primary"))
    document_of(aggregator)
    (idle,) = document_of(aggregator)  # a key stays known once seen
    for document in (first, idle):
        check_emf(document)
        assert all(document[spec.name.value] == 0 for spec in COUNT_METRICS)
        assert "ProcessingTime" not in document
        names = {m["Name"] for m in document["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
        assert names == {spec.name.value for spec in COUNT_METRICS}


def test_one_document_per_queue() -> None:
    aggregator = MetricsAggregator(role="canary")
    aggregator.record(record(Outcome.SUCCEEDED, queue="a"))
    aggregator.record(record(Outcome.FAILED, queue="b"))
    documents = document_of(aggregator)
    assert [(d["Queue"], d["Succeeded"], d["Failed"]) for d in documents] == [
        ("a", 1, 0),
        ("b", 0, 1),
    ]


@pytest.mark.parametrize("count", [1, 99, 100, 101, 5_000])
def test_values_never_exceed_the_emf_limit_and_keep_count_and_sum(count: int) -> None:
    aggregator = MetricsAggregator(role="canary")
    for i in range(count):
        aggregator.record(record(Outcome.SUCCEEDED, ms=float(i % 997)))
    (document,) = document_of(aggregator)
    check_emf(document)
    expected_sum = sum(float(i % 997) for i in range(count))
    n, total = samples(document["ProcessingTime"])
    assert n == pytest.approx(count)
    assert total == pytest.approx(expected_sum, rel=1e-6, abs=1e-6)
    if count > MAX_VALUES_PER_METRIC:
        histogram = document["ProcessingTime"]
        assert min(histogram["Values"]) == 0.0  # the minimum and the maximum are exact
        assert max(histogram["Values"]) == max(float(i % 997) for i in range(count))
        assert histogram == document["ProcessingTime"]
    # Equal values collapse into one histogram entry: every message is 1 s old.
    ages = document["MessageAge"]
    assert (
        ages == 1000.0
        or ages == [1000.0] * count
        or ages == {"Values": [1000.0], "Counts": [count]}
    )


def test_reservoir_keeps_memory_bounded_and_totals_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emf, "MAX_HELD_SAMPLES", 300)
    aggregator = MetricsAggregator(role="canary")
    for i in range(2_000):
        aggregator.record(record(Outcome.SUCCEEDED, ms=float(i)))
    (aggregate,) = aggregator.snapshot().aggregates
    dist = aggregate.values[MetricName.PROCESSING_TIME]
    assert (dist.count, dist.minimum, dist.maximum) == (2_000, 0.0, 1999.0)
    assert dist.total == pytest.approx(sum(range(2_000)))
    assert dist.counts is not None
    assert sum(dist.counts) == pytest.approx(2_000)
    assert len(dist.values) <= MAX_VALUES_PER_METRIC


def test_missing_namespace_raises() -> None:
    aggregator = MetricsAggregator(role="canary", queues=["q"])
    with pytest.raises(ConfigError, match="namespace"):
        document_of(aggregator, namespace="")


def test_metric_count_limit_is_enforced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emf_document, "MAX_METRICS_PER_DOCUMENT", 3)
    with pytest.raises(ValueError, match="at most 3 metrics"):
        document_of(MetricsAggregator(role="canary", queues=["q"]))


# -- the stdout sink ----------------------------------------------------------------------------


async def test_stdout_sink_writes_the_document_through_the_library_and_flushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Stdout(io.StringIO):
        flushes = 0

        def flush(self) -> None:
            self.flushes += 1

    stdout = Stdout()
    monkeypatch.setattr("sys.stdout", stdout)
    aggregator = MetricsAggregator(role="canary", queues=["idle"])
    for i in range(150):  # a histogram, which the library has no call for
        aggregator.record(record(Outcome.SUCCEEDED, queue="busy", ms=float(i)))
    aggregator.record(record(Outcome.FAILED, queue="one", ms=7.0))  # a single value
    documents = document_of(aggregator)
    await EmfStdoutSink().write(documents)
    assert parse(stdout.getvalue()) == documents  # one line per document, as built
    assert stdout.getvalue().count("\n") == len(documents) == 3
    assert stdout.flushes >= 1


# -- with a real consumer -----------------------------------------------------------------------


async def send_numbers(queue: FakeQueueTransport, count: int) -> None:
    for i in range(count):
        await queue.send(json.dumps({"n": i}))


async def test_documents_match_the_outcomes_of_a_real_consumer(
    capsys: pytest.CaptureFixture[str],
) -> None:
    sqs = FakeSqs()
    queue = sqs.create_queue("orders", dead_letter="orders-dlq", max_receive_count=5)
    await send_numbers(queue, 40)
    await queue.send("not json")  # rejected
    attempts: Counter[int] = Counter()

    async def handle(body: dict[str, int]) -> None:
        attempts[body["n"]] += 1
        if body["n"] % 4 == 0 and attempts[body["n"]] == 1:
            raise RuntimeError("first attempt fails")

    seen: list[OutcomeRecord] = []

    class Keep:
        def record(self, r: OutcomeRecord) -> None:
            seen.append(r)

    aggregator = MetricsAggregator(role="canary", queues=["orders"])
    emitter = MetricsEmitter(
        aggregator, EmfStdoutSink(), namespace="QWorker", identity=CANARY, interval_s=10
    )
    consumer = consumer_for(
        queue,
        handle,
        identity=CANARY,
        sinks=[aggregator, Keep()],
        dead_letter=sqs.queue("orders-dlq"),
    )
    await consumer.run_until_empty()
    await emitter.emit()

    (document,) = parse(capsys.readouterr().out)
    stats = consumer.statistics()
    by_outcome = Counter(r.outcome for r in seen)
    assert document["Succeeded"] == stats.acked == by_outcome[Outcome.SUCCEEDED] == 40
    assert document["Failed"] == stats.failed == 10
    assert document["Rejected"] == stats.rejected == 1
    assert document["Processed"] == 51
    assert document["FirstAttemptProcessed"] == 41
    assert document["FirstAttemptFailed"] == 10
    assert samples(document["ProcessingTime"])[0] == 51
    assert samples(document["ProcessingTime"])[1] == pytest.approx(
        sum(r.duration_s * 1000 for r in seen), abs=0.1
    )
    assert (document["Service"], document["DeploymentRole"]) == ("orders-svc", "canary")
    assert (document["Version"], document["TaskId"]) == ("v2", "task-123")


async def test_emitter_writes_every_interval_with_zeros_while_idle(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ticks = Ticks()
    aggregator = MetricsAggregator(role="primary")
    emitter = MetricsEmitter(
        aggregator,
        EmfStdoutSink(),
        namespace="QWorker",
        identity=Identity(service="svc"),
        interval_s=10,
        sleep=ticks.sleep,
    )
    emitter.queues = lambda: ["orders"]
    stop = asyncio.Event()
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        group.create_task(emitter.run(stop))
        ticks.tick()
        await emitter.wait_emitted(1)
        aggregator.record(record(Outcome.SUCCEEDED, queue="orders", role="primary"))
        ticks.tick()
        await emitter.wait_emitted(2)
        stop.set()
    documents = parse(capsys.readouterr().out)
    assert [d["Succeeded"] for d in documents] == [0, 1]


async def test_build_flushes_the_last_interval_on_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = QWorkerSettings(
        queue_name="orders",
        health_file=str(tmp_path / "health.json"),
        metrics_publish_cloudwatch=False,
        metrics_interval_s=60,
    )
    queue = FakeSqs().create_queue("orders")
    await send_numbers(queue, 3)

    async def handle(body: dict[str, int]) -> None:
        pass

    ticks = Ticks()  # never ticks: only the final flush writes
    async with build(settings, CANARY, sleep=ticks.sleep, install_tracer=False) as obs:
        consumer = consumer_for(queue, handle, identity=CANARY, sinks=obs.sinks)
        obs.emitter.queues = lambda: ["orders"]
        await consumer.run_until_empty()
    (document,) = parse(capsys.readouterr().out)
    assert document["Succeeded"] == 3


def test_publish_cloudwatch_defaults_to_local_endpoints() -> None:
    in_aws = QWorkerSettings(queue_url="https://sqs.us-east-1.amazonaws.com/123456789012/q")
    assert publish_cloudwatch(in_aws) is False
    assert publish_cloudwatch(in_aws, "http://127.0.0.1:1") is True
    assert publish_cloudwatch(QWorkerSettings(endpoint_url="http://127.0.0.1:1")) is True
    assert publish_cloudwatch(QWorkerSettings()) is True  # embedded
    assert publish_cloudwatch(QWorkerSettings(metrics_publish_cloudwatch=False)) is False


def test_metric_data_uses_statistic_sets_for_values_under_both_dimension_sets() -> None:
    aggregator = MetricsAggregator(role="canary")
    for ms in (1.0, 2.0, 6.0):
        aggregator.record(record(Outcome.SUCCEEDED, ms=ms))
    (aggregate,) = aggregator.snapshot().aggregates
    datums = metric_data(aggregate, service="svc", timestamp=datetime.now(UTC))
    times = [d for d in datums if d["MetricName"] == "ProcessingTime"]
    assert [len(d["Dimensions"]) for d in times] == [2, 3]
    assert times[0]["StatisticValues"] == {
        "SampleCount": 3.0,
        "Sum": 9.0,
        "Minimum": 1.0,
        "Maximum": 6.0,
    }
    assert len(datums) == 2 * (len(COUNT_METRICS) + 2)


def test_metric_data_of_a_routed_queue_carries_the_message_type_set_as_its_document_does() -> None:
    aggregator = MetricsAggregator(role="primary", message_types=True)
    aggregator.record(record(Outcome.SUCCEEDED, ms=3.0))  # a plain handler's: no type
    aggregator.record(dataclasses.replace(record(Outcome.FAILED, ms=4.0), message_type="unknown"))
    plain, routed = sorted(aggregator.snapshot().aggregates, key=lambda a: a.message_type or "")
    assert plain.message_type is None
    assert routed.message_type == "unknown"
    now = datetime.now(UTC)
    assert {len(d["Dimensions"]) for d in metric_data(plain, service="s", timestamp=now)} == {2, 3}
    datums = metric_data(routed, service="s", timestamp=now)
    assert len(datums) == 3 * (len(COUNT_METRICS) + 2)
    typed = [d for d in datums if len(d["Dimensions"]) == 4]
    assert {(d["Dimensions"][3]["Name"], d["Dimensions"][3]["Value"]) for d in typed} == {
        ("MessageType", "unknown")
    }
    failed = next(d for d in typed if d["MetricName"] == "Failed")
    assert failed["Value"] == 1.0
    # The same sets as the EMF document of that aggregate.
    document = build_document(routed, namespace="QWorker", service="s", timestamp_ms=0)
    assert sorted(len(d) for d in document["_aws"]["CloudWatchMetrics"][0]["Dimensions"]) == [
        2,
        3,
        4,
    ]


# -- PutMetricData against a real server ---------------------------------------------------------


ON_BOTH_SERVERS = pytest.mark.parametrize(
    "server",
    [
        pytest.param("moto", marks=pytest.mark.moto),
        pytest.param("localstack", marks=pytest.mark.localstack),
    ],
)
"""Run a test against moto's server and LocalStack (`server`: the fixture's prefix)."""


async def read_sums(
    endpoint_url: str,
    namespace: str,
    dimensions: Mapping[Dimension, str],
    wanted: list[tuple[str, str]],
    start: datetime,
) -> dict[str, float]:
    """Each `(metric, statistic)`'s sum over the ten minutes from `start`, as `metric:statistic`."""
    dims = [{"Name": d.value, "Value": value} for d, value in dimensions.items()]
    queries = [
        {
            "Id": f"q{i}",
            "MetricStat": {
                "Metric": {"Namespace": namespace, "MetricName": name, "Dimensions": dims},
                "Period": 60,
                "Stat": stat,
            },
        }
        for i, (name, stat) in enumerate(wanted)
    ]
    async with get_session().create_client(
        "cloudwatch", endpoint_url=endpoint_url, region_name="us-east-1"
    ) as cw:
        response = await cw.get_metric_data(
            MetricDataQueries=queries, StartTime=start, EndTime=start + timedelta(minutes=10)
        )
    results = {r["Id"]: sum(r["Values"]) for r in response["MetricDataResults"]}
    return {f"{name}:{stat}": results[f"q{i}"] for i, (name, stat) in enumerate(wanted)}


async def get_sums(
    endpoint_url: str, namespace: str, role: str, start: datetime, queue: str | None = None
) -> dict[str, float]:
    dimensions = {Dimension.SERVICE: "orders-svc", Dimension.DEPLOYMENT_ROLE: role}
    if queue is not None:
        dimensions[Dimension.QUEUE] = queue
    wanted = [
        (name.value, "Sum") for name in (MetricName.PROCESSED, MetricName.FIRST_ATTEMPT_FAILED)
    ]
    wanted += [("ProcessingTime", "SampleCount"), ("FirstAttemptProcessed", "Sum")]
    return await read_sums(endpoint_url, namespace, dimensions, wanted, start)


def failing_first(failing: int) -> Callable[[dict[str, int]], Awaitable[None]]:
    """A handler whose messages `n < failing` fail on their first attempt."""
    attempts: Counter[int] = Counter()

    async def handle(body: dict[str, int]) -> None:
        attempts[body["n"]] += 1
        if body["n"] < failing and attempts[body["n"]] == 1:
            raise RuntimeError("boom")

    return handle


async def publish_role(endpoint_url: str, namespace: str, role: str, failing: int) -> None:
    """Run one role's consumer on the fake and emit its interval to stdout and CloudWatch."""
    identity = Identity(service="orders-svc", role=role, version="v1")
    queue = FakeSqs().create_queue("orders")
    await send_numbers(queue, 12)
    aggregator = MetricsAggregator(role=role)
    async with open_cloudwatch_client(
        region="us-east-1", endpoint_url=endpoint_url, local=True
    ) as client:
        publisher = CloudWatchPublisher(client, namespace=namespace, service="orders-svc")
        emitter = MetricsEmitter(
            aggregator,
            EmfStdoutSink(),
            namespace=namespace,
            identity=identity,
            interval_s=10,
            publisher=publisher,
        )
        handle = failing_first(failing)
        await consumer_for(queue, handle, identity=identity, sinks=[aggregator]).run_until_empty()
        await emitter.emit()
        assert publisher.failures == 0


@pytest.mark.integration
@pytest.mark.usefixtures("aws_env")
@ON_BOTH_SERVERS
async def test_cloudwatch_publishing_matches_the_emf_documents(
    server: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    endpoint_url: str = request.getfixturevalue(f"{server}_server").endpoint_url
    namespace = f"QWorkerTest{time.time_ns()}"  # the session's server is shared
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    expected: dict[str, dict[str, Any]] = {}
    for role, failing in (("canary", 3), ("primary", 1)):
        await publish_role(endpoint_url, namespace, role, failing)
        (expected[role],) = parse(capsys.readouterr().out)

    # LocalStack's GetMetricData matches every series whose dimensions CONTAIN the query's, so
    # a [Service, DeploymentRole] query there also sums the per-queue series: ask for the exact
    # per-queue set (real CloudWatch, like moto, matches the set exactly).
    queue = "orders" if server == "localstack" else None
    for role, document in expected.items():
        read = await get_sums(endpoint_url, namespace, role, start, queue)
        assert read["Processed:Sum"] == document["Processed"]
        assert read["FirstAttemptFailed:Sum"] == document["FirstAttemptFailed"]
        assert read["FirstAttemptProcessed:Sum"] == document["FirstAttemptProcessed"]
        assert read["ProcessingTime:SampleCount"] == samples(document["ProcessingTime"])[0]
    assert expected["canary"]["FirstAttemptFailed"] == 3
    assert expected["primary"]["FirstAttemptFailed"] == 1


async def read_typed_sum(
    endpoint_url: str, namespace: str, metric: str, message_type: str, start: datetime
) -> float:
    """One metric's sum under `[Service, DeploymentRole, Queue, MessageType]`."""
    dimensions = {
        Dimension.SERVICE: "orders-svc",
        Dimension.DEPLOYMENT_ROLE: "primary",
        Dimension.QUEUE: "orders",
        Dimension.MESSAGE_TYPE: message_type,
    }
    read = await read_sums(endpoint_url, namespace, dimensions, [(metric, "Sum")], start)
    return read[f"{metric}:Sum"]


@pytest.mark.integration
@pytest.mark.usefixtures("aws_env")
@ON_BOTH_SERVERS
async def test_cloudwatch_publishing_carries_the_message_type_series(
    server: str, request: pytest.FixtureRequest
) -> None:
    endpoint_url: str = request.getfixturevalue(f"{server}_server").endpoint_url
    namespace = f"QWorkerTypes{time.time_ns()}"
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    aggregator = MetricsAggregator(role="primary", message_types=True)
    routed = [
        ("never-declared", Outcome.SUCCEEDED),  # an undeclared type counts as "other"
        ("never-declared", Outcome.SUCCEEDED),
        ("unknown", Outcome.FAILED),
    ]
    for index, (message_type, outcome) in enumerate(routed):
        one = record(outcome, queue="orders", role="primary", ms=float(index + 1))
        aggregator.record(dataclasses.replace(one, message_type=message_type))
    async with open_cloudwatch_client(
        region="us-east-1", endpoint_url=endpoint_url, local=True
    ) as client:
        publisher = CloudWatchPublisher(client, namespace=namespace, service="orders-svc")
        assert await publisher.publish(aggregator.snapshot())
    assert await read_typed_sum(endpoint_url, namespace, "Succeeded", "other", start) == 2
    assert await read_typed_sum(endpoint_url, namespace, "Failed", "unknown", start) == 1
    assert await read_typed_sum(endpoint_url, namespace, "Failed", "other", start) == 0


async def test_a_failing_publish_is_logged_and_never_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        async def put_metric_data(self, **_: object) -> None:
            raise OSError("connection refused")

    publisher = CloudWatchPublisher(Broken(), namespace="QWorker", service="svc")
    aggregator = MetricsAggregator(role="canary", queues=["q"])
    assert await publisher.publish(aggregator.snapshot()) is False
    assert publisher.failures == 1
    assert any(r.__dict__.get("action") == "metrics_publish_failed" for r in caplog.records)
