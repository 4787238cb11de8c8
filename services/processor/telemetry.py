"""The processor's per-task figures: queue wait, time to first token, inter-token latency,
tokens, provider answers, outcome. Kept out of the runner: the runner says when a task begins
(``begun``), the worker wraps the provider call (``observed``) and reports the outcome
(``finished``); the task's own facts travel in a context variable, which each task's asyncio
task has to itself."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.processor.assembler import ChoiceText, Delta, ProviderError, Usage
from services.processor.provider import Completion, OnDeltas, OnHeaders
from shared import logs, metrics, rollup, tasks, tracing
from shared.steps import Begun
from shared.timeutil import now_ms

if TYPE_CHECKING:
    from services.processor.routing import Target

# One provider call: its route, request, deltas' handler, headers' handler, where choice 0's
# text goes.
CallProvider = Callable[["Target", dict[str, Any], OnDeltas, OnHeaders, ChoiceText],
                        Awaitable[Completion]]


@dataclass(slots=True)
class TaskFacts:
    created_at_ms: int
    tenant: str
    attempted_before: bool  # another run (a dead holder's) called the provider already
    traceparent: str | None = None  # the coordinator's batch span
    calls: int = 0
    model: str = ""         # the model label's value
    tenant_label: str = ""  # the tenant label's value (capped)
    series: TaskSeries | None = None  # the series of (model, tenant_label), bound at begun
    # The client has seen no token of this task yet: its first one here is the client's TTFT.
    # Not after a dead holder's run, which may have streamed some.
    client_ttft_due: bool = False


def _current() -> TaskFacts | None:
    """The facts of the run the current asyncio task is (each run has a task of its own). They
    are its log lines' work too (tenant, traceparent): one context variable set per run."""
    facts = logs.WORK.get()
    return facts if isinstance(facts, TaskFacts) else None


class Child:
    """One labelled child, made at its first use: a series appears in /metrics when it has
    something to say, as with labels() at the point of use."""

    __slots__ = ("_found", "_metric", "_values")

    def __init__(self, metric: Any, *values: str) -> None:
        self._metric, self._values, self._found = metric, values, None

    def get(self) -> Any:
        found = self._found
        if found is None:
            found = self._found = self._metric.labels(*self._values)
        return found


class TaskSeries:
    """The series a task of one (model, tenant) label pair updates, bound once for the pair:
    a task then looks up one entry here, not a child per figure. As many as the capped labels
    allow."""

    __slots__ = ("client_ttft", "e2e", "finished", "labels", "queue_wait")

    def __init__(self, model: str, tenant: str) -> None:
        self.labels = (model, tenant)
        self.queue_wait = Child(metrics.queue_wait, model, tenant)
        self.e2e = Child(metrics.e2e_latency, model, tenant)
        self.client_ttft = Child(metrics.client_ttft, model, tenant)
        self.finished: dict[str, Any] = {}  # status -> its child, as statuses come

    def finished_as(self, status: str) -> Any:
        found = self.finished.get(status)
        if found is None:
            found = self.finished[status] = metrics.tasks_finished.labels(status, *self.labels)
        return found


class CallSeries:
    """The series a provider call of one (provider, route model, tenant) updates, bound once
    for the three labels (see :class:`TaskSeries`)."""

    __slots__ = ("completion", "generation", "in_flight", "itl", "ok", "prompt",
                 "prompt_tokens", "reasoning", "ttft")

    def __init__(self, provider: str, model: str, tenant: str) -> None:
        self.itl = Child(metrics.itl, provider, model)
        self.ttft = Child(metrics.ttft, provider, model, tenant)
        self.in_flight = Child(metrics.provider_in_flight, provider, model)
        self.ok = Child(metrics.provider_requests, provider, model, "200")
        tokens = metrics.tokens
        self.prompt = Child(tokens, "prompt", provider, model, tenant)
        self.reasoning = Child(tokens, "reasoning", provider, model, tenant)
        self.completion = Child(tokens, "completion", provider, model, tenant)
        self.prompt_tokens = Child(metrics.prompt_tokens, provider, model, tenant)
        self.generation = Child(metrics.generation_tokens, provider, model, tenant)


