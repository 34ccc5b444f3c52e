"""Orders: a module-level `handle` with a pydantic model, the simplest shape of a worker.

Run it on the embedded local server with `qworker run handlers.orders`, then in another terminal:

    qworker send '{"order_id": "o-1", "customer_id": "c-1", "amount_cents": 1250,
                   "currency": "EUR"}'

A body that does not validate is rejected (to the dead-letter queue, with the validation error);
an order the payment step cannot take yet is retried later; a currency we will never take is
rejected by the handler itself.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

from pydantic import BaseModel, Field

from qworker import Reject, Retry

log = logging.getLogger(__name__)

SUPPORTED_CURRENCIES: Final = frozenset({"EUR", "USD", "GBP"})


class Order(BaseModel):
    """An order placed by a customer."""

    order_id: str = Field(min_length=1)
    customer_id: str = Field(min_length=1)
    amount_cents: int = Field(gt=0)
    currency: str = Field(min_length=3, max_length=3)
    priority: Literal["normal", "express"] = "normal"


async def handle(order: Order) -> None:
    """Book the order.

    Raises:
        Reject: The currency is one we never take.
        Retry: The payment provider asked us to come back later (amounts over 1,000,000.00).
    """
    if order.currency not in SUPPORTED_CURRENCIES:
        raise Reject(f"unsupported currency {order.currency}")
    if order.amount_cents > 100_000_000:  # noqa: PLR2004 (the example's manual-review limit)
        raise Retry(delay_s=60, reason="amount needs manual review")
    log.info(
        "order booked",
        extra={
            "action": "order_booked",
            "order_id": order.order_id,
            "amount_cents": order.amount_cents,
        },
    )
