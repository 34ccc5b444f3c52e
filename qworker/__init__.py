"""qworker: asyncio SQS workers for ECS Fargate, shipped through a canary judged on the queue.

```python
from pydantic import BaseModel

class Order(BaseModel):
    order_id: str

async def handle(order: Order) -> None: ...
```

Run it with `qworker run <module>`; see the README for settings, deployment and the canary.
"""

from qworker.app import QWorker, Router
from qworker.consumer import Consumer, ConsumerStatistics
from qworker.exceptions import QWorkerError, Reject, Retry
from qworker.outcome import Outcome, OutcomeRecord, RetryPolicy
from qworker.transport import Message

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
