"""PROVIDERS_FILE: read once at start, every mistake a one-line error naming the file, the entry
and the field; without it, AI_BASE_URL's one provider as before."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from services.edge.settings import EdgeSettings
from services.processor.settings import ProcessorSettings
from shared.config import ConfigError, Env
from shared.providers import DEFAULT, ProviderSpec, Secret, apply_provider_params

GOOD = """
[[provider]]
name = "siliconflow"
base_url = "https://api.siliconflow.cn/v1"
api_key_env = "SILICONFLOW_API_KEY"
max_concurrency = 8
rpm = 1000
tpm = 100000
timeout_s = 300
headers = { "X-Title" = "sluice" }
drop_params = ["logprobs"]
extra_body = { enable_thinking = true }

[[provider]]
name = "deepseek"
base_url = "https://api.deepseek.com/v1/"
api_key_env = "DEEPSEEK_API_KEY"

[[model]]
name = "deepseek-r1"
routes = [
  { provider = "siliconflow", model = "deepseek-ai/DeepSeek-R1" },
  { provider = "deepseek", model = "deepseek-reasoner" },
]

[[model]]
name = "deepseek-v3"
routes = [{ provider = "deepseek", model = "deepseek-chat" }]
"""
KEYS = {"SILICONFLOW_API_KEY": "sk-sf", "DEEPSEEK_API_KEY": "sk-ds"}


def env_with(tmp_path: Path, text: str, **extra: str) -> Env:
    path = tmp_path / "providers.toml"
    path.write_text(text)
    return Env({"PROVIDERS_FILE": str(path), **extra})


def test_the_file_as_the_issue_shows_it(tmp_path: Path) -> None:
    s = ProcessorSettings.from_env(env_with(tmp_path, GOOD, **KEYS))
    r = s.routing
    assert r.model_names == ("deepseek-r1", "deepseek-v3") and r.default_model == "deepseek-r1"
    assert s.provider.ai_model == "deepseek-r1"
    sf, ds = r.providers["siliconflow"], r.providers["deepseek"]
    assert (sf.max_concurrency, sf.rpm, sf.tpm, sf.timeout_s) == (8, 1000, 100000, 300.0)
    assert sf.key() == "sk-sf" and ds.key() == "sk-ds"
    assert ds.base_url.get() == "https://api.deepseek.com/v1"  # no trailing slash
    assert dict(sf.headers) == {"X-Title": "sluice"}
    assert [(x.provider, x.model) for x in r.routes("deepseek-r1")] == [
        ("siliconflow", "deepseek-ai/DeepSeek-R1"), ("deepseek", "deepseek-reasoner")]
    # One governor per provider, whichever model a call asks for.
    assert r.routes("deepseek-r1")[1].governor == r.routes("deepseek-v3")[0].governor
    assert r.routes("deepseek-r1")[0].governor != r.routes("deepseek-r1")[1].governor
    assert r.routes("not-in-the-file") == ()
    assert "sk-sf" not in repr(s)


def test_edges_list_the_files_models_and_need_no_keys(tmp_path: Path) -> None:
    s = EdgeSettings.from_env(env_with(tmp_path, GOOD))
    assert s.models == ("deepseek-r1", "deepseek-v3")
    assert s.provider.ai_model == "deepseek-r1"
    assert s.routing.providers["siliconflow"].api_key is None


def test_without_the_file_one_provider_as_before() -> None:
    s = ProcessorSettings.from_env(Env({"AI_BASE_URL": "http://127.0.0.1:9/v1",
                                        "AI_MODEL": "m1", "AI_API_KEY": "k",
                                        "PROVIDER_MAX_CONCURRENCY": "4"}))
    r = s.routing
    assert list(r.providers) == [DEFAULT] and r.file is None
    spec = r.providers[DEFAULT]
    assert (spec.base_url.get(), spec.key(), spec.max_concurrency) == (
        "http://127.0.0.1:9/v1", "k", 4)
    # Any model, under its own name, paced per (URL, key, model) as the governor always did.
    from shared.governor import provider_id
    [route] = r.routes("m2")
    assert (route.provider, route.model) == (DEFAULT, "m2")
    assert route.governor == provider_id("http://127.0.0.1:9/v1", "k", "m2")


def _broken(tmp_path: Path, text: str, **extra: str) -> str:
    with pytest.raises(ConfigError) as info:
        ProcessorSettings.from_env(env_with(tmp_path, text, **{**KEYS, **extra}))
    message = str(info.value)
    assert "\n" not in message and str(tmp_path / "providers.toml") in message
    return message


@pytest.mark.parametrize(("change", "entry", "field"), [
    (("https://api.siliconflow.cn/v1", "api.siliconflow.cn/v1"), '"siliconflow"', "base_url"),
    (('provider = "deepseek", model = "deepseek-chat"',
      'provider = "deepsek", model = "deepseek-chat"'), '"deepseek-v3" route #1', "provider"),
    (('name = "deepseek"\n', 'name = "siliconflow"\n'), '#2 "siliconflow"', "name"),
    (('name = "deepseek-v3"', 'name = "deepseek-r1"'), '[[model]] #2 "deepseek-r1"', "name"),
    (("max_concurrency = 8", "max_concurrency = -1"), '"siliconflow"', "max_concurrency"),
    (("timeout_s = 300", "timeout_s = 0"), '"siliconflow"', "timeout_s"),
    (("rpm = 1000", "rpn = 1000"), '"siliconflow"', "rpn"),
    (('drop_params = ["logprobs"]', 'drop_params = "logprobs"'), '"siliconflow"',
     "drop_params"),
])
def test_a_mistake_names_the_file_the_entry_and_the_field(
        tmp_path: Path, change: tuple[str, str], entry: str, field: str) -> None:
    assert change[0] in GOOD
    message = _broken(tmp_path, GOOD.replace(change[0], change[1], 1))
    assert entry in message and f"{field}:" in message, message


def test_a_missing_key_variable_stops_a_processor(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        ProcessorSettings.from_env(env_with(tmp_path, GOOD, SILICONFLOW_API_KEY="sk"))
    assert str(info.value).endswith(
        '[[provider]] #2 "deepseek": api_key_env: the variable DEEPSEEK_API_KEY is not set')


def test_unreadable_invalid_or_clashing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        ProcessorSettings.from_env(Env({"PROVIDERS_FILE": str(tmp_path / "none.toml")}))
    assert "not valid TOML" in _broken(tmp_path, "[[provider]\n")
    assert "[[model]]: none given" in _broken(tmp_path, GOOD.split("[[model]]")[0])
    # The file wins over AI_BASE_URL (compose sets it to the mock by default).
    s = ProcessorSettings.from_env(env_with(tmp_path, GOOD, AI_BASE_URL="http://x/v1", **KEYS))
    assert s.routing.model_names == ("deepseek-r1", "deepseek-v3")


def test_the_service_stops_at_start_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(GOOD.replace("https://api.deepseek.com/v1/", "api.deepseek.com"))
    done = subprocess.run([sys.executable, "-m", "services.processor"], capture_output=True,
                          text=True, timeout=60, env={"PROVIDERS_FILE": str(path), **KEYS,
                                                      "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"sluice processor: PROVIDERS_FILE {path}: [[provider]] #2 \"deepseek\": base_url: "
        "expected a URL starting with http:// or https://, got 'api.deepseek.com'"]


def test_a_providers_own_fields() -> None:
    spec = ProviderSpec("p", Secret("http://x"), None, None, drop_params=("logprobs", "seed"),
                        extra_body={"enable_thinking": True})
    body = {"model": "m", "logprobs": True, "seed": 1, "messages": []}
    assert apply_provider_params(body, spec) == {"model": "m", "messages": [],
                                                 "enable_thinking": True}
    assert body["logprobs"] is True  # the task's own request is not changed


def test_declared_limits_start_the_window() -> None:
    """The file's max_concurrency, else the smaller of its rpm and its tpm in calls of 1,024
    completion tokens; none declared: the slow start's window (0 here)."""
    from services.processor.routing import declared_window

    def spec(**limits: int) -> ProviderSpec:
        return ProviderSpec("p", Secret("http://x"), None, None, **limits)

    assert declared_window(spec()) == 0
    assert declared_window(spec(max_concurrency=8, rpm=1000, tpm=100_000)) == 8
    assert declared_window(spec(rpm=1000, tpm=100_000)) == 97
    assert declared_window(spec(rpm=50, tpm=100_000)) == 50
    assert declared_window(spec(tpm=500)) == 1
