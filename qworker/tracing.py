"""Tracing: one OpenTelemetry CONSUMER span per message, linked to the producer's context.

`TracingMiddleware` wraps the handler call (a middleware): it opens `process <queue>` with the
messaging semantic-convention attributes, the worker's role and version, and records the outcome
(`failed` and `rejected` set an error status). The span is linked, not parented, to the context
the producer sent: the `traceparent` message attribute (W3C Trace Context), or else the
`AWSTraceHeader` system attribute that SQS fills from X-Ray. A message may wait for hours and be
delivered many times, so each delivery starts its own trace and points back to the send
(https://opentelemetry.io/docs/specs/semconv/messaging/messaging-spans/, "Context propagation").
`traceparent`/`tracestate` are read and written by OpenTelemetry's own W3C propagator
(`TraceContextTextMapPropagator`); the X-Ray header by `parse_xray_header()` (see there why).

The producer side, `inject_trace_context()`, adds `traceparent` to outgoing messages when the
current span context is valid; `qworker send` opens a PRODUCER span for that (`send_span()`).
Sampling is parent-based with a ratio for root spans; the exporter is `none` (no spans at all),
`console` (stderr: stdout carries EMF) or `otlp` (needs `opentelemetry-exporter-otlp`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import random
import sys
from collections.abc import Iterator, MutableMapping
from typing import Final, final

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    Tracer,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from qworker.dispatch import Dispatch
from qworker.exceptions import ConfigError
from qworker.message import Message
from qworker.outcome import Outcome, OutcomeRecord
from qworker.role import Identity

__all__ = [
    "AWS_TRACE_HEADER",
    "TRACEPARENT",
    "TracingMiddleware",
    "inject_trace_context",
    "parse_traceparent",
    "parse_xray_header",
    "producer_context",
    "send_span",
    "tracer_provider",
]

TRACEPARENT: Final = "traceparent"
TRACESTATE: Final = "tracestate"
AWS_TRACE_HEADER: Final = "AWSTraceHeader"
"""The SQS system attribute carrying an X-Ray trace header."""

# Messaging semantic conventions (semconv 1.27+ names).
MESSAGING_SYSTEM: Final = "messaging.system"
MESSAGING_DESTINATION: Final = "messaging.destination.name"
MESSAGING_OPERATION_TYPE: Final = "messaging.operation.type"
MESSAGING_OPERATION_NAME: Final = "messaging.operation.name"
MESSAGING_MESSAGE_ID: Final = "messaging.message.id"
SQS_RECEIVE_COUNT: Final = "messaging.aws_sqs.message.receive_count"
"""No convention names SQS's receive count; this follows the `messaging.<system>.message.*` form."""
# qworker's own attributes.
ROLE: Final = "qworker.deployment.role"
OUTCOME: Final = "qworker.outcome"
HANDLER: Final = "qworker.handler"
MESSAGE_TYPE: Final = "qworker.message_type"
CANCELLED: Final = "qworker.cancelled"
SERVICE_VERSION: Final = "service.version"

EXPORTERS: Final = ("none", "console", "otlp")
_ERROR_OUTCOMES: Final = frozenset({Outcome.FAILED, Outcome.REJECTED})
_PROPAGATOR: Final = TraceContextTextMapPropagator()
_ROOT: Final = context.Context()
_ID_SPACE: Final = 1 << 64
_OTLP_MODULES: Final = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter",
)


def parse_xray_header(header: str) -> SpanContext | None:
    """Parse an X-Ray trace header (`Root=1-5759e988-bd862e3fe1be46a994272793;Parent=...;...`).

    OpenTelemetry's X-Ray propagator (`AwsXRayPropagator`) is not used: it lives in the separate
    `opentelemetry-propagator-aws-xray` package, which qworker does not depend on (only the API and
    the SDK are installed), and pulling it in for this fixed `key=value;` format is not worth a
    dependency in every worker image. This parser follows the same rules: version 1, a 32-hex-digit
    trace id split 8/24, a 16-hex-digit parent, `Sampled=1` for sampled; anything else is ignored.

    Returns:
        The remote span context it names, or None if the header is malformed or has no parent.
    """
    fields = {}
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        fields[key] = value
    root, parent = fields.get("Root", ""), fields.get("Parent", "")
    version, _, rest = root.partition("-")
    epoch, _, unique = rest.partition("-")
    if version != "1" or len(epoch) != 8 or len(unique) != 24 or len(parent) != 16:  # noqa: PLR2004 (X-Ray's id sizes)
        return None
    try:
        trace_id, span_id = int(epoch + unique, 16), int(parent, 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    sampled = TraceFlags.SAMPLED if fields.get("Sampled") == "1" else TraceFlags.DEFAULT
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(sampled))


