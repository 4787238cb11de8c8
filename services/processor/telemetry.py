"""The processor's per-task figures: queue wait, time to first token, inter-token latency,
tokens, provider answers, outcome. Kept out of the runner: the runner says when a task begins
(``begun``), the worker wraps the provider call (``observed``) and reports the outcome
(``finished``); the task's own facts travel in a context variable, which each task's asyncio
task has to itself."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.processor.assembler import ChoiceText, Delta, ProviderError, Usage
from services.processor.provider import Completion, OnDeltas, OnHeaders
from shared import metrics, rollup, tasks, tracing
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


_OK = metrics.provider_requests.labels("200")
_TOKENS = tuple(metrics.tokens.labels(kind) for kind in ("prompt", "reasoning", "completion"))
_facts: ContextVar[TaskFacts | None] = ContextVar("sluice_task_facts", default=None)


def begun(b: Begun) -> None:
    """This run holds the task's lease now. The first run of a task observes its queue wait."""
    h = b.task
    created = int(h.get("created_at") or 0)
    # A task rate-limited back to the queue was called already: its next call is a retry and
    # its queue wait was observed on its first run.
    first_run = b.counted and not h.get("requeues")
    _facts.set(TaskFacts(created, h.get("tenant", ""), attempted_before=not first_run,
                         traceparent=h.get("traceparent")))
    if first_run and created:
        wait = max(0.0, (now_ms() - created) / 1000)
        metrics.queue_wait.observe(wait)
        rollup.add("queue_wait_s", wait)
        rollup.add("queue_wait_n")


def finished(status: str | None) -> None:
    """This run made the task terminal with ``status``."""
    facts = _facts.get()
    if status is None or facts is None:
        return
    metrics.child(metrics.tasks_finished, status, metrics.tenant(facts.tenant)).inc()
    rollup.add("finished")
    if status == tasks.FAILED:
        metrics.tasks_dead_lettered.inc()
        rollup.add("failed")
    if facts.created_at_ms:
        metrics.e2e_latency.observe(max(0.0, (now_ms() - facts.created_at_ms) / 1000))


def observed(call: CallProvider) -> CallProvider:
    """``call`` with its figures: status code, first token, gaps between pieces, tokens."""

    async def run(target: Target, request: dict[str, Any], on_deltas: OnDeltas,
                  on_headers: OnHeaders, answer: ChoiceText) -> Completion:
        facts = _facts.get()
        if facts is not None:
            if facts.calls or facts.attempted_before:
                metrics.task_retries.inc()
            facts.calls += 1
        started = time.perf_counter()
        previous: float | None = None

        def timed(deltas: list[Delta], last: bool) -> Awaitable[None]:
            # Not a coroutine: it hands back on_deltas' own, no frame of its own per read.
            nonlocal previous
            now = time.perf_counter()
            if previous is None:
                metrics.ttft.observe(now - started)
                rollup.add("ttft_s", now - started)
                rollup.add("ttft_n")
            else:
                metrics.itl.observe(now - previous)
            previous = now
            return on_deltas(deltas, last)

        span = _genai_span(request, facts) if tracing.enabled() else None
        metrics.provider_in_flight.inc()
        try:
            completion = await call(target, request, timed, on_headers, answer)
        except ProviderError as err:
            _count_error(err)
            tracing.end(span, err.code or (f"http_{err.status}" if err.status else "error"))
            raise
        except BaseException as exc:  # cancelled (the client, a lost lease, a drain)
            tracing.end(span, type(exc).__name__)
            raise
        finally:
            metrics.provider_in_flight.dec()
        _OK.inc()
        _count_tokens(completion.usage)
        tracing.end(span, attributes=_genai_result(completion))
        return completion

    return run


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


def _count_error(err: ProviderError) -> None:
    metrics.provider_requests.labels(str(err.status) if err.status else "error").inc()
    if err.status == 429:
        metrics.provider_rate_limited.inc()
        rollup.add("rate_limited")
    if err.retry_after is not None:
        metrics.provider_pauses.inc()
        rollup.add("pauses")
        metrics.provider_pause_seconds.inc(max(0.0, err.retry_after))


def _count_tokens(usage: Usage | None) -> None:
    if usage is None:
        return
    details = usage.extra.get("completion_tokens_details") or {}
    reasoning = int(details.get("reasoning_tokens") or 0) if isinstance(details, dict) else 0
    prompt, thinking, answer = _TOKENS
    prompt.inc(usage.prompt_tokens)
    thinking.inc(reasoning)
    answer.inc(max(0, usage.completion_tokens - reasoning))
    metrics.prompt_tokens.inc(usage.prompt_tokens)
    metrics.generation_tokens.inc(usage.completion_tokens)