_task_series: dict[tuple[str, str], TaskSeries] = {}
_call_series: dict[tuple[str, str, str], CallSeries] = {}


def task_series(model: str, tenant: str) -> TaskSeries:
    found = _task_series.get((model, tenant))
    if found is None:
        found = _task_series[(model, tenant)] = TaskSeries(model, tenant)
    return found


def call_series(labels: tuple[str, str], tenant: str) -> CallSeries:
    key = (*labels, tenant)
    found = _call_series.get(key)
    if found is None:
        found = _call_series[key] = CallSeries(*key)
    return found


def begun(b: Begun) -> None:
    """This run holds the task's lease now. The first run of a task observes its queue wait."""
    h = b.task
    created = int(h.get("created_at") or 0)
    # A task rate-limited back to the queue was called already: its next call is a retry and
    # its queue wait was observed on its first run.
    first_run = b.counted and not h.get("requeues")
    facts = TaskFacts(created, h.get("tenant", ""), attempted_before=not first_run,
                      traceparent=h.get("traceparent"), model=metrics.model(h.get("model")),
                      tenant_label=metrics.tenant(h.get("tenant", "")),
                      client_ttft_due=bool(created) and (b.counted or bool(h.get("requeues"))))
    series = facts.series = task_series(facts.model, facts.tenant_label)
    logs.WORK.set(facts)
    if first_run and created:
        wait = max(0.0, (now_ms() - created) / 1000)
        series.queue_wait.get().observe(wait)
        rollup.observe("queue_wait", wait, facts.tenant, facts.model)


def finished(status: str | None) -> None:
    """This run made the task terminal with ``status``."""
    facts = _current()
    if status is None or facts is None:
        return
    series = facts.series or task_series(facts.model, facts.tenant_label)
    series.finished_as(status).inc()
    rollup.finished(status, facts.tenant, facts.model)
    if status == tasks.FAILED:
        metrics.tasks_dead_lettered.inc()
    if facts.created_at_ms:
        e2e = max(0.0, (now_ms() - facts.created_at_ms) / 1000)
        series.e2e.get().observe(e2e)
        rollup.observe("e2e", e2e, facts.tenant, facts.model)


def observed(call: CallProvider) -> CallProvider:
    """``call`` with its figures: status code, first token, gaps between pieces, tokens."""

    async def run(target: Target, request: dict[str, Any], on_deltas: OnDeltas,
                  on_headers: OnHeaders, answer: ChoiceText) -> Completion:
        facts = _current()
        if facts is not None:
            if facts.calls or facts.attempted_before:
                metrics.task_retries.inc()
            facts.calls += 1
        # Who is called, for which model: the route's labels, bound when its target was made.
        labels = target.labels
        model = labels[1]
        tenant = facts.tenant_label if facts is not None else metrics.tenant("")
        series = call_series(labels, tenant)
        started = time.perf_counter()
        timed = _Timed(facts, series, model, started, on_deltas)
        span = _genai_span(request, facts) if tracing.enabled() else None
        in_flight = series.in_flight.get()
        in_flight.inc()
        try:
            completion = await call(target, request, timed, on_headers, answer)
        except ProviderError as err:
            _count_error(err, labels)
            error = err.code or (f"http_{err.status}" if err.status else "error")
            tracing.end(span, error)
            tracing.record_call(model, time.perf_counter() - started, error=error)
            raise
        except BaseException as exc:  # cancelled (the client, a lost lease, a drain)
            tracing.end(span, type(exc).__name__)
            raise
        finally:
            in_flight.dec()
        series.ok.get().inc()
        _count_tokens(completion.usage, labels, series, facts)
        tracing.end(span, attributes=_genai_result(completion))
        usage = completion.usage
        tracing.record_call(model, time.perf_counter() - started,
                            input_tokens=usage.prompt_tokens if usage else None,
                            output_tokens=usage.completion_tokens if usage else None)
        return completion

    return run


