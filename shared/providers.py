"""Which providers serve which models: PROVIDERS_FILE, or the one provider of AI_BASE_URL.

``PROVIDERS_FILE`` names a TOML file of ``[[provider]]`` entries (where to call, with which key,
under which limits) and ``[[model]]`` entries (what clients ask for, and the routes that serve
it, in order of preference). Edges and processors read it once at start; a mistake in it stops
the service there, with one line naming the file, the entry and the field, not at the first
task that needs the broken route.

Without ``PROVIDERS_FILE``, ``AI_BASE_URL`` / ``AI_API_KEY`` / ``AI_MODEL(S)`` define one
provider, ``default``, that serves every model under its own name: the routing of before.

The provider's key never enters the file: ``api_key_env`` names the variable that holds it.
Only processors call providers, so only they need the key; an edge reads the file for the
models and the providers' names, and does not ask for the variables (the edge is never given
a provider key).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import ConfigError, Env, Provider, Secret, mask_url
from shared.governor import provider_id

DEFAULT = "default"  # the one provider's name without PROVIDERS_FILE
MAX_NAME_CHARS = 64
_PROVIDER_FIELDS = {"name", "base_url", "api_key_env", "max_concurrency", "rpm", "tpm",
                    "timeout_s", "headers", "drop_params", "extra_body"}
_MODEL_FIELDS = {"name", "routes"}
_ROUTE_FIELDS = {"provider", "model"}
MAX_MODEL_CHARS = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def valid_model_name(model: str) -> bool:
    """1 to 200 characters, none of them a control character (NUL included): a model name
    goes into logs, the store and the provider's request line of JSON."""
    return 0 < len(model) <= MAX_MODEL_CHARS and not _CONTROL.search(model)


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    """One provider: where, with which key, under which limits (0: none declared)."""

    name: str
    base_url: Secret[str]  # may carry credentials
    api_key: Secret[str] | None
    api_key_env: str | None  # where the key came from (AI_API_KEY without PROVIDERS_FILE)
    max_concurrency: int = 0
    rpm: int = 0
    tpm: int = 0
    timeout_s: float | None = None  # None: AI_TIMEOUT_S
    headers: Mapping[str, str] = field(default_factory=dict)
    drop_params: tuple[str, ...] = ()
    extra_body: Mapping[str, Any] = field(default_factory=dict)

    @property
    def shown_url(self) -> str:
        return mask_url(self.base_url.get())

    def key(self) -> str | None:
        return None if self.api_key is None else self.api_key.get()


@dataclass(frozen=True, slots=True)
class Route:
    """One way to serve a model: this provider, asked for this model name. ``governor``: the
    id of the governor that paces it (see :meth:`Routing.routes`)."""

    provider: str
    model: str
    governor: str


@dataclass(frozen=True, slots=True)
class Routing:
    providers: Mapping[str, ProviderSpec]
    models: Mapping[str, tuple[Route, ...]]  # empty without PROVIDERS_FILE: any model
    default_model: str
    file: str | None = None  # PROVIDERS_FILE, when the routing came from one

    @property
    def model_names(self) -> tuple[str, ...]:
        return tuple(self.models)

    def routes(self, model: str) -> tuple[Route, ...]:
        """The routes of ``model``, in order of preference; () for a model the file does not
        name. Without PROVIDERS_FILE, the one provider serves any model under its own name,
        paced per model (per (URL, key, model), as before). From a file, a provider is paced
        as one: its limits are the account's, whichever model a call asks for."""
        if self.file is not None:
            return self.models.get(model, ())
        spec = self.providers[DEFAULT]
        return (Route(DEFAULT, model, provider_id(spec.base_url.get(), spec.key(), model)),)


def governor_of(spec: ProviderSpec) -> str:
    """The governor id of a provider from PROVIDERS_FILE: one per (URL, key, name)."""
    return provider_id(spec.base_url.get(), spec.key(), f"provider:{spec.name}")


