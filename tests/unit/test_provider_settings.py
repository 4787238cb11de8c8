"""The provider a service calls: the mock at the port it listens on when AI_BASE_URL is unset,
and never a model guessed for a provider of the user's."""

from __future__ import annotations

import pytest

from shared.config import ConfigError, Env, Provider


def test_the_mock_is_called_at_mockai_port() -> None:
    provider = Provider.from_env(Env({"MOCKAI_PORT": "9191"}))
    assert provider.ai_base_url.get() == "http://127.0.0.1:9191/v1"
    assert provider.ai_model == "mock-r1"
    assert Provider.from_env(Env({})).ai_base_url.get() == "http://127.0.0.1:8090/v1"


def test_a_provider_of_ones_own_needs_its_model_named() -> None:
    with pytest.raises(ConfigError, match="AI_MODEL: required when AI_BASE_URL is set"):
        Provider.from_env(Env({"AI_BASE_URL": "https://api.deepseek.com/v1"}))
    named = Provider.from_env(Env({"AI_BASE_URL": "https://api.deepseek.com/v1",
                                   "AI_MODEL": "deepseek-chat", "MOCKAI_PORT": "9191"}))
    assert (named.ai_base_url.get(), named.ai_model) == ("https://api.deepseek.com/v1",
                                                         "deepseek-chat")
