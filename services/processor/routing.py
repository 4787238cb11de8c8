"""Several providers per model: each route ready to call, and which failures move a task on.

A model's routes are tried in the order the operator wrote them: order is preference. The
governor admits a call on the first route whose provider has room now and whose breaker lets
it (services/processor/governor.py); a failure that another provider may not share moves the
task's next attempt to the next route at once (:func:`falls_back`), without the backoff meant
for trying the same provider again. A request the provider refused for what it asks (a 400)
fails as it always did: another provider would refuse it too.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.processor.assembler import ChoiceText, Delta, ProviderError
from services.processor.provider import Completion, OnDeltas, OnHeaders, ProviderClient
from shared import metrics
from shared.config import Provider
from shared.governor import DEFAULT_COMPLETION_TOKENS, Limits
from shared.providers import DEFAULT, ProviderSpec, Route, Routing, apply_provider_params
from shared.timeutil import iso

if TYPE_CHECKING:
    from services.processor.governor import Call

# Failures of the provider, not of the request: another provider may well answer.
_MOVE_ON_CODES = frozenset({"connection_error", "timeout", "idle_timeout", "stream_cut",
                            "insufficient_quota", "model_not_found"})
_MOVE_ON_STATUSES = frozenset({401, 402, 403, 529})


def falls_back(err: ProviderError) -> bool:
    """Connection errors, timeouts, a stream cut, 5xx, 529, a key refused (401, 403), no
    credit (402, insufficient_quota), the route's model not found: worth another provider."""
    status = err.status or 0
    if err.code in _MOVE_ON_CODES or status in _MOVE_ON_STATUSES or 500 <= status < 600:
        return True
    if status == 404:
        return "model" in (err.code or "") or "model" in err.message.lower()
    return False


def breaks(err: ProviderError) -> bool:
    """Does the failure count towards the provider's breaker? Those that move a task on, but
    a stream cut: one cut answer says little about the provider's health."""
    return falls_back(err) and err.code != "stream_cut"


@dataclass(frozen=True, slots=True)
class Target:
    """A route ready to call: its provider's settings, client and limits."""

    route: Route
    spec: ProviderSpec
    settings: Provider  # what provider.complete reads: URL, key, timeouts
    client: ProviderClient
    limits: Limits
    # Its calls' metric labels, (provider, route model): bound once per route, not per call.
    labels: tuple[str, str] = ("", "")

    @property
    def name(self) -> str:
        return self.spec.name

    def payload(self, request: dict[str, Any]) -> dict[str, Any]:
        """The task's request as this route sends it: its model, the provider's own fields."""
        body = request if request.get("model") == self.route.model else {
            **request, "model": self.route.model}
        return apply_provider_params(body, self.spec)