class _Timed:
    """A call's deltas' handler that times them (the first token's TTFT, then the gaps between
    pieces) and hands them on. Not a coroutine: it hands back on_deltas' own, no frame of its
    own per read. An object, not a closure: its six cells held ~0.4 KB per stream in flight."""

    __slots__ = ("facts", "itl", "model", "on_deltas", "previous", "series", "started")

    def __init__(self, facts: TaskFacts | None, series: CallSeries, model: str, started: float,
                 on_deltas: OnDeltas) -> None:
        self.facts = facts
        self.series = series
        self.model = model
        self.started = started
        self.on_deltas = on_deltas
        self.previous: float | None = None
        self.itl = series.itl.get()

    def __call__(self, deltas: list[Delta], last: bool) -> Awaitable[None]:
        now = time.perf_counter()
        previous = self.previous
        if previous is None:
            _first_token(self.facts, self.series, self.model, now - self.started)
        else:
            self.itl.observe(now - previous)
        self.previous = now
        return self.on_deltas(deltas, last)


def _first_token(facts: TaskFacts | None, series: CallSeries, route_model: str,
                 ttft: float) -> None:
    """The provider call's first token: its TTFT and, the first time the task has one, the
    client's (from submit, under the model the task named)."""
    series.ttft.get().observe(ttft)
    rollup.observe("ttft", ttft)
    tracing.record_ttft(route_model, ttft)
    if facts is not None and facts.client_ttft_due:
        facts.client_ttft_due = False
        waited = max(0.0, (now_ms() - facts.created_at_ms) / 1000)
        task = facts.series or task_series(facts.model, facts.tenant_label)
        task.client_ttft.get().observe(waited)
        rollup.observe("client_ttft", waited, facts.tenant, facts.model)


def _genai_span(request: dict[str, Any], facts: TaskFacts | None) -> Any:
    """The provider call as a GenAI client span (OpenTelemetry's gen_ai semantic conventions),
    child of the coordinator's batch span."""
    model = str(request.get("model") or "")
    return tracing.start(f"chat {model}".strip(), facts.traceparent if facts else None,
                         "client", {"gen_ai.operation.name": "chat",
                                    "gen_ai.provider.name": "openai",
                                    "gen_ai.request.model": model})


def _genai_result(completion: Completion) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if completion.result.finish_reason:
        out["gen_ai.response.finish_reasons"] = [completion.result.finish_reason]
    if completion.usage is not None:
        out["gen_ai.usage.input_tokens"] = completion.usage.prompt_tokens
        out["gen_ai.usage.output_tokens"] = completion.usage.completion_tokens
    return out


def _count_error(err: ProviderError, labels: tuple[str, str]) -> None:
    metrics.child(metrics.provider_requests, *labels,
                  str(err.status) if err.status else "error").inc()
    rollup.add("call_errors")
    if err.status == 429:
        metrics.child(metrics.provider_rate_limited, *labels).inc()
        rollup.add("rate_limited")
    if err.retry_after is not None:
        metrics.child(metrics.provider_pauses, *labels).inc()
        rollup.add("pauses")
        metrics.child(metrics.provider_pause_seconds, *labels).inc(max(0.0, err.retry_after))


def _count_tokens(usage: Usage | None, labels: tuple[str, str], series: CallSeries,
                  facts: TaskFacts | None) -> None:
    rollup.add("calls")
    if usage is None:
        return
    details = usage.extra.get("completion_tokens_details") or {}
    reasoning = int(details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0
    series.prompt.get().inc(usage.prompt_tokens)
    series.reasoning.get().inc(reasoning)
    series.completion.get().inc(max(0, usage.completion_tokens - reasoning))
    series.prompt_tokens.get().inc(usage.prompt_tokens)
    series.generation.get().inc(usage.completion_tokens)
    # The dashboard's per-model split is the task's model (the client's name for it).
    rollup.tokens(usage.prompt_tokens, usage.completion_tokens,
                  facts.tenant if facts else "", facts.model if facts else labels[1])