def apply_provider_params(body: dict[str, Any], spec: ProviderSpec) -> dict[str, Any]:
    """The request ``body`` as ``spec`` takes it: its ``drop_params`` left out, its
    ``extra_body`` merged in (the provider's own fields win). A new dict; ``body`` is kept.

    For one provider what AI_DROP_PARAMS / AI_EXTRA_BODY are for the deployment: applied to
    the body already shaped for the call, after the deployment-wide ones."""
    if not spec.drop_params and not spec.extra_body:
        return body
    out = {k: v for k, v in body.items() if k not in spec.drop_params}
    out.update(spec.extra_body)
    return out


# --- reading ------------------------------------------------------------------------------
def from_env(env: Env, provider: Provider, *, need_keys: bool,
             max_concurrency: int = 0, rpm: int = 0, tpm: int = 0) -> Routing:
    """PROVIDERS_FILE when set, else the one provider of AI_BASE_URL (with the deployment's
    PROVIDER_* limits). ``need_keys``: every ``api_key_env`` must be set (processors)."""
    path = env.optional("PROVIDERS_FILE")
    if path is None:
        spec = ProviderSpec(DEFAULT, provider.ai_base_url, provider.ai_api_key, "AI_API_KEY",
                            max_concurrency=max_concurrency, rpm=rpm, tpm=tpm,
                            timeout_s=provider.ai_timeout_s)
        return Routing({DEFAULT: spec}, {}, provider.ai_model)
    # AI_BASE_URL, AI_API_KEY and AI_MODEL(S) are then not used (compose sets AI_BASE_URL to
    # the mock by default: an error for it would make the file unusable there).
    return load(path, env, need_keys=need_keys)


def load(path: str, env: Env, *, need_keys: bool) -> Routing:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"PROVIDERS_FILE {path}: cannot be read "
                          f"({exc.strerror or type(exc).__name__})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"PROVIDERS_FILE {path}: not valid TOML: {exc}") from None
    return _Reader(path, env, need_keys).routing(raw)