def declared_window(spec: ProviderSpec) -> int:
    """The window the file's limits start a provider at (0: none declared): its
    max_concurrency; else its rpm, or its tpm in calls of the default completion size,
    whichever is smaller (as settle.lua starts it from declared x-ratelimit-limit-* headers)."""
    if spec.max_concurrency:
        return spec.max_concurrency
    found = [n for n in (spec.rpm, spec.tpm and max(1, spec.tpm // DEFAULT_COMPLETION_TOKENS))
             if n]
    return min(found, default=0)


class Router:
    """The process's clients, one per provider, and each model's targets."""

    def __init__(self, routing: Routing, base: Provider, limits: Limits,
                 max_connections: int) -> None:
        self.routing = routing
        self._settings: dict[str, Provider] = {}
        self._clients: dict[str, ProviderClient] = {}
        self._limits: dict[str, Limits] = {}
        for name, spec in routing.providers.items():
            settings = dataclasses.replace(
                base, ai_base_url=spec.base_url, ai_api_key=spec.api_key,
                ai_timeout_s=spec.timeout_s or base.ai_timeout_s)
            self._settings[name] = settings
            self._clients[name] = ProviderClient(settings, max_connections,
                                                 headers=dict(spec.headers))
            self._limits[name] = dataclasses.replace(
                limits, max_concurrency=spec.max_concurrency, rpm=spec.rpm, tpm=spec.tpm,
                # A provider whose limits are declared starts there, not at the slow start's
                # window.
                initial_window=declared_window(spec) or limits.initial_window)
        self._targets: dict[str, tuple[Target, ...]] = {}

    def targets(self, model: str) -> tuple[Target, ...]:
        found = self._targets.get(model)
        if found is None:
            found = tuple(self._target(route) for route in self.routing.routes(model))
            if len(self._targets) < 10_000:  # models are few; a flood of names is not kept
                self._targets[model] = found
        return found

    def _target(self, route: Route) -> Target:
        name = route.provider
        return Target(route, self.routing.providers[name], self._settings[name],
                      self._clients[name], self._limits[name],
                      metrics.call_labels(name, route.model))

    def governed(self) -> list[Target]:
        """One target per governor whose room this processor reports: each provider of
        PROVIDERS_FILE; without it, the one provider for the default model (as before)."""
        if self.routing.file is None:
            return list(self.targets(self.routing.default_model))
        seen: dict[str, Target] = {}
        for routes in self.routing.models.values():
            for route in routes:
                seen.setdefault(route.provider, self._target(route))
        return list(seen.values())

    @property
    def names(self) -> list[str]:
        return list(self.routing.providers)

    def client(self, name: str = DEFAULT) -> ProviderClient:
        return self._clients[name]

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()

    async def __aenter__(self) -> Router:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.aclose()


# --- one task's routes ----------------------------------------------------------------------
# One provider call of a target: (target, the request as it sends it, deltas' handler,
# headers' handler, where choice 0's text goes).
CallTarget = Callable[["Target", dict[str, Any], OnDeltas, OnHeaders, ChoiceText],
                      Awaitable[Completion]]
# The runner's call: (the admitted governor call, the task's request, deltas, answer).
CallRoute = Callable[["Call", dict[str, Any], OnDeltas, ChoiceText], Awaitable[Completion]]


class _FirstToken:
    """A call's deltas' handler that tells the governor of the answer's first token (the call
    counts as accepted there), then hands every piece on. One small object per call: the two
    closures it replaces, with their cells, held ~0.5 KB per stream in flight."""

    __slots__ = ("call", "on_deltas")

    def __init__(self, call: Call, on_deltas: OnDeltas) -> None:
        self.call: Call | None = call
        self.on_deltas = on_deltas

    def __call__(self, deltas: list[Delta], last: bool) -> Awaitable[None]:
        call = self.call
        if call is not None:
            self.call = None
            call.accepted()
        return self.on_deltas(deltas, last)


def route_caller(call_target: CallTarget) -> CallRoute:
    """The runner's provider call: the admitted route's request, and the answer's first token
    told to the governor (see :class:`_FirstToken`). Not a coroutine of its own: it hands back
    the target call's, one frame less per stream in flight."""

    def call_route(call: Call, request: dict[str, Any], on_deltas: OnDeltas,
                   answer: ChoiceText) -> Awaitable[Completion]:
        target = call.target
        assert target is not None
        return call_target(target, target.payload(request), _FirstToken(call, on_deltas),
                           call.observe, answer)

    return call_route


_NO_AVOID: frozenset[str] = frozenset()


class TaskRoutes:
    """Where one task's calls went, and where its next goes: the routes of its model, those a
    failure moved it away from, and the log of its calls."""

    __slots__ = ("answered", "avoid", "last", "log", "noted", "targets")

    def __init__(self) -> None:
        self.targets: tuple[Target, ...] = ()
        # Providers that failed it in a way another may not. Empty for nearly every task: a
        # shared empty frozenset until the first such failure (a set is 216 bytes a task in
        # flight, ~1% of the processor's memory per stream in the long_stream bench).
        self.avoid: set[str] | frozenset[str] = _NO_AVOID
        self.last: Target | None = None
        self.answered: Target | None = None
        self.log: list[dict[str, Any]] = []
        self.noted = False  # a call of this run went to the task's hash

    def choose(self, router: Router, request: dict[str, Any]) -> tuple[Target, ...]:
        """The routes the next call may take, in order: those no failure moved it from (all of
        them once every one has failed it)."""
        model = str(request.get("model") or router.routing.default_model)
        targets = self.targets = router.targets(model)
        if not targets:
            raise ProviderError(f"no provider serves the model {model!r}",
                                code="model_not_found", retryable=False)
        return tuple(t for t in targets if t.name not in self.avoid) or targets

    def move_on(self, err: ProviderError) -> bool:
        """After ``err`` on the last route: does the next attempt go to another route, at once?
        False when the failure is the request's, or no other route is left (then the same
        provider is tried again after the usual backoff, and all routes are open again)."""
        last = self.last
        if last is None or not falls_back(err):
            return False
        avoid = self.avoid = {*self.avoid, last.name}
        if any(t.name not in avoid for t in self.targets):
            return True
        self.avoid = _NO_AVOID
        return False

    @property
    def last_provider(self) -> str | None:
        return None if self.last is None else self.last.name

    def tried(self, target: Target | None, processor: str, began: int, ended: int,
              exc: BaseException | None) -> dict[str, Any]:
        self.last = target
        if exc is None:
            self.answered = target
        error: dict[str, Any] | None = None
        if exc is None:
            status = "succeeded"
        elif isinstance(exc, ProviderError):
            from services.processor.governor import is_rate_limit
            status = "rate_limited" if is_rate_limit(exc) else "failed"
            error = {"code": exc.code or (f"http_{exc.status}" if exc.status else
                                          "provider_error"),
                     "message": exc.message[:500], "status": exc.status}
        elif isinstance(exc, asyncio.CancelledError):
            status = "stopped"
        else:
            status, error = "error", {"code": "internal", "message": type(exc).__name__}
        entry = {"provider": target.name if target else None,
                 "model": target.route.model if target else None, "processor": processor,
                 "started_at": iso(began), "ended_at": iso(ended), "status": status,
                 "error": error}
        self.log.append(entry)
        return entry


def merge_tries(noted: list[dict[str, Any]], mine: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The calls noted in the task's hash, then this run's not among them, by start."""
    if not noted:
        return list(mine)  # nearly every task: its calls, made in turn, are in order of start
    out = list(noted) + [e for e in mine if e not in noted]
    return sorted(out, key=lambda e: e.get("started_at") or "")


def answered_by(result: dict[str, Any], target: Target | None) -> None:
    """``result.provider`` and ``result.model``: who answered, under which model name."""
    if target is not None:
        result["provider"] = target.name
        result["model"] = target.route.model
