"""Prometheus metrics of every service, in one place.

Call sites stay one line (``metrics.tasks_finished.labels(status, tenant).inc()``); the names,
help texts, buckets and label rules live here. Names follow Prometheus conventions (a
``sluice_`` prefix, base units, ``_total`` counters); the LLM figures are named after vLLM's
(time to first token, inter-token latency, e2e request latency, prompt and generation tokens)
so existing dashboards read them.

Cardinality is bounded by construction: no label ever holds a task id, routes are the router's
templates, ``model`` holds a model the edge accepted (``AI_MODELS``, at most MAX_MODELS, the rest
``other``), and ``tenant`` holds at most ``METRICS_MAX_TENANTS`` tenants, the first seen, the rest
counted as ``other`` (``METRICS_TENANT_LABEL=false``: empty, which Prometheus drops, so the
series has no tenant at all).

A provider call's series (``CALL``: requests, tokens, TTFT, inter-token latency, calls in
flight, 429s, pauses) say who was called: ``provider``, a PROVIDERS_FILE entry's name
(``default`` without the file), and ``model``, the name that provider was asked for (the
route's model; without the file, the model the task named). A task's own series (finished,
queue wait, end to end, the client's TTFT) keep ``model`` as the client named it: one task may
call several providers. Both come from the file (at most MAX_MODELS route models, the rest
``other``). The governor's gauges and the breaker's state are a provider's, labelled
``provider`` alone.

One label name for an HTTP status: ``status`` (``sluice_provider_requests_total`` called it
``code`` before; a query on ``code`` finds nothing now).

Every family is in prometheus-client's default registry; each process serves only its own
(``ROLE_FAMILIES``, ``registry(role)``), with the process collector (CPU seconds, memory, fds).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from shared import logs
from shared.config import Env, Secret

log = logs.get("sluice.metrics")
OTHER_TENANT = "other"

# --- buckets (seconds): LLM calls run from milliseconds to many minutes ------------------------
_TTFT = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
         80.0, 160.0, 320.0, 640.0)
_ITL = (0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
        10.0, 20.0, 40.0, 80.0)
_LONG = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0,
         600.0, 1200.0, 1800.0, 3600.0, 7200.0)
_HTTP = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_SIZE = (1, 2, 3, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    port: int            # METRICS_PORT: the coordinator's, processor's and mock's listener
    host: str
    tenant_label: bool
    max_tenants: int
    token: Secret[str]   # METRICS_TOKEN: a bearer token for the edge's /metrics ('': none)

    @classmethod
    def from_env(cls, env: Env, default_port: int = 0) -> MetricsSettings:
        return cls(
            port=env.integer("METRICS_PORT", default_port, min_value=0, max_value=65535),
            host=env.text("METRICS_HOST", "0.0.0.0"),
            tenant_label=env.flag("METRICS_TENANT_LABEL", True),
            max_tenants=env.integer("METRICS_MAX_TENANTS", 20, min_value=1, max_value=10_000),
            token=Secret(env.optional("METRICS_TOKEN", secret=True) or ""),
        )


class TenantLabels:
    """A capped label's value: '' when off, the value itself for the first ``cap`` values
    seen, then 'other'. The first come keep their series for the life of the process (a
    ranking that moved would end one series and start another, and a counter's rate across
    the move would be wrong)."""

    def __init__(self, enabled: bool = False, cap: int = 20) -> None:
        self.enabled, self.cap = enabled, cap
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, tenant: str) -> str:
        if not self.enabled:
            return ""
        if tenant in self._seen:
            return tenant
        with self._lock:
            if len(self._seen) < self.cap:
                self._seen.add(tenant)
                return tenant
        return OTHER_TENANT


MAX_MODELS = 50
tenant_label = TenantLabels(True, 20)  # as METRICS_TENANT_LABEL's and METRICS_MAX_TENANTS'
#                                        defaults, until configure()
model_label = TenantLabels(True, MAX_MODELS)
route_model_label = TenantLabels(True, MAX_MODELS)  # the models providers are asked for


def configure(settings: MetricsSettings) -> None:
    """Apply the settings that shape labels (once, at start)."""
    global tenant_label
    tenant_label = TenantLabels(settings.tenant_label, settings.max_tenants)
    from shared import rollup  # it imports this module

    rollup.configure(settings.max_tenants)


def tenant(name: str) -> str:
    return tenant_label(name)


def model(name: str | None) -> str:
    """The model label: the model the task named (the edge filled in the default)."""
    return model_label(name or "")


def call_labels(provider: str, route_model: str) -> tuple[str, str]:
    """A provider call's ``provider`` and ``model`` labels: the provider's name and the model
    it is asked for, capped as :func:`model` is (a route is taken once per target, see
    services/processor/routing.py, so this runs once per model, not per call)."""
    return provider, route_model_label(route_model)


_children: dict[tuple[Any, tuple[str, ...]], Any] = {}


def child(metric: Any, *values: str) -> Any:
    """``metric.labels(*values)``, kept: the series a task updates once each (submitted,
    finished) without labels()'s lock and checks every time. As many as the labels allow
    (tenants are capped, see TenantLabels)."""
    key = (metric, values)
    found = _children.get(key)
    if found is None:
        found = _children[key] = metric.labels(*values)
    return found


# --- edge -------------------------------------------------------------------------------------
tasks_submitted = Counter("sluice_tasks_submitted", "Tasks accepted (202) by the edge.",
                          ["tenant"])
tasks_requeued = Counter("sluice_tasks_requeued",
                         "Failed tasks put back in the queue (the retry endpoint or button).")
http_requests = Counter("sluice_http_requests", "HTTP requests answered, by route template.",
                        ["service", "route", "method", "status"])
http_duration = Histogram("sluice_http_request_duration_seconds",
                          "Time to answer an HTTP request (a stream: until it ends).",
                          ["service", "route"], buckets=_HTTP)
sse_clients = Gauge("sluice_sse_clients", "Clients connected to a task's event stream.")
events_relayed = Counter("sluice_events_relayed", "Task events sent to clients over SSE.")
queue_depth = Gauge("sluice_queue_depth", "Unfinished tasks by where they are, read from Redis at "
                    "scrape time (queued: not yet placed by a coordinator; waiting: placed, in "
                    "the fair waiting room; batched: flushed, not yet taken; running: on a "
                    "processor).", ["state"])
DEPTH_STATES = ("queued", "waiting", "batched", "running")
dead_letters = Gauge("sluice_dead_letters", "Tasks in the dead letters (failed for good, not "
                     "retried), read from Redis at scrape time.")
processors_alive = Gauge("sluice_processors_alive", "Processors with a live heartbeat.")
processor_free_slots = Gauge("sluice_processor_free_slots",
                             "Free task slots of the live processors, together.")
coordinators_alive = Gauge("sluice_coordinators_alive", "Coordinators with a live heartbeat.")

# --- coordinator ------------------------------------------------------------------------------
tasks_placed = Counter("sluice_tasks_placed", "Task stream entries this coordinator placed "
                       "into the open batch (a reclaimed entry counts again).")
reclaims = Counter("sluice_reclaims", "Stream entries taken over from a dead consumer.",
                   ["what"])

# --- processor --------------------------------------------------------------------------------
# The labels of every provider-call series: who was called, asked for which model (see the
# module's docstring); services/processor/telemetry.py passes them first, from call_labels().
CALL = ["provider", "model"]
tasks_finished = Counter("sluice_tasks_finished", "Tasks this processor made terminal.",
                         ["status", "model", "tenant"])
task_retries = Counter("sluice_task_retries", "Provider calls made again for a task after a "
                       "retryable failure (or after its previous holder died).")
tasks_dead_lettered = Counter("sluice_tasks_dead_lettered",
                              "Tasks that failed for good and went to the dead letters.")
queue_wait = Histogram("sluice_queue_wait_seconds",
                       "From submit to the task's first provider call.", ["model", "tenant"],
                       buckets=_LONG)
e2e_latency = Histogram("sluice_e2e_request_latency_seconds",
                        "From submit to terminal: the task's whole duration.",
                        ["model", "tenant"], buckets=_LONG)
ttft = Histogram("sluice_time_to_first_token_seconds",
                 "From the provider call to its first token (reasoning or content).",
                 [*CALL, "tenant"], buckets=_TTFT)
client_ttft = Histogram("sluice_client_time_to_first_token_seconds",
                        "From submit to the task's first token: what the client waits for "
                        "(queue wait, retries and the provider's own TTFT).",
                        ["model", "tenant"], buckets=_LONG)
itl = Histogram("sluice_inter_token_latency_seconds", "Between two pieces of a streamed answer "
                "as they arrive (one network read can carry several tokens).", CALL,
                buckets=_ITL)
tokens = Counter("sluice_tokens", "Tokens by kind, as the provider reported them.",
                 ["kind", *CALL, "tenant"])
prompt_tokens = Counter("sluice_prompt_tokens", "Prompt tokens processed (vLLM's name).",
                        [*CALL, "tenant"])
generation_tokens = Counter("sluice_generation_tokens",
                            "Generated tokens, reasoning included (vLLM's name).",
                            [*CALL, "tenant"])
provider_requests = Counter("sluice_provider_requests", "Provider calls by HTTP status "
                            "('error': no status, the connection failed or timed out).",
                            [*CALL, "status"])
provider_rate_limited = Counter("sluice_provider_rate_limited",
                                "Provider answers 429 (rate limited).", CALL)
provider_pauses = Counter("sluice_provider_pauses", "Waits before a retry the provider asked "
                          "for with Retry-After.", CALL)
provider_pause_seconds = Counter("sluice_provider_pause_seconds",
                                 "Seconds asked for by the provider's Retry-After, capped.",
                                 CALL)
provider_in_flight = Gauge("sluice_provider_calls_in_flight",
                           "Provider calls open right now on this processor.", CALL)
# Issue 11's governor: its window and calls in flight. It sets these through set_governor().
governor_window = Gauge("sluice_governor_window",
                        "The provider governor's window: calls it lets run at once.",
                        ["provider"])
governor_in_flight = Gauge("sluice_governor_calls_in_flight",
                           "Calls the provider governor has let through and not yet seen end.",
                           ["provider"])
breaker_state = Gauge("sluice_provider_breaker_state", "Each provider's breaker as this "
                      "processor last saw it: 0 closed, 1 half open (a probe is out), 2 open.",
                      ["provider"])
batches_taken = Counter("sluice_batches_taken", "Batches a processor took from the stream.")
batch_size = Histogram("sluice_batch_size", "Tasks per batch, as processors take them.",
                       buckets=_SIZE)
lease_renewals = Counter("sluice_lease_renewals", "Task leases renewed.")
leases_lost = Counter("sluice_leases_lost", "Task leases found taken by another holder.")
fence_rejections = Counter("sluice_fence_rejections", "Result writes refused because a newer "
                           "holder's fence was already stored.")

# --- everyone ---------------------------------------------------------------------------------
redis_errors = Counter("sluice_redis_errors", "Redis calls that failed (unreachable, timeout), "
                       "by loop.", ["loop"])
store_errors = Counter("sluice_store_errors", "Store writes that failed.")


class BatchesFlushed(Collector):
    """``sluice_batches_flushed_total{reason}``: batches flushed by reason (size: full; timer;
    idle: adaptive, processors had room; forced: the end of a burst). batch.lua counts them in
    Redis, so the figure is cluster-wide, read at scrape time: the coordinator serves it
    (take ``max`` across coordinators, not ``sum``)."""

    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def update(self, stats: dict[str, str]) -> None:
        self.counts = {k.removeprefix("batches_"): float(v) for k, v in stats.items()
                       if k.startswith("batches_")}

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("sluice_batches_flushed", self.__doc__.split(":")[0]
                                     if self.__doc__ else "", labels=["reason"])
        for reason, n in sorted(self.counts.items()):
            family.add_metric([reason], n)
        yield family


@contextlib.asynccontextmanager
async def sse_client() -> AsyncIterator[None]:
    """Counts a client on a task's event stream while the block runs."""
    sse_clients.inc()
    try:
        yield
    finally:
        sse_clients.dec()