def parse_traceparent(traceparent: str, tracestate: str | None = None) -> SpanContext | None:
    """Parse W3C `traceparent`/`tracestate` with OpenTelemetry's TraceContextTextMapPropagator.

    The propagator applies the Trace Context rules (https://www.w3.org/TR/trace-context/): version
    `ff` and all-zero ids are invalid, version `00` takes no trailing fields, later versions may
    add some, and a malformed `tracestate` is dropped while the `traceparent` is kept.

    Returns:
        The remote span context, or None if the header is invalid.
    """
    carrier = {TRACEPARENT: traceparent}
    if tracestate:
        carrier[TRACESTATE] = tracestate
    found = trace.get_current_span(_PROPAGATOR.extract(carrier, context=_ROOT)).get_span_context()
    return found if found.is_valid else None


def producer_context(message: Message) -> SpanContext | None:
    """The context the producer sent: `traceparent` first, else the `AWSTraceHeader` attribute."""
    traceparent = message.attribute(TRACEPARENT)
    if traceparent:
        found = parse_traceparent(traceparent, message.attribute(TRACESTATE))
        if found is not None:
            return found
    header = message.attributes.get(AWS_TRACE_HEADER)
    return parse_xray_header(header) if header else None


@final
class TracingMiddleware:
    """Opens one CONSUMER span per message around the handler call (a dispatch `Middleware`)."""

    def __init__(
        self,
        tracer: Tracer,
        *,
        identity: Identity,
        queue: str | None = None,
        sample_ratio: float = 1.0,
    ) -> None:
        """Trace with `tracer`.

        Args:
            tracer: Where spans go.
            identity: The worker's role and version, put on every span.
            queue: The queue, when the worker has one, so the span has its final name at start;
                otherwise the name is completed from the outcome.
            sample_ratio: Share of messages whose span is recorded, decided here, before the SDK
                is asked for a span (1: leave every decision to the tracer's sampler).
        """
        if not 0 <= sample_ratio <= 1:
            raise ValueError("sample_ratio must be between 0 and 1")
        self._tracer = tracer
        # The same rule as the SDK's TraceIdRatioBased: keep a trace when the low 64 bits of its
        # (random) id fall under ratio * 2**64.
        self._bound = round(sample_ratio * _ID_SPACE)
        self._queue = queue
        self._name = f"process {queue}" if queue is not None else "process"
        self._static: dict[str, str | int] = {
            MESSAGING_SYSTEM: "aws_sqs",
            MESSAGING_OPERATION_TYPE: "process",
            MESSAGING_OPERATION_NAME: "process",
            ROLE: identity.role,
            SERVICE_VERSION: identity.version,
        }
        if queue is not None:
            self._static[MESSAGING_DESTINATION] = queue

    async def __call__(self, message: Message, call_next: Dispatch) -> OutcomeRecord:
        """Process `message` inside its span."""
        if self._bound < _ID_SPACE and random.getrandbits(64) >= self._bound:
            return await self._unsampled(message, call_next)
        return await self._sampled(message, call_next)

    @staticmethod
    async def _unsampled(message: Message, call_next: Dispatch) -> OutcomeRecord:
        # Most messages: no SDK span at all (start_span costs several microseconds), just a
        # non-recording span context, so calls the handler makes still carry "not sampled".
        span = NonRecordingSpan(
            SpanContext(
                random.getrandbits(128) or 1,
                random.getrandbits(64) or 1,
                is_remote=False,
                trace_flags=TraceFlags(TraceFlags.DEFAULT),
            )
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            return await call_next(message)
        finally:
            context.detach(token)

    async def _sampled(self, message: Message, call_next: Dispatch) -> OutcomeRecord:
        # start_span and attach by hand (the generator-based start_as_current_span costs twice as
        # much). Every attribute and the producer link go in at start, in one dict and one list
        # (each set_attribute or add_link after it takes the span's lock and checks again), and
        # the outcome's in one set_attributes at the end. Reaching here, the span is kept: the
        # ratio was applied above, and the samplers used here decide on the trace id alone.
        attributes = dict(self._static)
        attributes[MESSAGING_MESSAGE_ID] = message.message_id
        attributes[SQS_RECEIVE_COUNT] = message.receive_count
        producer = producer_context(message)
        span = self._tracer.start_span(
            self._name,
            context=_ROOT,  # a root span: the producer is a link, whatever the ambient context
            kind=SpanKind.CONSUMER,
            attributes=attributes,
            links=None if producer is None else (Link(producer),),
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            record = await call_next(message)
        except asyncio.CancelledError:
            span.set_attribute(CANCELLED, value=True)  # the consumer releases the message
            raise
        except Exception as exc:  # a bug in the machinery: record it, let it propagate
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        else:
            if span.is_recording():
                self._describe(span, record)
            return record
        finally:
            context.detach(token)
            span.end()

    def _describe(self, span: Span, record: OutcomeRecord) -> None:
        attributes: dict[str, str] = {OUTCOME: record.outcome.value, HANDLER: record.handler}
        if record.queue != self._queue:
            span.update_name(f"process {record.queue}")
            attributes[MESSAGING_DESTINATION] = record.queue
        if record.message_type is not None:
            attributes[MESSAGE_TYPE] = record.message_type
        span.set_attributes(attributes)
        if record.outcome in _ERROR_OUTCOMES:
            span.set_status(Status(StatusCode.ERROR, record.error))


def inject_trace_context(attributes: MutableMapping[str, str]) -> None:
    """Add the current span's `traceparent` (and `tracestate`), if there is a valid current span."""
    if trace.get_current_span().get_span_context().is_valid:
        _PROPAGATOR.inject(attributes)


def resource(identity: Identity) -> Resource:
    """The OpenTelemetry resource describing this worker."""
    attributes: dict[str, str] = {
        "service.name": identity.service,
        SERVICE_VERSION: identity.version,
        ROLE: identity.role,
    }
    if identity.task_id:
        attributes["service.instance.id"] = identity.task_id
    return Resource.create(attributes)


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter(out=sys.stderr)  # stdout carries EMF
    for module_name in _OTLP_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        exporter: SpanExporter = module.OTLPSpanExporter()
        return exporter
    raise ConfigError(
        "QWORKER_OTEL_EXPORTER=otlp (--otel-exporter otlp) needs the OTLP exporter: "
        "pip install opentelemetry-exporter-otlp, or choose none or console"
    )


def tracer_provider(
    *, exporter: str, sample_ratio: float, identity: Identity, consumer: bool = False
) -> TracerProvider | None:
    """Build the tracer provider the settings ask for (None: `none`, no tracing).

    In a worker (`consumer=True`) the `TracingMiddleware` applies the ratio to its root spans
    itself, and everything else follows its parent: the provider samples roots always.

    Raises:
        ConfigError: An unknown exporter, or `otlp` without its package.
    """
    if exporter not in EXPORTERS:
        raise ConfigError(f"unknown QWORKER_OTEL_EXPORTER {exporter!r}: use one of {EXPORTERS}")
    if exporter == "none":
        return None
    span_exporter = _exporter(exporter)
    provider = TracerProvider(
        resource=resource(identity),
        sampler=ParentBased(ALWAYS_ON if consumer else TraceIdRatioBased(sample_ratio)),
        shutdown_on_exit=False,  # the worker shuts it down itself, after the last span
    )
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    return provider


@contextlib.contextmanager
def send_span(
    queue: str, *, identity: Identity, exporter: str = "none", sample_ratio: float = 1.0
) -> Iterator[None]:
    """Open a PRODUCER span `send <queue>` for `qworker send`, so the messages carry `traceparent`.

    With the exporter `none` the span is not exported, but its ids are real: a consumer that does
    export still links to them.

    Args:
        queue: The queue sent to.
        identity: Service, role and version (the span's resource).
        exporter: `none`, `console` or `otlp`.
        sample_ratio: Share of traces sampled.
    """
    provider = tracer_provider(
        exporter=exporter, sample_ratio=sample_ratio, identity=identity
    ) or TracerProvider(resource=resource(identity), shutdown_on_exit=False)
    tracer = provider.get_tracer(__name__)
    try:
        with tracer.start_as_current_span(
            f"send {queue}",
            kind=SpanKind.PRODUCER,
            attributes={
                MESSAGING_SYSTEM: "aws_sqs",
                MESSAGING_DESTINATION: queue,
                MESSAGING_OPERATION_TYPE: "send",
                MESSAGING_OPERATION_NAME: "send",
            },
        ):
            yield
    finally:
        provider.shutdown()
