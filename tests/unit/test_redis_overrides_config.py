"""REDIS_OVERRIDES (shared/config.py): which overrides of redis-py are on; a bad value names
the variable and quotes what it got."""

from __future__ import annotations

import pytest

from shared.config import REDIS_OVERRIDES, Common, ConfigError, Env, RedisOverrides, describe


@pytest.mark.parametrize(("raw", "on"), [
    (None, set(REDIS_OVERRIDES)),
    ("", set(REDIS_OVERRIDES)),
    ("-lane, -pack", set(REDIS_OVERRIDES) - {"lane", "pack"}),
    ("none", set()),
    ("none,lane", {"lane"}),
    ("all,-pool", set(REDIS_OVERRIDES) - {"pool"}),
    ("+LANE", set(REDIS_OVERRIDES)),
])
def test_the_overrides_on(raw: str | None, on: set[str]) -> None:
    env = Env({} if raw is None else {"REDIS_OVERRIDES": raw})
    assert RedisOverrides.from_env(env).on == on


def test_an_unknown_override_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"REDIS_OVERRIDES: .*got '-lanes'"):
        RedisOverrides.from_env(Env({"REDIS_OVERRIDES": "-lanes"}))


def test_every_services_common_settings_carry_them() -> None:
    common = Common.from_env(Env({"REDIS_OVERRIDES": "-lane"}))
    assert common.redis_overrides == RedisOverrides.without("lane")
    assert describe(common)["redis_overrides"] == ["pack", "pool"]  # the start-up line
