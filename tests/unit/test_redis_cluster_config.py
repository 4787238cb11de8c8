"""REDIS_URL and REDIS_CLUSTER: which kind of Redis the services talk to."""

from __future__ import annotations

import pytest

from shared.config import Common, ConfigError, Env
from shared.redis_conn import is_cluster_url, plain_url


def common(**env: str) -> Common:
    return Common.from_env(Env(env))


def test_a_plain_url_is_one_redis() -> None:
    c = common(REDIS_URL="redis://h:6379/0")
    assert (c.redis_url.get(), c.redis_cluster) == ("redis://h:6379/0", False)


@pytest.mark.parametrize(("env", "url"), [
    ({"REDIS_URL": "redis+cluster://h:7000"}, "redis+cluster://h:7000"),
    ({"REDIS_URL": "rediss+cluster://:pw@h:7000?ssl_cert_reqs=none"},
     "rediss+cluster://:pw@h:7000?ssl_cert_reqs=none"),
    ({"REDIS_URL": "redis://h:7000", "REDIS_CLUSTER": "true"}, "redis+cluster://h:7000"),
    ({"REDIS_URL": "rediss://h:7000", "REDIS_CLUSTER": "yes"}, "rediss+cluster://h:7000"),
    ({"REDIS_URL": "redis+cluster://h:7000", "REDIS_CLUSTER": "true"}, "redis+cluster://h:7000"),
])
def test_the_scheme_or_the_flag_chooses_a_cluster(env: dict[str, str], url: str) -> None:
    c = common(**env)
    assert (c.redis_url.get(), c.redis_cluster) == (url, True)
    assert is_cluster_url(c.redis_url.get())
    assert plain_url(c.redis_url.get()) == url.replace("+cluster", "")


@pytest.mark.parametrize(("env", "message"), [
    ({"REDIS_URL": "redis+cluster://h:7000", "REDIS_CLUSTER": "false"}, "REDIS_CLUSTER"),
    ({"REDIS_URL": "unix:///run/redis.sock", "REDIS_CLUSTER": "true"}, "unix socket"),
    ({"REDIS_URL": "redis://h", "REDIS_CLUSTER": "maybe"}, "REDIS_CLUSTER"),
    ({"REDIS_URL": "cluster://h"}, "REDIS_URL"),
])
def test_contradictions_are_refused_with_the_variable_named(env: dict[str, str],
                                                            message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        common(**env)
