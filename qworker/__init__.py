"""qworker: asyncio SQS workers for ECS Fargate, shipped through a canary judged on the queue.

```python
from pydantic import BaseModel

class Order(BaseModel):
    order_id: str

async def handle(order: Order) -> None: ...
```

Run it with `qworker run <module>`; see the README for settings, deployment and the canary.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from qworker.app import QWorker, Router
    from qworker.consumer import Consumer, ConsumerStatistics
    from qworker.exceptions import QWorkerError, Reject, Retry
    from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
    from qworker.transport import Message

# The names load on first use, so `qworker health` (the container health check) and other light
# commands do not import the AWS SDK and the rest of the worker.
_WHERE: _typing.Final = {
    "Consumer": "qworker.consumer",
    "ConsumerStatistics": "qworker.consumer",
    "Message": "qworker.transport",
    "Outcome": "qworker.outcome",
    "OutcomeRecord": "qworker.outcome",
    "QWorker": "qworker.app",
    "QWorkerError": "qworker.exceptions",
    "Reject": "qworker.exceptions",
    "Retry": "qworker.exceptions",
    "RetryPolicy": "qworker.outcome",
    "Router": "qworker.app",
}

__all__ = [
    "Consumer",
    "ConsumerStatistics",
    "Message",
    "Outcome",
    "OutcomeRecord",
    "QWorker",
    "QWorkerError",
    "Reject",
    "Retry",
    "RetryPolicy",
    "Router",
]


def __getattr__(name: str) -> object:
    """Import a public name on first use (PEP 562)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'qworker' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
