"""The cases of REDIS_OVERRIDES (shared/config.py) the key Redis tests run under: every
override of redis-py on (the default), and each one off, its plain redis-py path in use; and
the overrides this run was started with, which the tests' own clients use."""

from __future__ import annotations

import os

import pytest

from shared.config import REDIS_OVERRIDES, Env, RedisOverrides

CASES = [pytest.param(RedisOverrides(), id="all-on"),
         *(pytest.param(RedisOverrides.without(name), id=f"-{name}")
           for name in REDIS_OVERRIDES)]

# `make test-redis-switches` runs the Redis tests once with each override off
# (REDIS_OVERRIDES=-name): a service reads the variable into its settings (Common), the
# tests' clients take THIS_RUN, and an in-process service's environment gets RAW.
RAW = os.environ.get("REDIS_OVERRIDES", "")
THIS_RUN = RedisOverrides.from_env(Env({"REDIS_OVERRIDES": RAW}))
