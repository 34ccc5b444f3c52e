"""Handler binding: what a handler's parameters ask for, checked once at registration."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pydantic import BaseModel

from qworker.exceptions import HandlerSignatureError, MessageDecodeError
from qworker.handler import HandlerSpec
from qworker.transport import Message


class Order(BaseModel):
    order_id: str
    amount_cents: int


class Line(BaseModel):
    sku: str


class Basket(BaseModel):
    lines: list[Line]


class NotAModel:
    """A plain class: pydantic cannot validate it."""


def message(body: str = "{}") -> Message:
    return Message(
        message_id="m-1",
        receipt_handle="r-1",
        body=body,
        attributes={"ApproximateReceiveCount": "2"},
    )


# -- what the first parameter asks for -----------------------------------------------------------


def test_pydantic_model_body_is_validated_from_json() -> None:
    async def handle(order: Order) -> None: ...

    spec = HandlerSpec.from_function(handle, queue="orders")

    assert spec.body_type is Order
    assert spec.queue == "orders"
    assert spec.message_param is None
    assert spec.is_async
    decoded = spec.decode(message('{"order_id": "o-1", "amount_cents": 100}'))
    assert decoded == Order(order_id="o-1", amount_cents=100)


def test_str_body_is_the_raw_body() -> None:
    async def handle(body: str) -> None: ...

    spec = HandlerSpec.from_function(handle)

    assert spec.decode(message("not json at all")) == "not json at all"


def test_bytes_body_is_the_utf8_encoded_body() -> None:
    async def handle(body: bytes) -> None: ...

    spec = HandlerSpec.from_function(handle)

    assert spec.decode(message("héllo")) == "héllo".encode()


def test_dict_body_is_decoded_json() -> None:
    async def handle(body: dict[str, Any]) -> None: ...

    spec = HandlerSpec.from_function(handle)

    assert spec.decode(message('{"a": 1, "b": [true]}')) == {"a": 1, "b": [True]}


def test_list_of_int_body_is_validated() -> None:
    async def handle(numbers: list[int]) -> None: ...

    spec = HandlerSpec.from_function(handle)

    assert spec.decode(message('[1, "2", 3]')) == [1, 2, 3]
    with pytest.raises(MessageDecodeError, match=r"invalid body: 1: "):
        spec.decode(message('[1, "two"]'))


def test_message_as_first_parameter_is_the_whole_message() -> None:
    async def handle(msg: Message) -> None: ...

    spec = HandlerSpec.from_function(handle)
    received = message("anything")

    assert spec.decode(received) is received
    assert spec.message_param is None


async def test_further_message_parameter_is_passed_by_name() -> None:
    calls: list[tuple[object, Message]] = []

    async def handle(order: Order, meta: Message) -> None:
        calls.append((order, meta))

    spec = HandlerSpec.from_function(handle)
    received = message('{"order_id": "o-1", "amount_cents": 1}')

    assert spec.message_param == "meta"
    await spec.call(spec.decode(received), received)

    assert calls == [(Order(order_id="o-1", amount_cents=1), received)]
    assert calls[0][1].receive_count == 2


def test_further_parameter_with_a_default_is_left_alone() -> None:
    async def handle(order: Order, retries: int = 3, *args: object, **kwargs: object) -> None: ...

    spec = HandlerSpec.from_function(handle)

    assert spec.body_type is Order
    assert spec.message_param is None


def test_options_are_kept_and_name_is_qualified() -> None:
    async def handle(body: str) -> None: ...

    spec = HandlerSpec.from_function(handle, queue="q", max_in_flight=5, timeout_s=1.5)

    assert (spec.queue, spec.max_in_flight, spec.timeout_s) == ("q", 5, 1.5)
    assert spec.name == f"{__name__}.{handle.__qualname__}"
    assert spec.name.endswith("<locals>.handle")


# -- calling -------------------------------------------------------------------------------------


async def test_async_handler_runs_on_the_event_loop_thread() -> None:
    threads: list[threading.Thread] = []

    async def handle(body: str) -> None:
        threads.append(threading.current_thread())

    spec = HandlerSpec.from_function(handle)
    await spec.call("x", message())

    assert threads == [threading.current_thread()]


async def test_sync_handler_runs_in_a_worker_thread() -> None:
    seen: list[tuple[threading.Thread, str, Message]] = []

    def handle(body: str, message: Message) -> None:
        seen.append((threading.current_thread(), body, message))

    spec = HandlerSpec.from_function(handle)
    received = message("hello")

    assert not spec.is_async
    await spec.call(spec.decode(received), received)

    [(thread, body, passed)] = seen
    assert thread is not threading.current_thread()
    assert body == "hello"
    assert passed is received


# -- signature errors at registration ------------------------------------------------------------


def test_missing_annotation_is_a_signature_error() -> None:
    async def handle(order) -> None: ...  # type: ignore[no-untyped-def]  # noqa: ANN001

    with pytest.raises(HandlerSignatureError, match="annotate its first parameter 'order'"):
        HandlerSpec.from_function(handle)


def test_extra_required_parameter_is_a_signature_error() -> None:
    async def handle(order: Order, customer: str) -> None: ...

    with pytest.raises(HandlerSignatureError, match="'customer' cannot be filled"):
        HandlerSpec.from_function(handle)


def test_second_message_parameter_is_a_signature_error() -> None:
    async def handle(order: Order, first: Message, second: Message) -> None: ...

    with pytest.raises(HandlerSignatureError, match="'second' cannot be filled"):
        HandlerSpec.from_function(handle)


@pytest.mark.parametrize("kind", ["none", "varargs", "kwargs"])
def test_no_parameter_is_a_signature_error(kind: str) -> None:
    async def none() -> None: ...

    async def varargs(*args: str) -> None: ...

    async def kwargs(**kwargs: str) -> None: ...

    handle = {"none": none, "varargs": varargs, "kwargs": kwargs}[kind]
    with pytest.raises(HandlerSignatureError, match="takes no parameter"):
        HandlerSpec.from_function(handle)


def test_keyword_only_first_parameter_is_a_signature_error() -> None:
    async def handle(*, order: Order) -> None: ...

    with pytest.raises(HandlerSignatureError, match="annotate its first parameter"):
        HandlerSpec.from_function(handle)


def test_unresolvable_annotation_is_a_signature_error() -> None:
    class Local(BaseModel):  # not reachable from the module's globals
        x: int

    async def handle(body: Local) -> None: ...

    with pytest.raises(HandlerSignatureError, match="cannot read its signature"):
        HandlerSpec.from_function(handle)


def test_type_pydantic_cannot_validate_is_a_signature_error() -> None:
    async def handle(body: NotAModel) -> None: ...

    with pytest.raises(HandlerSignatureError):
        HandlerSpec.from_function(handle)


def test_not_callable_is_a_signature_error() -> None:
    with pytest.raises(HandlerSignatureError, match="not callable"):
        HandlerSpec.from_function(42)  # type: ignore[arg-type]


def test_max_in_flight_below_one_is_a_signature_error() -> None:
    async def handle(body: str) -> None: ...

    with pytest.raises(HandlerSignatureError, match="max_in_flight must be at least 1"):
        HandlerSpec.from_function(handle, max_in_flight=0)


def test_signature_error_is_a_config_and_type_error() -> None:
    async def handle() -> None: ...

    with pytest.raises(TypeError):
        HandlerSpec.from_function(handle)
    with pytest.raises(ValueError, match="takes no parameter"):
        HandlerSpec.from_function(handle)


# -- decode errors -------------------------------------------------------------------------------


def test_invalid_fields_give_a_readable_summary() -> None:
    async def handle(order: Order) -> None: ...

    spec = HandlerSpec.from_function(handle)

    with pytest.raises(MessageDecodeError) as info:
        spec.decode(message('{"order_id": 5}'))

    assert str(info.value) == (
        "invalid body: order_id: Input should be a valid string; amount_cents: Field required"
    )
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert isinstance(info.value, ValueError)


def test_invalid_json_is_summarised_as_the_body() -> None:
    async def handle(order: Order) -> None: ...

    spec = HandlerSpec.from_function(handle)

    with pytest.raises(MessageDecodeError, match=r"^invalid body: body: Invalid JSON"):
        spec.decode(message("{not json"))


def test_nested_errors_name_their_path_and_at_most_five_are_listed() -> None:
    async def handle(basket: Basket) -> None: ...

    spec = HandlerSpec.from_function(handle)
    body = '{"lines": [{"sku": 1}, {}, {"sku": 2}, {"sku": 3}, {"sku": 4}, {"sku": 5}, {}]}'

    with pytest.raises(MessageDecodeError) as info:
        spec.decode(message(body))

    text = str(info.value)
    assert text.startswith("invalid body: lines.0.sku: Input should be a valid string; ")
    assert "lines.1.sku: Field required" in text
    assert text.count(";") == 4  # five errors listed, the sixth and seventh left out
    assert "lines.5" not in text


async def test_positional_only_message_parameter_is_filled_or_refused() -> None:
    # Either registration refuses a positional-only `Message` parameter, or calls must fill it:
    # a signature accepted at registration must never fail on every message.
    seen: list[Message] = []

    async def handle(order: Order, message: Message, /) -> None:
        seen.append(message)

    try:
        spec = HandlerSpec.from_function(handle)
    except HandlerSignatureError:
        return
    received = message('{"order_id": "o-1", "amount_cents": 1}')
    await spec.call(spec.decode(received), received)

    assert seen == [received]
