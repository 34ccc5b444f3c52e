"""Tracing: one CONSUMER span per message, linked to the producer's traceparent or X-Ray header."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind, StatusCode, TraceFlags

from qworker import Reject, tracing
from qworker.exceptions import ConfigError
from qworker.producer import send_bodies
from qworker.role import Identity
from qworker.testing import FakeQueueTransport, FakeSqs, consumer_for
from qworker.tracing import (
    TracingMiddleware,
    parse_traceparent,
    parse_xray_header,
    producer_context,
    send_span,
    tracer_provider,
)
from qworker.transport import Message, MessageAttribute

CANARY = Identity(service="orders-svc", role="canary", version="v7")
XRAY = "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider(resource=tracing.resource(CANARY), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def spans(exporter: InMemorySpanExporter, kind: SpanKind) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind is kind]


def middleware(provider: TracerProvider, queue: str | None = "orders") -> TracingMiddleware:
    return TracingMiddleware(provider.get_tracer("test"), identity=CANARY, queue=queue)


async def handle_ok(body: dict[str, int]) -> None:
    pass


# -- parsing ------------------------------------------------------------------------------------


def test_xray_header_becomes_a_remote_span_context() -> None:
    context = parse_xray_header(XRAY)
    assert context is not None
    assert context.trace_id == 0x5759E988BD862E3FE1BE46A994272793
    assert context.span_id == 0x53995C3F42CD8AD8
    assert context.is_remote
    assert context.trace_flags == TraceFlags.SAMPLED
    unsampled = parse_xray_header(XRAY.replace("Sampled=1", "Sampled=0"))
    assert unsampled is not None
    assert not unsampled.trace_flags.sampled


@pytest.mark.parametrize(
    "header",
    [
        "",
        "Root=1-5759e988-bd862e3fe1be46a994272793",  # no parent: nothing to link to
        "Root=2-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8",
        "Root=1-5759e988-bd862e3fe1be46a99427279;Parent=53995c3f42cd8ad8",
        "Root=1-5759e988-bd862e3fe1be46a99427279z;Parent=53995c3f42cd8ad8",
        "Root=1-00000000-000000000000000000000000;Parent=53995c3f42cd8ad8",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=0000000000000000",
    ],
)
def test_malformed_xray_headers_are_ignored(header: str) -> None:
    assert parse_xray_header(header) is None


def test_traceparent_wins_over_the_xray_header() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    message = Message(
        "m",
        "r",
        "{}",
        attributes={"AWSTraceHeader": XRAY},
        message_attributes={"traceparent": MessageAttribute("String", traceparent)},
    )
    context = producer_context(message)
    assert context is not None
    assert context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    bad = Message(
        "m",
        "r",
        "{}",
        attributes={"AWSTraceHeader": XRAY},
        message_attributes={"traceparent": MessageAttribute("String", "garbage")},
    )
    fallback = producer_context(bad)
    assert fallback is not None
    assert fallback.span_id == 0x53995C3F42CD8AD8
    assert producer_context(Message("m", "r", "{}")) is None


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_traceparent_and_tracestate_become_a_remote_span_context() -> None:
    context = parse_traceparent(TRACEPARENT, "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
    assert context is not None
    assert context.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert context.span_id == 0xB7AD6B7169203331
    assert context.is_remote
    assert context.trace_flags.sampled
    assert dict(context.trace_state) == {"congo": "t61rcWkgMzE", "rojo": "00f067aa0ba902b7"}
    unsampled = parse_traceparent(TRACEPARENT.removesuffix("01") + "00")
    assert unsampled is not None
    assert not unsampled.trace_flags.sampled


@pytest.mark.parametrize(
    "traceparent",
    [
        "",
        "garbage",
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # version ff is invalid
        f"{TRACEPARENT}-extra",  # version 00 takes no further fields
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",  # upper case is not allowed
        "00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01",
    ],
)
def test_invalid_traceparents_are_ignored(traceparent: str) -> None:
    assert parse_traceparent(traceparent) is None


def test_a_later_version_may_carry_more_fields_and_a_bad_tracestate_is_dropped() -> None:
    later = parse_traceparent(TRACEPARENT.replace("00-", "01-", 1) + "-more")
    assert later is not None
    assert later.span_id == 0xB7AD6B7169203331
    kept = parse_traceparent(TRACEPARENT, "not a list member")
    assert kept is not None
    assert kept.trace_id == 0x0AF7651916CD43DD8448EB211C80319C
    assert len(kept.trace_state) == 0


def test_what_the_producer_injects_the_consumer_parses(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("send orders") as span:
        carrier: dict[str, str] = {}
        tracing.inject_trace_context(carrier)
        sent = span.get_span_context()
    parsed = parse_traceparent(carrier["traceparent"], carrier.get("tracestate"))
    assert parsed is not None
    assert (parsed.trace_id, parsed.span_id) == (sent.trace_id, sent.span_id)


# -- consumer spans -----------------------------------------------------------------------------


async def test_consumer_span_is_linked_to_the_producer_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = FakeSqs().create_queue("orders")
    with provider.get_tracer("producer").start_as_current_span("send", kind=SpanKind.PRODUCER):
        await send_bodies(queue, [json.dumps({"n": 1})])
    assert "traceparent" in queue.messages[0].message_attributes
    consumer = consumer_for(queue, handle_ok, identity=CANARY, middleware=[middleware(provider)])
    await consumer.run_until_empty()

    (producer,) = spans(exporter, SpanKind.PRODUCER)
    (span,) = spans(exporter, SpanKind.CONSUMER)
    assert span.name == "process orders"
    assert [link.context.span_id for link in span.links] == [producer.context.span_id]
    assert span.links[0].context.trace_id == producer.context.trace_id
    assert span.parent is None  # linked, not parented: each delivery is its own trace
    attributes = dict(span.attributes or {})
    assert attributes["messaging.system"] == "aws_sqs"
    assert attributes["messaging.destination.name"] == "orders"
    assert attributes["messaging.operation.type"] == "process"
    assert attributes["messaging.message.id"] == queue.deleted[0].message_id
    assert attributes["messaging.aws_sqs.message.receive_count"] == 1
    assert attributes["qworker.deployment.role"] == "canary"
    assert attributes["service.version"] == "v7"
    assert attributes["qworker.outcome"] == "succeeded"
    assert span.status.status_code is StatusCode.UNSET
    assert span.resource.attributes["service.version"] == "v7"
    assert span.resource.attributes["service.name"] == "orders-svc"


async def test_consumer_span_is_linked_to_the_aws_trace_header(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = FakeSqs().create_queue("orders")
    await queue.send(json.dumps({"n": 1}))
    queue.messages[0].trace_header = XRAY
    consumer = consumer_for(queue, handle_ok, identity=CANARY, middleware=[middleware(provider)])
    await consumer.run_until_empty()
    (span,) = spans(exporter, SpanKind.CONSUMER)
    assert span.links[0].context.trace_id == 0x5759E988BD862E3FE1BE46A994272793


async def test_failed_and_rejected_messages_get_an_error_status(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    sqs = FakeSqs()
    queue = sqs.create_queue("orders", dead_letter="orders-dlq")
    for n in range(3):
        await queue.send(json.dumps({"n": n}))
    failures = 0

    async def handle(body: dict[str, int]) -> None:
        nonlocal failures
        if body["n"] == 1 and not failures:
            failures += 1
            raise ValueError("bad order")
        if body["n"] == 2:
            raise Reject("never valid")

    consumer = consumer_for(
        queue,
        handle,
        identity=CANARY,
        middleware=[middleware(provider)],
        dead_letter=sqs.queue("orders-dlq"),
    )
    await consumer.run_until_empty()
    by_outcome: dict[object, list[ReadableSpan]] = {}
    for span in spans(exporter, SpanKind.CONSUMER):
        by_outcome.setdefault((span.attributes or {})["qworker.outcome"], []).append(span)
    failed = by_outcome["failed"][0]
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.status.description == "ValueError: bad order"
    assert by_outcome["rejected"][0].status.status_code is StatusCode.ERROR
    assert by_outcome["succeeded"][0].status.status_code is StatusCode.UNSET


async def test_span_name_is_completed_from_the_outcome_without_a_queue_hint(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = FakeSqs().create_queue("payments")
    await queue.send(json.dumps({"n": 1}))
    tracer = middleware(provider, queue=None)
    await consumer_for(queue, handle_ok, identity=CANARY, middleware=[tracer]).run_until_empty()
    (span,) = spans(exporter, SpanKind.CONSUMER)
    assert span.name == "process payments"
    assert (span.attributes or {})["messaging.destination.name"] == "payments"


async def test_handler_spans_nest_under_the_consumer_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = FakeSqs().create_queue("orders")
    await queue.send(json.dumps({"n": 1}))

    async def handle(body: dict[str, int]) -> None:
        with provider.get_tracer("handler").start_as_current_span("charge card"):
            pass

    consumer = consumer_for(queue, handle, identity=CANARY, middleware=[middleware(provider)])
    await consumer.run_until_empty()
    (consumer_span,) = spans(exporter, SpanKind.CONSUMER)
    (inner,) = spans(exporter, SpanKind.INTERNAL)
    assert inner.parent is not None
    assert inner.parent.span_id == consumer_span.context.span_id


async def test_cancelled_handler_ends_its_span_marked_cancelled(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    queue = FakeSqs().create_queue("orders")
    await queue.send(json.dumps({"n": 1}))
    started = asyncio.Event()

    async def handle(body: dict[str, int]) -> None:
        started.set()
        await asyncio.Event().wait()  # never returns: the grace period cancels it

    consumer = consumer_for(
        queue, handle, identity=CANARY, middleware=[middleware(provider)], shutdown_grace_s=0
    )
    run = asyncio.create_task(consumer.run())
    async with asyncio.timeout(5):
        await started.wait()
        consumer.stop()
        await run
    (span,) = spans(exporter, SpanKind.CONSUMER)
    assert (span.attributes or {})["qworker.cancelled"] is True
    assert consumer.statistics().released == 1


async def test_unsampled_messages_export_nothing(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0)), shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    queue = FakeSqs().create_queue("orders")
    await queue.send(json.dumps({"n": 1}))
    queue.messages[0].trace_header = XRAY  # sampled upstream, but only linked: the ratio decides
    await consumer_for(
        queue, handle_ok, identity=CANARY, middleware=[middleware(provider)]
    ).run_until_empty()
    provider.shutdown()
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("ratio", [0.0, 0.25, 1.0])
async def test_the_middleware_applies_the_ratio_and_unsampled_calls_still_carry_a_context(
    exporter: InMemorySpanExporter, ratio: float
) -> None:
    provider = tracer_provider(
        exporter="console", sample_ratio=ratio, identity=CANARY, consumer=True
    )
    assert provider is not None
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    queue = FakeSqs().create_queue("orders")
    for n in range(400):
        await queue.send(json.dumps({"n": n}))
    seen: list[trace.SpanContext] = []

    async def handle(body: dict[str, int]) -> None:
        seen.append(trace.get_current_span().get_span_context())

    tracer = provider.get_tracer("test")
    layer = TracingMiddleware(tracer, identity=CANARY, queue="orders", sample_ratio=ratio)
    await consumer_for(queue, handle, identity=CANARY, middleware=[layer]).run_until_empty()
    provider.shutdown()

    recorded = len(spans(exporter, SpanKind.CONSUMER))
    assert len(seen) == 400
    assert all(c.is_valid for c in seen)  # every handler runs inside a span context
    assert sum(c.trace_flags.sampled for c in seen) == recorded
    if ratio in (0.0, 1.0):
        assert recorded == 400 * ratio
    else:
        assert 40 <= recorded <= 160  # 100 expected; the bounds are > 6 standard deviations wide


def test_sample_ratio_outside_0_1_is_refused(provider: TracerProvider) -> None:
    with pytest.raises(ValueError, match="sample_ratio"):
        TracingMiddleware(provider.get_tracer("t"), identity=CANARY, sample_ratio=1.5)


# -- producers ----------------------------------------------------------------------------------


async def sent_attributes(queue: FakeQueueTransport) -> dict[str, object]:
    return {k: v.value for k, v in queue.messages[-1].message_attributes.items()}


async def test_send_without_a_span_adds_no_traceparent() -> None:
    queue = FakeSqs().create_queue("orders")
    await send_bodies(queue, ["{}"], attributes={"kind": "order"})
    assert await sent_attributes(queue) == {"kind": "order"}


async def test_send_keeps_a_given_traceparent_and_respects_the_attribute_limit(
    provider: TracerProvider,
) -> None:
    queue = FakeSqs().create_queue("orders")
    given = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    full = {f"a{i}": "x" for i in range(9)}
    with provider.get_tracer("p").start_as_current_span("send"):
        await send_bodies(queue, ["{}"], attributes={"traceparent": given})
        assert (await sent_attributes(queue))["traceparent"] == given
        await send_bodies(queue, ["{}"], attributes=full)
        assert "traceparent" not in await sent_attributes(queue)  # 9 + 2 would pass SQS's 10


async def test_qworker_send_span_injects_traceparent() -> None:
    queue = FakeSqs().create_queue("orders")
    with send_span("orders", identity=Identity(service="shop")):
        await send_bodies(queue, ["{}", "{}"])
    contexts = [producer_context(_as_message(queue, i)) for i in range(2)]
    assert all(c is not None and c.is_valid for c in contexts)
    assert len({(c.trace_id, c.span_id) for c in contexts if c}) == 1  # one span for the batch


def _as_message(queue: FakeQueueTransport, index: int) -> Message:
    stored = queue.messages[index]
    return Message(
        stored.message_id, "r", stored.body, message_attributes=stored.message_attributes
    )


# -- configuration ------------------------------------------------------------------------------


def test_exporter_none_means_no_tracing() -> None:
    assert tracer_provider(exporter="none", sample_ratio=1.0, identity=CANARY) is None


def test_console_exporter_builds_a_parent_based_provider() -> None:
    provider = tracer_provider(exporter="console", sample_ratio=0.25, identity=CANARY)
    assert provider is not None
    try:
        assert isinstance(provider.sampler, ParentBased)
        assert "0.25" in str(provider.sampler.get_description())  # type: ignore[no-untyped-call]
        assert provider.resource.attributes["qworker.deployment.role"] == "canary"
    finally:
        provider.shutdown()


def test_otlp_without_its_package_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> object:
        raise ImportError(name)

    monkeypatch.setattr("qworker.tracing.importlib.import_module", missing)
    with pytest.raises(ConfigError, match="pip install opentelemetry-exporter-otlp"):
        tracer_provider(exporter="otlp", sample_ratio=1.0, identity=CANARY)


def test_unknown_exporter_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="unknown"):
        tracer_provider(exporter="zipkin", sample_ratio=1.0, identity=CANARY)