_governor_seen: dict[str, tuple[int, int]] = {}


def set_governor(provider: str, window: int, in_flight: int) -> None:
    """The hook for the provider governor (issue 11); called at every admission and settle,
    mostly with what it said last time. ``provider``: its name (``default`` without
    PROVIDERS_FILE)."""
    if _governor_seen.get(provider) != (window, in_flight):
        _governor_seen[provider] = (window, in_flight)
        # child(): labels() takes a lock and checks its values, and this runs at nearly every
        # admission and settle (its calls in flight change)
        child(governor_window, provider).set(window)
        child(governor_in_flight, provider).set(in_flight)


# --- which process exports which families -----------------------------------------------------
# Every family is defined once above and lives in the default registry (so one process can
# hold them all, as the tests' burst mode does); each service serves a registry of its own
# holding only the families it updates, plus the process collectors. Without it the edge
# exported the processor's TTFT as a count of 0 and every query without a `job` filter
# summed placeholders.
_SHARED_REDIS = (redis_errors,)
ROLE_FAMILIES: dict[str, tuple[Collector, ...]] = {
    "edge": (tasks_submitted, tasks_requeued, http_requests, http_duration, sse_clients,
             events_relayed, queue_depth, dead_letters, processors_alive, processor_free_slots,
             coordinators_alive, store_errors, *_SHARED_REDIS),
    "coordinator": (tasks_placed, reclaims, *_SHARED_REDIS),
    "processor": (tasks_finished, task_retries, tasks_dead_lettered, queue_wait, e2e_latency,
                  ttft, client_ttft, itl, tokens, prompt_tokens, generation_tokens,
                  provider_requests, provider_rate_limited, provider_pauses, provider_pause_seconds,
                  provider_in_flight, governor_window, governor_in_flight, breaker_state,
                  batches_taken,
                  batch_size, lease_renewals, leases_lost, fence_rejections, reclaims,
                  store_errors, *_SHARED_REDIS),
    "mockai": (http_requests, http_duration),
}
_registries: dict[str, CollectorRegistry] = {}
_registries_lock = threading.Lock()


