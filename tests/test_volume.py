"""Volume on LocalStack: 10,000 messages, every one handled, none lost, none deleted twice."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from typing import Any

import pytest

from qworker.local import create_queue_with_dlq
from qworker.outcome import Outcome, OutcomeRecord
from qworker.producer import send_bodies
from qworker.testing import consumer_for
from qworker.transport import SqsTransport

pytestmark = [pytest.mark.integration, pytest.mark.localstack, pytest.mark.slow]

TOTAL = 10_000
SENDERS = 10


class Deletes:
    """Counts confirmed deletes per message id (the sink sees each settled outcome once)."""

    def __init__(self) -> None:
        self.by_id: Counter[str] = Counter()
        self.unsettled = 0

    def record(self, record: OutcomeRecord) -> None:
        if record.outcome is Outcome.SUCCEEDED and record.settled:
            self.by_id[record.message_id] += 1
        elif not record.settled:
            self.unsettled += 1


async def test_ten_thousand_messages_none_lost_none_deleted_twice(
    localstack_server: Any, sqs_client: Any
) -> None:
    name = f"volume-{uuid.uuid4().hex[:8]}"
    queue = SqsTransport(sqs_client, await create_queue_with_dlq(sqs_client, name))
    share = TOTAL // SENDERS
    await asyncio.gather(
        *(
            send_bodies(queue, [json.dumps({"n": i}) for i in range(k * share, (k + 1) * share)])
            for k in range(SENDERS)
        )
    )
    handled: Counter[int] = Counter()
    deletes = Deletes()

    async def handle(body: dict[str, int]) -> None:
        handled[body["n"]] += 1

    consumer = consumer_for(queue, handle, sinks=[deletes], concurrency=100, pollers=8)
    async with asyncio.timeout(240):
        await consumer.run_until_empty()

    stats = consumer.statistics()
    assert sorted(handled) == list(range(TOTAL))  # none lost
    assert max(handled.values()) == 1  # LocalStack never hands a message out twice here
    assert len(deletes.by_id) == TOTAL
    assert max(deletes.by_id.values()) == 1  # none deleted twice
    assert deletes.unsettled == 0
    assert (stats.acked, stats.failed, stats.received) == (TOTAL, 0, TOTAL)
    attributes = await queue.get_attributes()
    assert (attributes.approximate_visible, attributes.approximate_in_flight) == (0, 0)
    # Full batches: one receive and one delete call per ten messages, and a few empty polls.
    calls = stats.receives + consumer.settler.deletes.calls
    assert calls / TOTAL < 0.3
