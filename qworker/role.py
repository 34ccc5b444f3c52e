"""The worker's identity: deployment role, version, service and (on ECS) task id.

Every outcome, log line, metric and span carries the role, so the canary can be judged against the
primary on the same queue. On ECS the task id comes from the task metadata endpoint (v4), whose URL
ECS puts in `ECS_CONTAINER_METADATA_URI_V4`; the settings module reads that variable, this one
fetches it.
"""

from __future__ import annotations

import json
import logging
import urllib.request
from dataclasses import dataclass
from typing import Final, final

__all__ = ["Identity", "fetch_ecs_task_id"]

log = logging.getLogger(__name__)

METADATA_TIMEOUT_S: Final = 2.0


@final
@dataclass(frozen=True, slots=True)
class Identity:
    """Who this worker is."""

    service: str = "qworker"
    role: str = "primary"
    version: str = "dev"
    task_id: str | None = None

    @property
    def is_canary(self) -> bool:
        """Whether this worker is the canary."""
        return self.role == "canary"


def fetch_ecs_task_id(
    metadata_uri: str | None, timeout_s: float = METADATA_TIMEOUT_S
) -> str | None:
    """Read the task id from the ECS task metadata endpoint v4, or None off ECS or on error.

    Args:
        metadata_uri: The value of `ECS_CONTAINER_METADATA_URI_V4` (None off ECS).
        timeout_s: How long to wait for the endpoint.
    """
    if not metadata_uri or not metadata_uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(f"{metadata_uri}/task", timeout=timeout_s) as response:  # noqa: S310 (the scheme is checked above)
            task = json.loads(response.read())
    except (OSError, ValueError) as exc:
        log.warning(
            "ecs task metadata unavailable", extra={"action": "ecs_metadata", "error": str(exc)}
        )
        return None
    arn = str(task.get("TaskARN", ""))
    return arn.rsplit("/", 1)[-1] or None