def registry(role: str) -> CollectorRegistry:
    """The registry ``role``'s process serves: its own families and the process collectors
    (CPU, memory, fds, GC, Python's version). A collector may sit in several registries."""
    with _registries_lock:
        found = _registries.get(role)
        if found is None:
            found = _registries[role] = CollectorRegistry()
            for collector in (*ROLE_FAMILIES[role], PROCESS_COLLECTOR, PLATFORM_COLLECTOR,
                              GC_COLLECTOR):
                found.register(collector)
        return found


def register(role: str, collector: Collector) -> None:
    """A scrape-time collector of ``role`` (the coordinator's batch counters): in its
    registry, and the default one."""
    REGISTRY.register(collector)
    registry(role).register(collector)


def exposition(role: str | None = None) -> bytes:
    """The text a scrape of ``role``'s process gets; None: every family (in one process)."""
    return _generate_latest(REGISTRY if role is None else registry(role))


CONTENT_TYPE = CONTENT_TYPE_LATEST.split(";")[0]


@contextlib.asynccontextmanager
async def serving(settings: MetricsSettings, service: str,
                  refresh: Callable[[], Awaitable[None]] | None = None
                  ) -> AsyncIterator[int | None]:
    """Serve ``/metrics`` on ``METRICS_PORT`` (nothing when it is 0) while the block runs;
    yields the bound port. ``refresh`` updates scrape-time figures before each answer."""
    configure(settings)
    if not settings.port:
        yield None
        return
    from aiohttp import web  # the mock and the services have it; kept out of import time

    async def handle(_request: web.Request) -> web.Response:
        if refresh is not None:
            try:
                await refresh()
            except Exception as exc:  # a scrape still answers what the process knows
                log.warning("metrics_refresh_failed", error=type(exc).__name__)
        return web.Response(body=exposition(service), content_type=CONTENT_TYPE,
                            charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.host, settings.port)
    await site.start()
    log.info("metrics_listening", service=service, port=settings.port)
    try:
        yield settings.port
    finally:
        await runner.cleanup()
