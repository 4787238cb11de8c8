"""OpenTelemetry traces, only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

One trace per task: the edge's submit span (a child of the client's own ``traceparent``
header, when it sends one), the coordinator's batch span, the processor's provider call (a
GenAI client span with ``gen_ai.*`` attributes). The context travels between the services in
the task's Redis hash as a W3C ``traceparent``: the edge writes it in the submit step, the
coordinator replaces it with its own span's before the task can be batched.

With the SDK's metrics API installed (the ``otel`` extra), the processor also records the GenAI
semantic conventions' metrics of its provider calls: ``gen_ai.client.token.usage``,
``gen_ai.client.operation.duration`` and ``gen_ai.server.time_to_first_token`` (the provider's
TTFT as its client sees it), exported over OTLP beside the spans.

Without the variable nothing of OpenTelemetry is imported and every function here returns at
its first line, so a service that does not trace pays one ``is None`` check per call site.
The SDK reads its own variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_BSP_*``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from shared import logs
from shared.config import Env

log = logs.get("sluice.tracing")
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
_meter_provider: Any = None
_instruments: GenAiInstruments | None = None
# The client's traceparent header on the request being handled (the edge's middleware).
incoming: ContextVar[str | None] = ContextVar("sluice_incoming_traceparent", default=None)


def endpoint_of(env: Env) -> str | None:
    """OTEL_EXPORTER_OTLP_ENDPOINT: where spans go; unset, no tracing."""
    return env.optional("OTEL_EXPORTER_OTLP_ENDPOINT")


def setup(service: str, env: Env | None = None) -> bool:
    """Start exporting spans as ``sluice-<service>`` when an OTLP endpoint is configured."""
    global _tracer, _provider, _propagator
    endpoint = endpoint_of(env or Env())
    if not endpoint or _tracer is not None:
        return _tracer is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _provider = TracerProvider(resource=Resource.create({"service.name": f"sluice-{service}"}))
    _provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    _tracer = _provider.get_tracer("sluice")
    _propagator = TraceContextTextMapPropagator()
    log.info("tracing", service=service, endpoint=endpoint)
    try:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    except ImportError:  # an SDK without metrics: spans only
        return True
    setup_metrics(service, PeriodicExportingMetricReader(OTLPMetricExporter()))
    return True


# The GenAI conventions' advised bucket boundaries.
_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
                     40.96, 81.92)
_TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304,
                  16777216, 67108864)
_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                 7.5, 10.0)


@dataclass(frozen=True, slots=True)
class GenAiInstruments:
    tokens: Any
    duration: Any
    ttft: Any


def setup_metrics(service: str, reader: Any) -> None:
    """The GenAI metrics, read by ``reader`` (OTLP in a service; an in-memory reader in a
    test)."""
    global _meter_provider, _instruments
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    _meter_provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({"service.name": f"sluice-{service}"}))
    meter = _meter_provider.get_meter("sluice")
    _instruments = GenAiInstruments(
        tokens=meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}",
            description="Number of input and output tokens used.",
            explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS),
        duration=meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s",
            description="GenAI operation duration.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS),
        ttft=meter.create_histogram(
            "gen_ai.server.time_to_first_token", unit="s",
            description="Time to generate first token for successful responses.",
            explicit_bucket_boundaries_advisory=_TTFT_BUCKETS))


def _call_attributes(model: str) -> dict[str, str]:
    # Issue 26 (several providers) names the provider here from the call's own.
    return {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
            "gen_ai.request.model": model}


def record_call(model: str, seconds: float, *, error: str | None = None,
                input_tokens: int | None = None, output_tokens: int | None = None) -> None:
    """One provider call's duration and, when it answered, its tokens."""
    if _instruments is None:
        return
    attributes = _call_attributes(model)
    if error is not None:
        attributes["error.type"] = error
    _instruments.duration.record(seconds, attributes)
    for kind, n in (("input", input_tokens), ("output", output_tokens)):
        if n is not None:
            _instruments.tokens.record(n, {**attributes, "gen_ai.token.type": kind})


def record_ttft(model: str, seconds: float) -> None:
    if _instruments is not None:
        _instruments.ttft.record(seconds, _call_attributes(model))


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered (at a service's exit)."""
    if _provider is not None:
        _provider.shutdown()
    if _meter_provider is not None:
        _meter_provider.shutdown()


def start(name: str, parent: str | None, kind: str = "internal",
          attributes: Mapping[str, Any] | None = None) -> Any:
    """A started span, child of the W3C ``parent`` traceparent (a new trace without one);
    None when tracing is off."""
    if _tracer is None:
        return None
    from opentelemetry.trace import SpanKind

    context = _propagator.extract({"traceparent": parent}) if parent else None
    return _tracer.start_span(name, context=context, kind=getattr(SpanKind, kind.upper()),
                              attributes=dict(attributes or {}))


def traceparent(span: Any) -> str:
    """The W3C traceparent naming ``span`` ('' for no span)."""
    if span is None:
        return ""
    from opentelemetry.trace import set_span_in_context

    carrier: dict[str, str] = {}
    _propagator.inject(carrier, context=set_span_in_context(span))
    return carrier.get("traceparent", "")


def end(span: Any, error: str | None = None, attributes: Mapping[str, Any] | None = None
        ) -> None:
    if span is None:
        return
    if attributes:
        span.set_attributes(dict(attributes))
    if error is not None:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", error)
        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def client_traceparent() -> str:
    """The client's traceparent header, when well formed ('' if not): kept with the task when
    we do not trace, so every log line of the task names the client's trace."""
    header = incoming.get()
    if not header:
        return ""
    parts = header.split("-")
    ok = (len(parts) == 4 and [len(p) for p in parts] == [2, 32, 16, 2]
          and all(c in "0123456789abcdef" for c in header.replace("-", "")))
    return header if ok else ""


def submit_span(task_id: str, tenant: str) -> Any:
    """The edge's span for one submit, child of the client's traceparent header if any."""
    if _tracer is None:
        return None
    return start("sluice.submit", incoming.get(), "server",
                 {"sluice.task.id": task_id, "sluice.tenant": tenant})
