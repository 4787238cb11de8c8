"""OpenTelemetry traces, only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set.

One trace per task: the edge's submit span (a child of the client's own ``traceparent``
header, when it sends one), the coordinator's batch span, the processor's provider call (a
GenAI client span with ``gen_ai.*`` attributes). The context travels between the services in
the task's Redis hash as a W3C ``traceparent``: the edge writes it in the submit step, the
coordinator replaces it with its own span's before the task can be batched.

Without the variable nothing of OpenTelemetry is imported and every function here returns at
its first line, so a service that does not trace pays one ``is None`` check per call site.
The SDK reads its own variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_BSP_*``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from shared import logs
from shared.config import Env

log = logs.get("sluice.tracing")
_tracer: Any = None
_provider: Any = None
_propagator: Any = None
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
    return True


def enabled() -> bool:
    return _tracer is not None


def shutdown() -> None:
    """Export what is buffered (at a service's exit)."""
    if _provider is not None:
        _provider.shutdown()


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


def submit_span(task_id: str, tenant: str) -> Any:
    """The edge's span for one submit, child of the client's traceparent header if any."""
    if _tracer is None:
        return None
    return start("sluice.submit", incoming.get(), "server",
                 {"sluice.task.id": task_id, "sluice.tenant": tenant})
