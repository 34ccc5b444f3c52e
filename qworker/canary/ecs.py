"""The canary's expected share of receives, from ECS: running tasks x pollers of each service."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from qworker._aws import map_errors
from qworker.config import default_pollers

__all__ = ["EcsClient", "expected_share_from_ecs"]


class EcsClient(Protocol):
    """The ECS calls the expected-share read makes (a boto3 `ecs` client has them)."""

    def describe_services(self, **kwargs: object) -> Mapping[str, object]:
        """DescribeServices."""
        ...

    def describe_task_definition(self, **kwargs: object) -> Mapping[str, object]:
        """DescribeTaskDefinition."""
        ...


def expected_share_from_ecs(
    ecs: EcsClient,
    cluster: str,
    canary_service: str,
    primary_service: str,
    default_concurrency: int,
) -> float | None:
    """The canary's expected share of receives: its running tasks x pollers over both services'.

    Each service's running task count comes from DescribeServices and its pollers from the task
    definition's environment as the worker reads it: `QWORKER_POLLERS`, or when it is absent or 0,
    one per 10 of `QWORKER_CONCURRENCY` (`default_concurrency` when absent), 8 to 64
    (`qworker.config.default_pollers`); every poller long-polls the same queue, so receives split
    by pollers.

    Args:
        ecs: An ECS client.
        cluster: The cluster's name or ARN.
        canary_service: The canary service's name or ARN.
        primary_service: The primary service's name or ARN.
        default_concurrency: The worker's concurrency when the task definition does not set it.

    Returns:
        The expected share, or None when neither service runs a task.

    Raises:
        LookupError: A service was not found.
        TransportError: ECS refused or could not be reached.
    """
    with map_errors("DescribeServices"):
        response = ecs.describe_services(
            cluster=cluster, services=[canary_service, primary_service]
        )
    services = response.get("services")
    found = {
        str(s.get("serviceName")): s
        for s in (services if isinstance(services, Sequence) else ())
        if isinstance(s, Mapping)
    }
    capacity: list[int] = []
    for name in (canary_service, primary_service):
        service = found.get(name.rsplit("/", 1)[-1])
        if service is None:
            raise LookupError(f"ECS service {name!r} not found in cluster {cluster!r}")
        running = int(str(service.get("runningCount", 0)))
        capacity.append(
            running * _pollers(ecs, str(service.get("taskDefinition")), default_concurrency)
        )
    total = sum(capacity)
    return capacity[0] / total if total else None


def _pollers(ecs: EcsClient, task_definition: str, default_concurrency: int) -> int:
    with map_errors("DescribeTaskDefinition"):
        response = ecs.describe_task_definition(taskDefinition=task_definition)
    environment: dict[str, str] = {}
    definition = response.get("taskDefinition")
    containers = definition.get("containerDefinitions") if isinstance(definition, Mapping) else None
    for container in containers if isinstance(containers, Sequence) else ():
        variables = container.get("environment") if isinstance(container, Mapping) else None
        for variable in variables if isinstance(variables, Sequence) else ():
            if isinstance(variable, Mapping):
                environment[str(variable.get("name"))] = str(variable.get("value"))
    pollers = _positive(environment.get("QWORKER_POLLERS"))
    if pollers:
        return pollers
    concurrency = _positive(environment.get("QWORKER_CONCURRENCY")) or default_concurrency
    return default_pollers(concurrency)


def _positive(raw: str | None) -> int:
    """A positive integer setting's value, or 0 (absent, 0: follow the default, or malformed)."""
    try:
        return max(0, int(raw)) if raw is not None else 0
    except ValueError:
        return 0
