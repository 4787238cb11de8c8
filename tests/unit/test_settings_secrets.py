"""Settings hold secrets (API keys, the provider key, passwords in URLs) in a type that never
prints them: a settings object can be logged, shown in a traceback or repr'd in a debugger."""

from __future__ import annotations

from typing import Any

import pytest

from services.coordinator.settings import CoordinatorSettings
from services.edge.settings import EdgeSettings
from services.mockai.settings import MockSettings
from services.processor.settings import ProcessorSettings
from shared.config import Env, Secret, describe

SECRETS = {"edge API key": "sk-edge-canary-11", "provider key": "sk-ai-canary-22",
           "Redis password": "redis-canary-33", "provider URL password": "url-canary-44",
           "mock provider key": "sk-mock-canary-55"}
ENV = {"EDGE_API_KEYS": f"{SECRETS['edge API key']}:alpha",
       "AI_API_KEY": SECRETS["provider key"],
       "REDIS_URL": f"redis://sluice:{SECRETS['Redis password']}@redis.example:6379/0",
       "AI_BASE_URL": f"https://user:{SECRETS['provider URL password']}@ai.example/v1",
       "AI_MODEL": "deepseek-chat",
       "MOCKAI_API_KEY": SECRETS["mock provider key"]}
SERVICES: dict[str, Any] = {
    "edge": lambda: EdgeSettings.from_env(Env(ENV)),
    "processor": lambda: ProcessorSettings.from_env(Env(ENV)),
    "coordinator": lambda: CoordinatorSettings.from_env(Env(ENV)),
    "mockai": lambda: MockSettings.from_env(ENV),
}


@pytest.mark.parametrize("service", SERVICES)
def test_no_secret_shows_in_the_repr_of_a_services_settings(service: str) -> None:
    settings = SERVICES[service]()
    shown = repr(settings) + str(settings)
    for name, value in SECRETS.items():
        assert value not in shown, f"{name} in repr({service} settings)"
    if service != "mockai":  # where a URL points stays visible: only its password is hidden
        assert "sluice:***@redis.example:6379/0" in shown


@pytest.mark.parametrize("service", ["edge", "processor", "coordinator"])
def test_no_secret_shows_in_the_start_up_log_of_settings(service: str) -> None:
    settings = SERVICES[service]()
    parts = [settings.common, settings.batching, getattr(settings, "provider", None)]
    logged = repr([describe(p) for p in parts if p is not None])
    for name, value in SECRETS.items():
        assert value not in logged, f"{name} in the {service}'s start-up log"


def test_the_services_still_get_the_values() -> None:
    edge, processor = SERVICES["edge"](), SERVICES["processor"]()
    assert edge.api_keys.get() == {SECRETS["edge API key"]: "alpha"}
    assert processor.provider.ai_api_key.get() == SECRETS["provider key"]
    assert SECRETS["Redis password"] in processor.common.redis_url.get()
    assert SECRETS["provider URL password"] in processor.provider.ai_base_url.get()
    assert SERVICES["mockai"]().api_key.get() == SECRETS["mock provider key"]


def test_a_secret_is_masked_in_every_rendering_but_get() -> None:
    secret = Secret("sk-canary")
    assert "sk-canary" not in f"{secret} {secret!r} {[secret]} {({'k': secret})}"
    assert secret.get() == "sk-canary"
    assert secret == Secret("sk-canary") and secret != Secret("other")
