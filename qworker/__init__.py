"""qworker: asyncio SQS workers for ECS Fargate, shipped through a canary judged on the queue.

```python
from pydantic import BaseModel

class Order(BaseModel):
    order_id: str

async def handle(order: Order) -> None: ...
```

Run it with `qworker run <module>`; see the README for settings, deployment and the canary.

## Public and internal

The public API, kept compatible within a major version, is:

- the names in `qworker.__all__` (this package: `from qworker import QWorker`), each loaded from
  the module that defines it;
- the names in the `__all__` of the public modules: `qworker.app`, `qworker.batch_handler`,
  `qworker.envelopes`, `qworker.exceptions`, `qworker.lifespan`, `qworker.message`,
  `qworker.metrics`, `qworker.middleware`, `qworker.outcome`, `qworker.producer`,
  `qworker.pytest_plugin`, `qworker.routing`, `qworker.settings` and `qworker.testing`.

Everything else is internal and may change in any release: every other module (the worker's
parts, such as `qworker.consumer` or `qworker.transport`; the tools `qworker.canary`,
`qworker.dlq` and `qworker.drill`; any module whose name starts with an underscore, such as
`qworker._aws`), and any name missing from a public module's `__all__`. Data types are imported
from the module that defines them (`qworker.message.Message`, not a re-export).
`tests/test_public_api.py` holds this list and checks it.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from qworker.app import QWorker, Router
    from qworker.batch_handler import BatchResult
    from qworker.consumer import Consumer
    from qworker.exceptions import QWorkerError, Reject, Retry
    from qworker.lifespan import Depends
    from qworker.message import Message
    from qworker.middleware import MessageHooks, Middleware
    from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
    from qworker.statistics import ConsumerStatistics

# The names load on first use, so `qworker health` (the container health check) and other light
# commands do not import the AWS SDK and the rest of the worker.
_WHERE: _typing.Final = {
    "BatchResult": "qworker.batch_handler",
    "Consumer": "qworker.consumer",
    "ConsumerStatistics": "qworker.statistics",
    "Depends": "qworker.lifespan",
    "Message": "qworker.message",
    "MessageHooks": "qworker.middleware",
    "Middleware": "qworker.middleware",
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
    "BatchResult",
    "Consumer",
    "ConsumerStatistics",
    "Depends",
    "Message",
    "MessageHooks",
    "Middleware",
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