class _Reader:
    def __init__(self, path: str, env: Env, need_keys: bool) -> None:
        self.path, self.env, self.need_keys = path, env, need_keys

    def fail(self, where: str, message: str) -> ConfigError:
        return ConfigError(f"PROVIDERS_FILE {self.path}: {where}: {message}")

    def routing(self, raw: dict[str, Any]) -> Routing:
        unknown = sorted(set(raw) - {"provider", "model"})
        if unknown:
            raise self.fail(unknown[0], "unknown table (expected [[provider]] and [[model]])")
        providers: dict[str, ProviderSpec] = {}
        for n, entry in enumerate(self._entries(raw, "provider"), 1):
            spec = self.provider(n, entry)
            if spec.name in providers:
                raise self.fail(f'[[provider]] #{n} "{spec.name}"', "name: a duplicate name")
            providers[spec.name] = spec
        models: dict[str, tuple[Route, ...]] = {}
        for n, entry in enumerate(self._entries(raw, "model"), 1):
            name, routes = self.model(n, entry, providers)
            if name in models:
                raise self.fail(f'[[model]] #{n} "{name}"', "name: a duplicate name")
            models[name] = routes
        return Routing(providers, models, next(iter(models)), self.path)

    def _entries(self, raw: dict[str, Any], table: str) -> list[dict[str, Any]]:
        entries = raw.get(table)
        if entries is None:
            raise self.fail(f"[[{table}]]", "none given (at least one is needed)")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.fail(table, f"expected [[{table}]] tables")
        if not entries:
            raise self.fail(f"[[{table}]]", "none given (at least one is needed)")
        return entries

    def _name(self, where: str, entry: dict[str, Any]) -> str:
        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            raise self.fail(where, "name: required, a non-empty string")
        if len(name) > MAX_NAME_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise self.fail(where, f"name: at most {MAX_NAME_CHARS} characters, no control "
                                   "characters")
        return name

    def provider(self, n: int, e: dict[str, Any]) -> ProviderSpec:
        name = self._name(f"[[provider]] #{n}", e)
        where = f'[[provider]] #{n} "{name}"'
        unknown = sorted(set(e) - _PROVIDER_FIELDS)
        if unknown:
            raise self.fail(where, f"{unknown[0]}: unknown field")
        base = e.get("base_url")
        if not isinstance(base, str):
            raise self.fail(where, "base_url: required, a URL such as https://api.example.com/v1")
        scheme = base.split("://", 1)[0].lower() if "://" in base else ""
        if scheme not in ("http", "https") or not base.split("://", 1)[1].strip("/"):
            raise self.fail(where, "base_url: expected a URL starting with http:// or "
                                   f"https://, got {mask_url(base)!r}")
        key_env = e.get("api_key_env")
        key: Secret[str] | None = None
        if key_env is not None:
            if not isinstance(key_env, str) or not key_env:
                raise self.fail(where, "api_key_env: the name of a variable, a string")
            value = self.env.exact(key_env, secret=True)
            if value is None and self.need_keys:
                raise self.fail(where, f"api_key_env: the variable {key_env} is not set")
            key = None if value is None else Secret(value)
        headers = e.get("headers", {})
        if not isinstance(headers, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in headers.items()):
            raise self.fail(where, "headers: a table of strings")
        drop = e.get("drop_params", [])
        if not isinstance(drop, list) or not all(isinstance(p, str) for p in drop):
            raise self.fail(where, "drop_params: a list of field names")
        extra = e.get("extra_body", {})
        if not isinstance(extra, dict):
            raise self.fail(where, "extra_body: a table")
        timeout = e.get("timeout_s")
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, int | float) or timeout <= 0):
            raise self.fail(where, f"timeout_s: a number of seconds above 0, got {timeout!r}")
        return ProviderSpec(
            name=name, base_url=Secret.url(base.rstrip("/")), api_key=key, api_key_env=key_env,
            max_concurrency=self._count(where, e, "max_concurrency"),
            rpm=self._count(where, e, "rpm"), tpm=self._count(where, e, "tpm"),
            timeout_s=None if timeout is None else float(timeout), headers=dict(headers),
            drop_params=tuple(drop), extra_body=dict(extra))

    def _count(self, where: str, e: dict[str, Any], name: str) -> int:
        value = e.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, f"{name}: a whole number, 0 or more, got {value!r}")
        return value

    def model(self, n: int, e: dict[str, Any], providers: dict[str, ProviderSpec]
              ) -> tuple[str, tuple[Route, ...]]:
        name = self._name(f"[[model]] #{n}", e)
        where = f'[[model]] #{n} "{name}"'
        if not valid_model_name(name):
            raise self.fail(where, "name: at most 200 characters, no control characters")
        unknown = sorted(set(e) - _MODEL_FIELDS)
        if unknown:
            raise self.fail(where, f"{unknown[0]}: unknown field")
        raw = e.get("routes")
        if not isinstance(raw, list) or not raw:
            raise self.fail(where, "routes: required, a list of {provider, model}")
        routes: list[Route] = []
        for i, r in enumerate(raw, 1):
            at = f"{where} route #{i}"
            if not isinstance(r, dict):
                raise self.fail(at, "expected { provider = ..., model = ... }")
            bad = sorted(set(r) - _ROUTE_FIELDS)
            if bad:
                raise self.fail(at, f"{bad[0]}: unknown field")
            pname, model = r.get("provider"), r.get("model")
            if not isinstance(pname, str) or pname not in providers:
                raise self.fail(at, f"provider: {pname!r} is no [[provider]] of this file")
            if not isinstance(model, str) or not valid_model_name(model):
                raise self.fail(at, "model: required, the provider's name for the model")
            if any(x.provider == pname and x.model == model for x in routes):
                raise self.fail(at, "a duplicate route")
            routes.append(Route(pname, model, governor_of(providers[pname])))
        return name, tuple(routes)
