"""Plain config: the settings turn into config objects, and only the CLI edge imports them."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from qworker.config import ConsumerConfig, ObservabilityConfig, WorkerConfig
from qworker.consumer import Consumer
from qworker.handler import HandlerSpec
from qworker.role import Identity
from qworker.settings import QWorkerSettings
from qworker.testing import FakeSqs, consumer_for
from qworker.wiring import build_consumer

PACKAGE = Path(__file__).resolve().parent.parent / "qworker"

EDGE = {
    "settings.py",  # itself
    "worker_cli.py",
    "queue_cli.py",
    "dlq/cli.py",
    "canary/cli.py",
    # `app.producer()` without settings reads the environment: the program asked for the edge.
    "app.py",
}
"""Modules that may import `qworker.settings`: the command-line edge."""


def _imports_settings(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "qworker.settings":
            return True
        if (
            isinstance(node, ast.ImportFrom)
            and node.module == "qworker"
            and any(alias.name == "settings" for alias in node.names)
        ):
            return True
        if isinstance(node, ast.Import) and any(a.name == "qworker.settings" for a in node.names):
            return True
    return False


def test_only_the_edge_imports_the_settings() -> None:
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if _imports_settings(path)
    }
    inner = importers - EDGE
    assert not inner, f"inner modules import qworker.settings: {sorted(inner)}"
    assert "worker_cli.py" in importers  # the check sees imports at all


@pytest.mark.parametrize("config", [ConsumerConfig, WorkerConfig, ObservabilityConfig])
def test_config_defaults_are_the_settings_defaults(config: type) -> None:
    fields = QWorkerSettings.model_fields
    for field in dataclasses.fields(config):
        if field.name in {"consumer", "use_embedded"}:
            continue
        assert field.name in fields, f"{config.__name__}.{field.name} is no setting"
        assert field.default == fields[field.name].default, field.name


def test_settings_turn_into_config_objects() -> None:
    settings = QWorkerSettings(
        queue_name="orders",
        concurrency=3,
        pollers=4,
        wait_time_s=7,
        deployment_role="canary",
        canary_max_hops=9,
        payload_keep=True,
        metrics_namespace="Shop",
        health_port=0,
    )
    worker = settings.worker_config()
    assert worker.queue_name == "orders"
    assert worker.payload_keep is True
    assert worker.consumer == ConsumerConfig(
        concurrency=3, pollers=4, wait_time_s=7, release_failed=True, canary_max_hops=9
    )
    assert (worker.pollers, worker.wait_time_s) == (4, 7)  # what the SQS client is sized by
    observability = settings.observability_config()
    assert observability.metrics_namespace == "Shop"
    assert observability.health_port == 0
    assert observability.use_embedded is False
    assert observability.queue_name == "orders"


def test_the_factory_applies_the_worker_rules() -> None:
    queue = FakeSqs().create_queue("orders")

    async def handle(body: str) -> None: ...

    spec = HandlerSpec.from_function(handle, queue="orders", max_in_flight=5)
    canary = build_consumer(
        queue,
        spec,
        identity=Identity(role="canary"),
        config=ConsumerConfig(concurrency=20, visibility_timeout_s=45),
        queue_visibility_timeout_s=30,
        fifo=False,
        max_receive_count=4,
    )
    assert isinstance(canary, Consumer)
    assert canary.concurrency == 5  # the handler's max_in_flight wins
    assert canary.heartbeat.visibility_timeout_s == 45  # asked at receive
    assert canary.settler.release_failed is True  # None: on for a canary
    assert canary.settler.max_hops == 50
    assert canary.settler.max_receive_count is None  # a canary never dead-letters
    primary = build_consumer(
        queue,
        spec,
        identity=Identity(role="primary"),
        config=ConsumerConfig(),
        queue_visibility_timeout_s=30,
        fifo=False,
        max_receive_count=4,
    )
    assert primary.heartbeat.visibility_timeout_s == 30  # the queue's own
    assert primary.settler.release_failed is False
    assert primary.settler.max_hops == 0
    assert primary.settler.max_receive_count == 4


async def test_the_test_kit_builds_through_the_factory() -> None:
    queue = FakeSqs().create_queue("orders")
    await queue.send("x")

    async def handle(body: str) -> None: ...

    consumer = consumer_for(queue, handle, identity=Identity(role="canary"), pollers=1)
    # Test defaults: no hand-back, failures not released, no backoff.
    assert consumer.settler.max_hops == 0
    assert consumer.settler.release_failed is False
    assert consumer.settler.retry_policy.max_s == 0
    await consumer.run_until_empty()
    assert consumer.statistics().acked == 1
    with pytest.raises(TypeError, match="colour"):
        consumer_for(queue, handle, colour="blue")
