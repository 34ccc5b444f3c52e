"""`Publisher`: one body type to one queue, checked by mypy, sent with the app's producer.

`qworker.producer` is its public home; it lives here to keep the producer's module short.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Generic, TypeVar, final

from qworker._outgoing import AttributeValue, Body

if TYPE_CHECKING:
    from qworker.producer import Producer

__all__ = ["Publisher"]

B = TypeVar("B", bound=Body)


@final
class Publisher(Generic[B]):
    """Sends one type of body to one queue: `send` takes only that type (checked by mypy).

    ```python
    orders = app.publisher("orders", OrderPlaced, message_type="OrderPlaced")
    await orders.send(OrderPlaced(order_id="o-1"))
    ```

    The producer is looked up at each send, so a publisher can be made at import time.
    """

    def __init__(
        self,
        producer: Callable[[], Producer],
        queue: str,
        body_type: type[B],
        *,
        message_type: str | None = None,
    ) -> None:
        """Bind a queue and a body type.

        Args:
            producer: Returns the producer to send with (e.g. the app's open one).
            queue: The queue's name (or URL).
            body_type: The type of every body (documents the publisher; mypy checks sends).
            message_type: The `type` attribute of every message (routes it to its handler).
        """
        self._producer = producer
        self.queue = queue
        self.body_type = body_type
        self.message_type = message_type

    def __repr__(self) -> str:
        """Show the queue and the body type."""
        return f"Publisher({self.queue!r}, {self.body_type.__name__})"

    async def send(
        self,
        body: B,
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
        deduplication_id: str | None = None,
    ) -> None:
        """Send one message; see `Producer.send`."""
        await self._producer().send(
            self.queue,
            body,
            attributes=attributes,
            delay_s=delay_s,
            group_id=group_id,
            deduplication_id=deduplication_id,
            message_type=self.message_type,
        )

    async def send_batch(
        self,
        bodies: Iterable[B],
        *,
        attributes: Mapping[str, AttributeValue] | None = None,
        delay_s: int = 0,
        group_id: str | None = None,
    ) -> int:
        """Send many messages in batches of 10; return how many; see `Producer.send_batch`."""
        return await self._producer().send_batch(
            self.queue,
            bodies,
            attributes=attributes,
            delay_s=delay_s,
            group_id=group_id,
            message_type=self.message_type,
        )
