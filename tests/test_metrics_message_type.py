"""The opt-in MessageType metric dimension: bounded values, one more dimension set, sums intact."""

from __future__ import annotations

from typing import Any

from qworker.emf import MetricsAggregator, build_document
from qworker.metrics import DIMENSION_SETS, MESSAGE_TYPE_DIMENSION_SET, Dimension
from qworker.outcome import Outcome, OutcomeRecord
from qworker.routing import TypeRouter, by_attribute
from qworker.settings import QWorkerSettings
from qworker.testing import Drainer, FakeSqs, ManualClock

router = TypeRouter(by_attribute())


@router.route("MtOrderPlaced")
async def placed(body: dict[str, int]) -> None:
    if body["n"] < 0:
        raise ValueError("negative")


def record(outcome: Outcome, queue: str, message_type: str | None) -> OutcomeRecord:
    return OutcomeRecord(
        outcome=outcome,
        queue=queue,
        handler="h",
        role="canary",
        version="v1",
        message_id=f"m-{queue}-{message_type}",
        receive_count=1,
        duration_s=0.004,
        message_type=message_type,
    )


def documents(aggregator: MetricsAggregator) -> list[dict[str, Any]]:
    snapshot = aggregator.snapshot()
    return [
        build_document(a, namespace="QWorker", service="svc", timestamp_ms=snapshot.timestamp_ms)
        for a in snapshot.aggregates
    ]


def test_off_by_default_one_document_per_queue_without_message_type() -> None:
    aggregator = MetricsAggregator(role="canary")
    aggregator.record(record(Outcome.SUCCEEDED, "routed", "MtOrderPlaced"))
    aggregator.record(record(Outcome.FAILED, "routed", "unknown"))
    (document,) = documents(aggregator)
    assert "MessageType" not in document
    assert document["Processed"] == 2
    assert document["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [
        [d.value for d in s] for s in DIMENSION_SETS
    ]


def test_on_each_bounded_type_gets_a_document_with_the_extra_dimension_set() -> None:
    aggregator = MetricsAggregator(role="canary", message_types=True)
    aggregator.record(record(Outcome.SUCCEEDED, "routed", "MtOrderPlaced"))
    aggregator.record(record(Outcome.SUCCEEDED, "routed", "MtOrderPlaced"))
    aggregator.record(record(Outcome.REJECTED, "routed", "unknown"))
    aggregator.record(record(Outcome.FAILED, "routed", "never-declared-anywhere"))
    aggregator.record(record(Outcome.SUCCEEDED, "plain", None))
    by_key = {(d["Queue"], d.get("MessageType")): d for d in documents(aggregator)}
    assert set(by_key) == {
        ("plain", None),
        ("routed", "MtOrderPlaced"),
        ("routed", "unknown"),
        ("routed", "other"),  # not a declared route: bounded to "other"
    }
    typed = [s.value for s in MESSAGE_TYPE_DIMENSION_SET]
    assert typed[-1] == Dimension.MESSAGE_TYPE.value
    for (_, message_type), document in by_key.items():
        sets = document["_aws"]["CloudWatchMetrics"][0]["Dimensions"]
        plain = [[d.value for d in s] for s in DIMENSION_SETS]
        assert sets == (plain if message_type is None else [*plain, typed])
    # The queue-level sums over the per-type documents are the queue's numbers.
    routed = [d for (queue, _), d in by_key.items() if queue == "routed"]
    assert sum(d["Processed"] for d in routed) == 4
    assert sum(d["Succeeded"] for d in routed) == 2
    assert by_key["routed", "MtOrderPlaced"]["Succeeded"] == 2


def test_a_real_consumer_feeds_per_type_documents() -> None:
    sqs = FakeSqs(clock=ManualClock())
    queue = sqs.create_queue("routed", dead_letter="routed-dlq")
    queue.put('{"n": 1}', attributes={"type": "MtOrderPlaced"})
    queue.put('{"n": -1}', attributes={"type": "MtOrderPlaced"})
    queue.put('{"n": 1}', attributes={"type": "Nope"})
    aggregator = MetricsAggregator(role="primary", message_types=True)
    Drainer(sqs)(router.handle, queue="routed", sinks=[aggregator])
    counts = {
        d["MessageType"]: (d["Succeeded"], d["Failed"], d["Rejected"])
        for d in documents(aggregator)
    }
    assert counts["MtOrderPlaced"][0] == 1
    assert counts["MtOrderPlaced"][1] >= 1  # failed, retried until the receive budget
    assert counts["unknown"] == (0, 0, 1)


def test_the_setting_reaches_the_observability_config() -> None:
    assert not QWorkerSettings(queue_name="q").observability_config().metrics_message_type
    on = QWorkerSettings(queue_name="q", metrics_message_type=True)
    assert on.observability_config().metrics_message_type
